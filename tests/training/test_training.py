"""AuditCallback inside a real transformers Trainer, the plain-loop Auditor, audit_checkpoints.

Oracles: the cross-entropy each audit logs is checked against the loss transformers itself
computes for the saved checkpoint of that step (loaded back from disk); a spy callback placed
before the AuditCallback (where the reporting integrations sit) must receive the scalars; a
forward hook records the mode the model is in while it is audited; a second run without the
callback must train to the very same losses.
"""

from __future__ import annotations

import functools
import math
import re
from pathlib import Path
from pydoc_data.topics import topics

import numpy as np
import pytest
import torch
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    Trainer,
    TrainerCallback,
    TrainingArguments,
)

import hopaudit
from hopaudit.errors import DataError, ModelError, SearchError
from hopaudit.training.callback import AuditCallback, Auditor, _checkpoint_dirs, audit_checkpoints
from hopaudit.zoo.tinygpt import _token_stream, train_tokenizer

SEQ = 32
DOCS = [topics[k] for k in sorted(topics)][:8]
OPTS = dict(max_length=SEQ, umap_layers=[])
LAYERS = ["transformer.h.0", "transformer.h.1", "final"]


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_torch_thread):
    """One intra-op thread for every test here (see conftest.one_torch_thread)."""


@pytest.fixture(scope="module")
def corpus():
    tok = train_tokenizer(DOCS, vocab_size=400, model_max_length=SEQ)
    stream = torch.from_numpy(_token_stream(tok, DOCS))
    n = len(stream) // SEQ
    rows = stream[: n * SEQ].view(n, SEQ)
    return tok, rows[40:], rows[:40]  # tokenizer, training rows, evaluation rows


def _model(tok, seed=0):
    torch.manual_seed(seed)
    config = GPT2Config(vocab_size=len(tok), n_positions=SEQ, n_embd=32, n_layer=2, n_head=2,
                        eos_token_id=tok.eos_token_id, bos_token_id=tok.eos_token_id,
                        pad_token_id=tok.pad_token_id)  # fmt: skip
    return GPT2LMHeadModel(config)


def _trainer(tok, train_rows, out, callbacks, **kwargs):
    args = dict(output_dir=str(out), max_steps=24, save_steps=8, logging_steps=4,
                per_device_train_batch_size=8, learning_rate=3e-3, report_to="none",
                use_cpu=True, disable_tqdm=True, save_only_model=True, seed=0)  # fmt: skip
    args.update(kwargs)
    data = [{"input_ids": r, "labels": r} for r in train_rows]
    return Trainer(model=_model(tok), args=TrainingArguments(**args), train_dataset=data,
                   processing_class=tok, callbacks=callbacks)  # fmt: skip


class Spy(TrainerCallback):
    """Records what a reporting integration sees (on_log) and the model's mode after saves."""

    def __init__(self):
        self.logs: list[dict] = []
        self.mode_after_save: list[bool] = []

    def on_log(self, args, state, control, logs=None, **kwargs):
        self.logs.append(dict(logs))

    def on_save(self, args, state, control, model=None, **kwargs):
        self.mode_after_save.append(model.training)


def _hand_loss(model, ids):
    with torch.no_grad():
        return float(model.eval()(input_ids=ids, labels=ids).loss)


@pytest.fixture(scope="module")
def run(corpus, tmp_path_factory):
    tok, train_rows, eval_rows = corpus
    out = tmp_path_factory.mktemp("run")
    before, after = Spy(), Spy()
    callback = AuditCallback(eval_rows, **OPTS)
    trainer = _trainer(tok, train_rows, out, [before, callback, after])
    audited_modes: list[bool] = []
    trainer.model.register_forward_hook(
        lambda m, i, o: audited_modes.append(m.training) if not torch.is_grad_enabled() else None
    )
    trainer.train()
    return dict(trainer=trainer, out=out, callback=callback, before=before, after=after,
                audited_modes=audited_modes)  # fmt: skip


def _audit_entries(history):
    return {e["step"]: e for e in history if "hopaudit/cross_entropy" in e}


def test_an_audit_directory_per_save_that_loads(run):
    audit_dir = run["out"] / "hopaudit"
    assert sorted(p.name for p in audit_dir.iterdir()) == ["step-16", "step-24", "step-8"]
    assert run["callback"].audit_dir(run["trainer"].args) == audit_dir
    assert [p.name for p in run["callback"].paths] == ["step-8", "step-16", "step-24"]
    entries = _audit_entries(run["trainer"].state.log_history)
    for step in (8, 16, 24):
        loaded = hopaudit.load(audit_dir / f"step-{step}")
        assert loaded.options["step"] == step
        assert loaded.layer_names == LAYERS
        ce = loaded.summary()["cross_entropy"]
        assert ce == pytest.approx(entries[step]["hopaudit/cross_entropy"], rel=1e-6)


def test_scalars_in_log_history_and_at_the_reporting_callbacks(run):
    history = run["trainer"].state.log_history
    entries = _audit_entries(history)
    assert sorted(entries) == [8, 16, 24]
    keys = {f"hopaudit/{layer}/{col}" for layer in LAYERS
            for col in ("r_hat", "r_ratio", "separated_frac")}  # fmt: skip
    keys |= {"hopaudit/final/log10_floor_low", "hopaudit/cross_entropy"}
    for entry in entries.values():
        assert keys <= set(entry)
        assert all(math.isfinite(entry[k]) for k in keys)
        # r_ratio is r_hat / sqrt(n / 2 pi e) with n = 32 (the hidden size)
        r_star = math.sqrt(32 / (2 * math.pi * math.e))
        for layer in LAYERS:
            ratio = entry[f"hopaudit/{layer}/r_ratio"]
            assert ratio == pytest.approx(entry[f"hopaudit/{layer}/r_hat"] / r_star, rel=1e-6)
    # A callback listed before ours (where TensorBoard / W&B sit) got the same scalars.
    seen = [log for log in run["before"].logs if "hopaudit/cross_entropy" in log]
    assert len(seen) == 3
    assert [log["hopaudit/cross_entropy"] for log in seen] == [
        entries[s]["hopaudit/cross_entropy"] for s in (8, 16, 24)
    ]
    # The trainer's own loss logs all still happened.
    assert [e["step"] for e in history if "loss" in e] == [4, 8, 12, 16, 20, 24]


def test_logged_cross_entropy_is_the_checkpoint_loss(run, corpus):
    _, _, eval_rows = corpus
    entries = _audit_entries(run["trainer"].state.log_history)
    for step in (8, 16, 24):
        model = GPT2LMHeadModel.from_pretrained(run["out"] / f"checkpoint-{step}")
        expected = _hand_loss(model, eval_rows)
        assert entries[step]["hopaudit/cross_entropy"] == pytest.approx(expected, rel=1e-4)
    ce = [entries[s]["hopaudit/cross_entropy"] for s in (8, 16, 24)]
    assert ce[2] < ce[0]  # training lowered the evaluation loss


def test_audited_in_eval_mode_and_handed_back_in_training_mode(run):
    assert run["audited_modes"] and not any(run["audited_modes"])
    assert run["after"].mode_after_save == [True, True, True]


def test_audits_leave_training_unchanged(run, corpus, tmp_path):
    tok, train_rows, _ = corpus
    plain = _trainer(tok, train_rows, tmp_path, None, save_strategy="no")
    plain.train()
    losses = [e["loss"] for e in plain.state.log_history if "loss" in e]
    audited = [e["loss"] for e in run["trainer"].state.log_history if "loss" in e]
    assert losses == audited


def test_every_n_steps_into_another_directory(corpus, tmp_path):
    tok, train_rows, eval_rows = corpus
    elsewhere = tmp_path / "audits"
    callback = AuditCallback(eval_rows, every=5, output_dir=elsewhere, **OPTS)
    trainer = _trainer(tok, train_rows, tmp_path / "out", [callback], max_steps=12,
                       save_strategy="no")  # fmt: skip
    trainer.train()
    assert sorted(p.name for p in (elsewhere / "hopaudit").iterdir()) == ["step-10", "step-5"]
    assert sorted(_audit_entries(trainer.state.log_history)) == [5, 10]
    assert not (tmp_path / "out" / "hopaudit").exists()


def test_bad_eval_data_fails_before_the_first_step(corpus, tmp_path):
    tok, train_rows, _ = corpus
    callback = AuditCallback([], **OPTS)
    trainer = _trainer(tok, train_rows, tmp_path, [callback])
    with pytest.raises(DataError):
        trainer.train()
    assert trainer.state.global_step == 0


def test_failing_audit_raises_or_warns_and_restores_the_mode(corpus, tmp_path, monkeypatch):
    tok, train_rows, eval_rows = corpus

    @functools.wraps(hopaudit.api.audit)  # same signature: the options check still applies
    def broken(model, data, **kwargs):
        assert not model.training
        raise SearchError("planted failure")

    monkeypatch.setattr(hopaudit.api, "audit", broken)
    after = Spy()
    callback = AuditCallback(eval_rows, every=2, on_error="warn", **OPTS)
    trainer = _trainer(tok, train_rows, tmp_path / "a", [callback, after], max_steps=4,
                       save_steps=2)  # fmt: skip
    with pytest.warns(UserWarning, match="planted failure"):
        trainer.train()
    assert trainer.state.global_step == 4
    assert sorted(callback.errors) == [2, 4] and "planted failure" in callback.errors[2]
    assert after.mode_after_save == [True, True]
    assert not (tmp_path / "a" / "hopaudit").exists()  # nothing half-written is left

    raising = AuditCallback(eval_rows, every=2, **OPTS)
    trainer = _trainer(tok, train_rows, tmp_path / "b", [raising], max_steps=4)
    with pytest.raises(SearchError, match="planted failure"):
        trainer.train()
    assert trainer.state.global_step == 2 and trainer.model.training


def test_bad_callback_options():
    with pytest.raises(DataError, match="every"):
        AuditCallback(["a text"], every=0)
    with pytest.raises(DataError, match="every"):
        AuditCallback(["a text"], every="epoch")
    with pytest.raises(DataError, match="'bogus'"):
        AuditCallback(["a text"], bogus=1)
    with pytest.raises(DataError, match="on_error"):
        AuditCallback(["a text"], on_error="ignore")


def test_every_save_without_saves_warns(corpus, tmp_path):
    tok, train_rows, eval_rows = corpus
    trainer = _trainer(tok, train_rows, tmp_path, [AuditCallback(eval_rows, **OPTS)],
                       max_steps=1, save_strategy="no")  # fmt: skip
    with pytest.warns(UserWarning, match="nothing will be audited"):
        trainer.train()


def test_auditor_in_a_plain_loop(corpus, tmp_path):
    tok, train_rows, eval_rows = corpus
    model = _model(tok)
    model.hopaudit_tokenizer = tok
    auditor = Auditor(eval_rows, tmp_path, **OPTS)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    audits = {}
    for step in range(1, 7):
        batch = train_rows[(step - 1) * 8 : step * 8]
        loss = model(input_ids=batch, labels=batch).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 3 == 0:
            audits[step] = auditor.step(model, step)
            assert model.training
    assert sorted(p.name for p in auditor.audit_dir.iterdir()) == ["step-3", "step-6"]
    assert auditor.audit_dir == tmp_path / "hopaudit"
    assert audits[6].summary()["cross_entropy"] == pytest.approx(
        _hand_loss(model, eval_rows), rel=1e-4
    )
    model.train()
    assert [h["step"] for h in auditor.history] == [3, 6]
    assert auditor.history[1]["hopaudit/cross_entropy"] == audits[6].summary()["cross_entropy"]
    # A wrapped model (DataParallel on the CPU) is audited through its module; eval mode kept.
    model.eval()
    wrapped = auditor.step(torch.nn.DataParallel(model), 7)
    assert not model.training
    assert wrapped.summary()["cross_entropy"] == pytest.approx(
        audits[6].summary()["cross_entropy"], rel=1e-6
    )
    again = hopaudit.load(auditor.audit_dir / "step-7")
    assert again.options["step"] == 7


def test_audit_checkpoints_in_step_order(run, corpus):
    _, _, eval_rows = corpus
    out = run["out"]
    entries = _audit_entries(run["trainer"].state.log_history)
    by_glob = audit_checkpoints(str(out / "checkpoint-*"), eval_rows, progress=False, **OPTS)
    assert [a.options["step"] for a in by_glob] == [8, 16, 24]  # not the glob's 16, 24, 8
    for a in by_glob:
        step = a.options["step"]
        assert a.summary()["cross_entropy"] == pytest.approx(
            entries[step]["hopaudit/cross_entropy"], rel=1e-6
        )
        assert a.options["checkpoint"].endswith(f"checkpoint-{step}")
    # The other ways to name them expand to the same directories, in step order.
    steps = [out.resolve() / f"checkpoint-{s}" for s in (8, 16, 24)]
    assert _checkpoint_dirs(out) == steps  # a run's output directory
    assert _checkpoint_dirs([steps[2], str(steps[0]), steps[2]]) == [steps[0], steps[2]]


def test_audit_checkpoints_with_texts_uses_the_checkpoint_tokenizer(run, corpus):
    tok, _, eval_rows = corpus
    texts = tok.batch_decode(eval_rows[:20])
    (a,) = audit_checkpoints(run["out"] / "checkpoint-24", texts, progress=False, **OPTS)
    assert a.options["step"] == 24
    assert 0.9 * 20 * SEQ <= a.summary()["n_tokens"] <= 1.1 * 20 * SEQ


def test_bad_checkpoint_paths_are_named(run, tmp_path):
    good = run["out"] / "checkpoint-8"
    empty = tmp_path / "checkpoint-99"
    empty.mkdir()
    with pytest.raises(ModelError, match=re.escape(str(empty)) + ".*no config.json"):
        audit_checkpoints([good, empty], ["text"], progress=False)
    missing = tmp_path / "nowhere"
    with pytest.raises(ModelError, match=re.escape(str(missing)) + ".*does not exist"):
        audit_checkpoints(missing, ["text"], progress=False)
    with pytest.raises(ModelError, match="no checkpoint directory matches"):
        audit_checkpoints(str(tmp_path / "run-*" / "checkpoint-*"), ["text"], progress=False)
    no_weights = tmp_path / "checkpoint-5"
    no_weights.mkdir()
    (no_weights / "config.json").write_text("{}")
    with pytest.raises(ModelError, match="no model weights"):
        audit_checkpoints(no_weights, ["text"], progress=False)
    a_file = tmp_path / "model.bin"
    a_file.write_bytes(b"")
    with pytest.raises(ModelError, match="is a file"):
        audit_checkpoints(Path(a_file), ["text"], progress=False)


@pytest.mark.parametrize("rank_zero", [True, False])
def test_sharded_models_are_refused_on_every_rank(rank_zero):
    from types import SimpleNamespace

    from transformers import TrainerControl, TrainerState

    args = SimpleNamespace(fsdp="full_shard", deepspeed=None, save_strategy="steps",
                           output_dir="unused")  # fmt: skip
    state = TrainerState(is_world_process_zero=rank_zero)
    with pytest.raises(ModelError, match=r"FSDP.*audit_checkpoints"):
        AuditCallback(["a text"]).on_train_begin(args, state, TrainerControl())


# ------------------------------------------------------------------ faults and rotation (issue 12)
@pytest.mark.parametrize("planted", [KeyError("no such key"), ZeroDivisionError("division")])
def test_warn_catches_any_exception_warns_once_and_training_goes_on(
    corpus, tmp_path, monkeypatch, planted
):
    tok, train_rows, eval_rows = corpus

    @functools.wraps(hopaudit.api.audit)
    def broken(model, data, **kwargs):
        raise planted

    monkeypatch.setattr(hopaudit.api, "audit", broken)
    after = Spy()
    callback = AuditCallback(eval_rows, every=2, on_error="warn", **OPTS)
    trainer = _trainer(tok, train_rows, tmp_path, [callback, after], max_steps=6, save_steps=2)
    with pytest.warns(UserWarning) as caught:
        trainer.train()
    ours = [w for w in caught if "hopaudit: the audit" in str(w.message)]
    assert len(ours) == 1 and type(planted).__name__ in str(ours[0].message)  # once, not 3x
    assert trainer.state.global_step == 6 and sorted(callback.errors) == [2, 4, 6]
    assert after.mode_after_save == [True, True, True] and trainer.model.training


def test_keyboard_interrupt_is_never_swallowed(corpus, tmp_path, monkeypatch):
    tok, _, eval_rows = corpus

    @functools.wraps(hopaudit.api.audit)
    def interrupted(model, data, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(hopaudit.api, "audit", interrupted)
    model = _model(tok)
    model.hopaudit_tokenizer = tok
    model.train()
    auditor = Auditor(eval_rows, tmp_path, on_error="warn", **OPTS)
    with pytest.raises(KeyboardInterrupt):
        auditor.step(model, 1)
    assert model.training


@pytest.mark.parametrize(("keep", "steps"), [("limit", [16, 24]), ("all", [8, 16, 24])])
def test_audits_follow_save_total_limit(corpus, tmp_path, keep, steps):
    tok, train_rows, eval_rows = corpus
    callback = AuditCallback(eval_rows, keep=keep, **OPTS)
    trainer = _trainer(tok, train_rows, tmp_path, [callback], save_total_limit=2)
    trainer.train()
    checkpoints = sorted(int(p.name.split("-")[1]) for p in tmp_path.glob("checkpoint-*"))
    assert checkpoints == [16, 24]  # the Trainer's own rotation
    audits = sorted(int(p.name.split("-")[1]) for p in (tmp_path / "hopaudit").iterdir())
    assert audits == steps
    assert [p.name for p in callback.paths] == [f"step-{s}" for s in steps]
    assert [h["step"] for h in callback.history] == [8, 16, 24]  # the scalars all stay
    for s in steps:
        hopaudit.load(tmp_path / "hopaudit" / f"step-{s}")


def test_stores_of_saved_audits_are_removed_unless_kept(corpus, tmp_path):
    tok, _, eval_rows = corpus
    model = _model(tok)
    model.hopaudit_tokenizer = tok
    stores = tmp_path / "stores"
    auditor = Auditor(eval_rows, tmp_path / "out", store=str(stores), keep=1, **OPTS)
    a1 = auditor.step(model, 1)
    a2 = auditor.step(model, 2)
    assert sorted(p.name for p in stores.iterdir()) == []  # step-1, step-2 stores removed
    assert sorted(p.name for p in auditor.audit_dir.iterdir()) == ["step-2"]  # keep=1
    # the audit in hand now reads its saved activations
    assert a2.capture.store.path == auditor.audit_dir / "step-2" / "activations"
    np.testing.assert_array_equal(a2.activations("final"), a1.activations("final"))
    kept = Auditor(eval_rows, tmp_path / "out2", store=str(stores), keep_stores=True, **OPTS)
    kept.step(model, 3)
    # kept: the store and, beside it, its layer files (docs/scale.md)
    assert sorted(p.name for p in stores.iterdir()) == [
        "step-3",
        "step-3.layers",
    ]  # kept: the store and its layer files
    with pytest.raises(DataError, match="keep"):
        Auditor(eval_rows, tmp_path, keep=0)


def test_an_audit_still_held_answers_queries_after_rotation_deletes_its_folder(corpus, tmp_path):
    """keep=1 deletes step-1's folder, which its HNSW index files were read from; the Audit of
    step 1 still in hand must answer queries exactly as before, and save again."""
    tok, _, eval_rows = corpus
    model = _model(tok)
    model.hopaudit_tokenizer = tok
    opts = {**OPTS, "index": "hnsw"}
    auditor = Auditor(eval_rows, tmp_path / "out", store=str(tmp_path / "st"), keep=1, **opts)
    a1 = auditor.step(model, 1)
    index = a1.layer_report("final").index
    probe = np.asarray(a1.activations("final")[:5], dtype=np.float32)
    before = index.query(probe, 3)
    index.release()  # on disk again, as after any query: rotation must not strand it
    auditor.step(model, 2)
    assert not (auditor.audit_dir / "step-1").exists()
    after = a1.layer_report("final").index.query(probe, 3)
    np.testing.assert_array_equal(after[0], before[0])
    np.testing.assert_allclose(after[1], before[1], rtol=1e-6)
    a1.save(tmp_path / "again")  # the in-memory index is what is written
    back = hopaudit.load(tmp_path / "again").layer_report("final").index.query(probe, 3)
    np.testing.assert_array_equal(back[0], before[0])


def test_heldout_and_extraction_give_every_step_its_evidence(corpus, tmp_path):
    """AuditCallback(heldout=, extraction=) passes both to every audit: each step logs the
    extraction rate and the loss score's membership AUROC, which the saved audit's own samples
    reproduce (AUROC by scikit-learn), and hopaudit.timeline carries them on the step axis."""
    from sklearn.metrics import roc_auc_score

    from hopaudit.results.comparison import timeline_state

    tok, train_rows, eval_rows = corpus
    members, heldout = train_rows[:24], eval_rows[:24]
    callback = AuditCallback(members, every=8, heldout=heldout,
                             extraction={"prefix": 16, "suffix": 16}, **OPTS)  # fmt: skip
    _trainer(tok, train_rows, tmp_path, [callback], save_strategy="no").train()
    entries = _audit_entries(callback.history)
    assert sorted(entries) == [8, 16, 24]
    tl = hopaudit.timeline(tmp_path / "hopaudit")
    evidence = tl.evidence.set_index("step")
    state = timeline_state(tl)
    for i, step in enumerate([8, 16, 24]):
        saved = hopaudit.load(tmp_path / "hopaudit" / f"step-{step}")
        stored, held = saved.samples, saved.heldout_samples
        assert len(stored) == 24 and len(held) == 24
        rate = float(stored["extracted"].mean())
        labels = [1] * len(stored) + [0] * len(held)
        auroc = roc_auc_score(labels, list(stored["loss"]) + list(held["loss"]))
        assert entries[step]["hopaudit/extraction_rate"] == pytest.approx(rate)
        assert entries[step]["hopaudit/auroc_loss"] == pytest.approx(auroc, abs=1e-9)
        assert evidence.loc[step, "extraction_rate"] == pytest.approx(rate)
        assert evidence.loc[step, "auroc_loss"] == pytest.approx(auroc, abs=1e-9)
        assert evidence.loc[step, "auroc_loss_lo"] <= auroc <= evidence.loc[step, "auroc_loss_hi"]
        assert evidence.loc[step, "r_ratio_final"] == pytest.approx(
            float(saved.layers.iloc[-1]["r_ratio"])
        )
        member = state["members"][i]
        assert member["step"] == step
        assert member["evidence"]["auroc_loss"] == pytest.approx(auroc, abs=1e-9)
        assert member["evidence"]["extraction_rate"] == pytest.approx(rate)
    # training made the members more recognizable than at the first audit
    assert evidence.loc[24, "auroc_loss"] > 0.5


def test_audits_without_evidence_say_none():
    from fakes import fake_audit

    from hopaudit.results.comparison import audit_evidence

    ev = audit_evidence(fake_audit(n_blocks=1, d=30, n=8, seed=4))
    assert ev == {"extraction_rate": None, "extraction_rate_heldout": None, "auroc_loss": None,
                  "auroc_loss_lo": None, "auroc_loss_hi": None}  # fmt: skip


def test_bad_extraction_fails_at_construction():
    with pytest.raises(DataError, match="extraction"):
        AuditCallback(["a text"], extraction="yes")
