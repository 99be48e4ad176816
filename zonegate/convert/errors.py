"""Converter errors, importable without the OPC UA stack (`zonegate run` reports them for any policy)."""

from __future__ import annotations


class ConverterError(RuntimeError):
    """The converter cannot start (settings, files, permissions); the message says which."""
