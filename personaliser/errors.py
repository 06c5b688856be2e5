"""The personaliser's exceptions.

::

    PersoError            root of what the personaliser raises (the chip package has its own
    │                     root, chip.errors.ChipError; the CLI maps both to messages and exit codes)
    ├── KeystoreError     keystore missing, incomplete, or its key files not private
    └── IntakeError       an applications file cannot be read at all (not: one bad record)
"""

from __future__ import annotations

__all__ = ["IntakeError", "KeystoreError", "PersoError"]


class PersoError(Exception):
    """Root of the personaliser's exceptions."""


class KeystoreError(PersoError):
    """The keystore is missing, incomplete, or its key files are readable by others."""


class IntakeError(PersoError):
    """An applications file cannot be read at all."""
