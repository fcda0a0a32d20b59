"""Domus per-host agent: owns the libvirt connection and serves the v1 API."""

__version__ = "0.1.0"
