"""The fleet: enrollment, devices, presence, labels, twin and commands."""
