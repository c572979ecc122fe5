"""hopaudit: audit what a transformer language model has memorized."""

__version__ = "0.1.0"
