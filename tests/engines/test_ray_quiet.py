"""How hopaudit starts a local Ray for engine="ray" (no cluster started here: ``ray.init`` is
replaced): quiet while hopaudit's bars run, and one clear error when Ray misses its start."""

from __future__ import annotations

import logging

import pytest
from tiny_models import tiny_model, tiny_tokenizer

import hopaudit
from hopaudit.errors import HopauditError

ray = pytest.importorskip("ray", reason="engine='ray' needs pip install 'hopaudit[ray]'")


class Stop(Exception):
    """Raised by the stand-in ray.init once it has seen its arguments."""


def _audit():
    model = tiny_model("gpt2")[0]
    texts = ["one two three four five six"] * 8
    return hopaudit.audit(model, texts, tokenizer=tiny_tokenizer(), max_length=8, engine="ray",
                          progress=False, umap_layers=[])  # fmt: skip


def test_a_ray_hopaudit_starts_logs_warnings_only(monkeypatch):
    seen = {}

    def init(**kwargs):
        seen.update(kwargs)
        raise Stop

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", init)
    with pytest.raises(Stop):
        _audit()
    assert seen["logging_level"] == logging.WARNING
    assert seen["log_to_driver"] is False and seen["include_dashboard"] is False
    # the filter that drops Ray's token-authentication notice is removed again
    setup = logging.getLogger("ray._private.authentication.authentication_token_setup")
    assert setup.filters == []


def test_ray_data_progress_bars_are_off_once_ray_runs(monkeypatch):
    import ray.data

    from hopaudit.engines.ray import quiet_ray_data

    ctx = ray.data.DataContext.get_current()
    monkeypatch.setattr(ctx, "enable_progress_bars", True)
    monkeypatch.setattr(ctx, "enable_operator_progress_bars", True)
    quiet_ray_data()
    assert ctx.enable_progress_bars is False and ctx.enable_operator_progress_bars is False
    assert logging.getLogger("ray.data").getEffectiveLevel() >= logging.WARNING


def test_a_ray_that_misses_its_start_is_one_clear_error(monkeypatch):
    def late(**kwargs):
        raise Exception(
            "The current node timed out during startup. This could happen because some of the "
            "raylet failed to startup or the GCS has become overloaded."
        )

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", late)
    monkeypatch.setattr(ray, "shutdown", lambda: None)
    with pytest.raises(HopauditError, match=r"did not start.*engine='local'"):
        _audit()
