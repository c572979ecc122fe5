"""Audits on disk: atomic writes, the manifest and its digests, save, load, the tables and
the catalog."""
