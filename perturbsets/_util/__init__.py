"""Utilities every layer may use: argument checks, seeding, atomic file I/O, registries, weight files."""
