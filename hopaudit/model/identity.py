"""What names a model: its name and its config as plain values (an audit records both, and a
query checks a model against them)."""

from __future__ import annotations

import hashlib
from typing import Any

__all__ = ["config_dict", "model_name", "weights_digest"]

#: Leading elements of each parameter that :func:`weights_digest` reads.
DIGEST_ELEMENTS = 256


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


def weights_digest(model: Any) -> str | None:
    """A SHA-256 of each parameter's name, shape and first ``DIGEST_ELEMENTS`` values (as
    float32): two checkpoints of one architecture differ in it, and it costs a few kilobytes
    of reads. None when a parameter sits on the meta device (offloaded weights are not read)."""
    named = getattr(model, "named_parameters", None)
    if not callable(named):
        return None
    h = hashlib.sha256()
    for name, p in named():
        if p.device.type == "meta":
            return None
        head = p.detach().reshape(-1)[:DIGEST_ELEMENTS].float().cpu().numpy()
        h.update(f"{name.replace('_orig_mod.', '')}{tuple(p.shape)}".encode())
        h.update(head.tobytes())
    return h.hexdigest()
