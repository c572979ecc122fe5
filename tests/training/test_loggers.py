"""AuditCallback into TensorBoard and W&B: read back offline, from the files they wrote.

Oracles: TensorBoard's own event reader (EventAccumulator) and the files of a wandb offline
run (the table's JSON, the HTML report); the values are checked against the saved audits
loaded back from disk, not against what the callback kept.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from pydoc_data.topics import topics

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainingArguments

import hopaudit
from hopaudit.training import AuditCallback
from hopaudit.zoo.tinygpt import _token_stream, train_tokenizer

SEQ = 32
DOCS = [topics[k] for k in sorted(topics)][:8]
LAYERS = ["transformer.h.0", "transformer.h.1", "final"]
STEPS = [4, 8]


@pytest.fixture(scope="module")
def logged(tmp_path_factory, one_torch_thread):
    pytest.importorskip("tensorboard")
    wandb = pytest.importorskip("wandb")
    root = tmp_path_factory.mktemp("loggers")
    mp = pytest.MonkeyPatch()
    for key, value in {
        "WANDB_MODE": "offline",
        "WANDB_DIR": str(root),
        "WANDB_SILENT": "true",
        "WANDB_PROJECT": "hopaudit-test",
        "WANDB_DISABLE_GIT": "true",
        "WANDB_LOG_MODEL": "false",
        "TENSORBOARD_LOGGING_DIR": str(root / "tb"),
    }.items():
        mp.setenv(key, value)
    try:
        tok = train_tokenizer(DOCS, vocab_size=400, model_max_length=SEQ)
        stream = torch.from_numpy(_token_stream(tok, DOCS))
        rows = stream[: (len(stream) // SEQ) * SEQ].view(-1, SEQ)
        torch.manual_seed(0)
        model = GPT2LMHeadModel(
            GPT2Config(vocab_size=len(tok), n_positions=SEQ, n_embd=32, n_layer=2, n_head=2,
                       eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
        )  # fmt: skip
        callback = AuditCallback(rows[:40], max_length=SEQ, umap_layers=[])
        args = TrainingArguments(
            output_dir=str(root / "out"), max_steps=8, save_steps=4, logging_steps=2,
            per_device_train_batch_size=8, report_to=["tensorboard", "wandb"], use_cpu=True,
            disable_tqdm=True, save_only_model=True, seed=0,
        )  # fmt: skip
        data = [{"input_ids": r, "labels": r} for r in rows[40:]]
        trainer = Trainer(model=model, args=args, train_dataset=data, processing_class=tok,
                          callbacks=[callback])  # fmt: skip
        import contextlib
        import io

        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            trainer.train()
        run_dir = Path(wandb.run.dir).parent
        wandb.finish()
    finally:
        mp.undo()
    return dict(root=root, trainer=trainer, callback=callback, stdout=out.getvalue(),
                wandb_dir=run_dir)  # fmt: skip


def _audit(logged, step):
    return hopaudit.load(logged["root"] / "out" / "hopaudit" / f"step-{step}")


@pytest.mark.slow
def test_tensorboard_holds_the_hopaudit_tags_and_the_report(logged):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(logged["root"] / "tb"), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    scalars = set(acc.Tags()["scalars"])
    for layer in LAYERS:
        assert f"hopaudit/{layer}/r_hat" in scalars
    assert "hopaudit/cross_entropy" in scalars
    assert "hopaudit/final/log10_floor_low" in scalars
    assert not [t for t in scalars if t.startswith("train/hopaudit")]
    events = acc.Scalars("hopaudit/final/r_hat")
    assert [e.step for e in events] == STEPS
    for e in events:
        assert e.value == pytest.approx(_audit(logged, e.step).layers["r_hat"].iloc[-1], rel=1e-6)
    floor = acc.Scalars("hopaudit/final/log10_floor_low")
    for e in floor:
        expected = math.log10(_audit(logged, e.step).summary()["floor_low"])
        assert e.value == pytest.approx(expected, rel=1e-6)
    texts = acc.Tensors("hopaudit/report/text_summary")
    assert [t.step for t in texts] == STEPS
    text = texts[-1].tensor_proto.string_val[0].decode()
    assert "| transformer.h.0 |" in text and "cross_entropy" in text


@pytest.mark.slow
def test_wandb_offline_run_holds_the_table_and_the_report(logged):
    files = logged["wandb_dir"] / "files"
    tables = sorted((files / "media" / "table" / "hopaudit").glob("layers_*.table.json"))
    assert len(tables) == len(STEPS)
    step_of = {}
    for path in tables:
        table = json.loads(path.read_text())
        assert "r_hat" in table["columns"] and "name" in table["columns"]
        names = [row[table["columns"].index("name")] for row in table["data"]]
        assert names == LAYERS
        step_of[path] = [row[table["columns"].index("r_hat")] for row in table["data"]]
    expected = [_audit(logged, s).layers["r_hat"].tolist() for s in STEPS]
    assert sorted(step_of.values()) == sorted(expected)
    reports = list((files / "media" / "html" / "hopaudit").glob("report_*.html"))
    assert len(reports) == len(STEPS)
    assert "hopaudit" in reports[0].read_text(encoding="utf-8")[:2000]
    # The run's transaction log (protobuf records; wandb ships no reader for it any more)
    # names the keys as plain strings: ours at the top level, none under train/.
    (log,) = logged["wandb_dir"].glob("run-*.wandb")
    data = log.read_bytes()
    assert b"hopaudit/cross_entropy" in data and b"hopaudit/final/r_hat" in data
    assert b"train/loss" in data and b"train/hopaudit" not in data


@pytest.mark.slow
def test_nothing_of_the_audit_is_printed(logged):
    assert "hopaudit" not in logged["stdout"]
    assert "'loss'" in logged["stdout"]  # the trainer's own console logs still print


def test_a_failing_logger_follows_on_error(monkeypatch):
    """on_error='warn': a logger that raises is recorded and warned about, training goes on."""
    import hopaudit.training.loggers
    from hopaudit.training import AuditCallback

    def broken(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(hopaudit.training.loggers, "log_audit", broken)

    class State:
        global_step, epoch, log_history, is_world_process_zero = 3, None, [], True

    class Control:
        should_log = False

    for on_error in ("raise", "warn"):
        cb = AuditCallback(["x"], on_error=on_error)
        cb._handler = type("Handler", (), {"callbacks": []})()
        cb._runner.run = lambda model, tok, step: object()
        monkeypatch.setattr("hopaudit.training.callback._save_atomically", lambda r, p, **k: p)
        monkeypatch.setattr(
            "hopaudit.training.callback.audit_scalars", lambda r: {"hopaudit/x": 1.0}
        )
        args = type("Args", (), {"output_dir": "/nonexistent", "save_total_limit": None})()
        if on_error == "raise":
            with pytest.raises(OSError, match="disk full"):
                cb._audit(args, State(), Control(), object(), {})
        else:
            with pytest.warns(UserWarning, match="disk full"):
                cb._audit(args, State(), Control(), object(), {})
            assert cb.errors == {3: "OSError: disk full"}
