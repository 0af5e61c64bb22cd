"""Saffron: a remote display for 3D-accelerated virtual machines."""

__version__ = "0.1.0"
