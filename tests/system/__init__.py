"""System tests: real processes (hub, Mosquitto, agents, PostgreSQL) on free ports.

Every test under this directory is marked ``system`` (see ``tests/conftest.py``), so
``pytest -m "not system"`` runs only the fast tests.
"""
