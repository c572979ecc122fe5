"""Saved audits, the public face: ``save_audit``, ``load`` and ``remove_audit`` (the format is
described in manifest.py, the writer in save.py, the reader in load.py)."""

from __future__ import annotations

from hopaudit.storage.load import load
from hopaudit.storage.manifest import FORMAT, FORMAT_VERSION
from hopaudit.storage.save import remove_audit, save_audit

__all__ = ["FORMAT", "FORMAT_VERSION", "load", "remove_audit", "save_audit"]
