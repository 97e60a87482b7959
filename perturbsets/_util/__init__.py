"""Utilities every layer may use: atomic file I/O, registries, weight files, seeding, argument checks.

Internal: nothing here is part of the public API, and modules import from the submodules.
"""

__all__: list[str] = []
