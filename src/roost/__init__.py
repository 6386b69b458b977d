"""Roost: a local cloud made of the Linux boxes a person or a company already owns."""

__version__ = "0.1.0"
