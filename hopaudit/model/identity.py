"""What names a model: its name and its config as plain values (an audit records both, and a
query checks a model against them)."""

from __future__ import annotations

from typing import Any

__all__ = ["config_dict", "model_name"]


def model_name(model: Any) -> str:
    """The name a model goes by: hopaudit's own tag, its ``name_or_path``, or its class name."""
    for name in (
        getattr(model, "hopaudit_name", None),
        getattr(model, "name_or_path", None),
        getattr(getattr(model, "config", None), "_name_or_path", None),
    ):
        if name:
            return str(name)
    return type(model).__name__


def config_dict(model: Any) -> dict[str, Any]:
    """The model's config as JSON scalars (nested values dropped), plus its class name."""
    config = getattr(model, "config", None)
    if config is None or not hasattr(config, "to_dict"):
        return {"class": type(model).__name__}
    out = {}
    for key, value in config.to_dict().items():
        if isinstance(value, (str, int, float, bool, type(None))):
            out[key] = value
    out["class"] = type(model).__name__
    return out
