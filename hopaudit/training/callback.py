"""Audits during and after training: a Trainer callback, a plain-loop auditor, saved checkpoints.

- :class:`AuditCallback` audits the model inside ``transformers.Trainer`` at each checkpoint
  save (or every N steps), writes ``<output_dir>/hopaudit/step-<N>/`` and logs per-layer
  scalars (``hopaudit/<layer>/r_hat`` ...) under ``hopaudit/`` at the top level to TensorBoard
  and W&B (with the layer table and the report, training/loggers.py), to the trainer's other
  logging callbacks and ``trainer.state.log_history``; nothing is printed to the console.
- :class:`Auditor` does the same from a plain PyTorch loop: ``auditor.step(model, step)``.
- :func:`audit_checkpoints` audits checkpoint directories a run already saved.

Every audit here runs on the same token sequences (the evaluation data is tokenized once), so
audits of different steps compare. Each audit is saved atomically (``Audit.save``); old ones
follow the Trainer's ``save_total_limit`` unless ``keep="all"``, and a ``store=`` directory of a
finished audit is removed once the audit is saved (``keep_stores=True`` keeps them).
The model is put in eval mode for the audit and handed
back in the mode it was in; the torch RNG streams training uses are left as they were, so a
run with audits trains exactly as one without.
"""

from __future__ import annotations

import contextlib
import gc
import glob
import inspect
import logging
import math
import os
import re
import sys
import time
import warnings
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback

from hopaudit.errors import DataError, HopauditError, ModelError

logger = logging.getLogger(__name__)

#: Where the audits of a run go, under the run's output directory.
AUDIT_SUBDIR = "hopaudit"
#: The per-layer columns of ``audit.layers`` logged as scalars.
LAYER_SCALARS = ("r_hat", "r_ratio", "separated_frac")
_TOKEN_OPTIONS = ("max_length", "chunking", "max_sequences")
_CHECKPOINT_STEP = re.compile(r"checkpoint-(\d+)$")
_WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)


# ------------------------------------------------------------------------------ scalars
def audit_scalars(audit: Any) -> dict[str, float]:
    """The scalars an audit logs: per layer ``hopaudit/<layer>/{r_hat,r_ratio,separated_frac}``,
    the last layer's (``final``) ``log10_floor_low`` (the floor spans tens of orders of
    magnitude: 1 nat at r_c, 1e31 far from it), ``hopaudit/cross_entropy``, with
    ``extraction=`` the ``extraction_rate`` (and ``extraction_rate_heldout``), with ``heldout=``
    the loss score's membership ``auroc_loss``, and the audit's seconds. Skipped layers and
    non-finite values are left out (loggers choke on them)."""
    out: dict[str, float] = {}
    for row in audit.layers.to_dict("records"):
        for column in LAYER_SCALARS:
            _put(out, f"hopaudit/{row['name']}/{column}", row.get(column))
    summary = audit.summary()
    floor = summary.get("floor_low")
    if isinstance(floor, (int, float)) and floor > 0:
        _put(out, f"hopaudit/{audit.layer_names[-1]}/log10_floor_low", math.log10(floor))
    _put(out, "hopaudit/cross_entropy", summary.get("cross_entropy"))
    # the evidence, where the audit measured it (extraction=, heldout=): docs/validity.md
    _put(out, "hopaudit/extraction_rate", summary.get("extraction_rate"))
    _put(out, "hopaudit/extraction_rate_heldout", summary.get("extraction_rate_heldout"))
    if getattr(audit, "heldout_capture", None) is not None:
        table = audit.membership
        loss = table[table["score"] == "loss"]
        if len(loss):
            _put(out, "hopaudit/auroc_loss", loss.iloc[0]["auroc"])
    _put(out, "hopaudit/audit_seconds", audit.timings.get("total"))
    return out


def _put(out: dict[str, float], key: str, value: Any) -> None:
    if value is None or isinstance(value, bool):
        return
    try:
        v = float(value)
    except (TypeError, ValueError):
        return
    if math.isfinite(v):
        out[key] = v


# ------------------------------------------------------------------------------ shared core
class _Runner:
    """Tokenize the evaluation data once; audit a model at a step; save atomically."""

    def __init__(self, eval_data: Any, audit_options: dict[str, Any]) -> None:
        from hopaudit.api import audit

        params = inspect.signature(audit).parameters
        accepted = set(params) - {"model", "data"}
        unknown = sorted(set(audit_options) - accepted)
        if unknown:
            raise DataError(
                f"unknown audit option(s) {', '.join(map(repr, unknown))}; "
                f"hopaudit.audit accepts {', '.join(sorted(accepted))}"
            )
        if eval_data is None:
            raise DataError("eval_data is None; pass the texts (or token ids) to audit")
        self.eval_data = eval_data
        # audit()'s own defaults for what tokenization needs, so both see the same values
        defaults = {name: params[name].default for name in _TOKEN_OPTIONS if name in params}
        self.options = {"progress": False, **defaults, **audit_options}
        self.tokens: Any = None  # the TokenData every audit uses, made on first need
        self.heldout_tokens: Any = None
        self._failures_seen: set[str] = set()

    def failed(self, errors: dict[int, str], step: int, exc: BaseException) -> None:
        """Record a failed audit; warn once per distinct message (a failure repeating at every
        step is logged, not warned again)."""
        message = f"{type(exc).__name__}: {exc}"
        errors[step] = message
        if message in self._failures_seen:
            logger.info("hopaudit: the audit at step %d failed again: %s", step, message)
            return
        self._failures_seen.add(message)
        warnings.warn(
            f"hopaudit: the audit at step {step} failed (training goes on): {message}",
            stacklevel=4,
        )

    def prepare(self, model: Any, tokenizer: Any) -> None:
        """Tokenize the evaluation (and held-out) data once, with clear errors, before any audit."""
        if self.tokens is not None:
            return
        from hopaudit.data.prepare import prepare_data

        opts = self.options
        if opts.get("tokenizer") is not None:
            tokenizer = opts["tokenizer"]

        def tokens_of(data: Any) -> Any:
            return prepare_data(
                data,
                tokenizer,
                max_length=opts["max_length"],
                chunking=opts["chunking"],
                max_sequences=opts["max_sequences"],
                model=model,
            )

        self.tokens = tokens_of(self.eval_data)
        if opts.get("heldout") is not None:
            self.heldout_tokens = tokens_of(opts["heldout"])

    def run(self, model: Any, tokenizer: Any, step: int | None) -> Any:
        """Audit ``model`` in eval mode with training's RNG untouched; mode restored after."""
        from hopaudit.api import audit

        model = _unwrap(model)
        self.prepare(model, tokenizer)
        opts = dict(self.options)
        if opts.get("tokenizer") is None:
            opts["tokenizer"] = tokenizer
        if self.heldout_tokens is not None:
            opts["heldout"] = self.heldout_tokens
        if opts.get("store") and step is not None:
            opts["store"] = str(Path(opts["store"]) / f"step-{step}")
        was_training = model.training
        model.eval()
        try:
            with _rng_kept(model), torch.no_grad():
                result = audit(model, self.tokens, **opts)
        finally:
            model.train(was_training)
        if step is not None:
            result.options["step"] = int(step)
        return result


def _unwrap(model: Any) -> Any:
    """The module inside DDP / DataParallel: their forward may run collectives (buffers)."""
    wrappers = (torch.nn.parallel.DistributedDataParallel, torch.nn.DataParallel)
    while isinstance(model, wrappers):
        model = model.module
    return model


@contextlib.contextmanager
def _rng_kept(model: Any) -> Iterator[None]:
    """Fork the CPU RNG and the model's CUDA device RNG, so training's random stream goes on
    exactly as if no audit had happened."""
    devices = []
    with contextlib.suppress(StopIteration):
        device = next(model.parameters()).device
        if device.type == "cuda":
            devices = [device.index if device.index is not None else torch.cuda.current_device()]
    with torch.random.fork_rng(devices=devices):
        yield


def _save_atomically(result: Any, path: Path, *, keep_stores: bool = False) -> Path:
    """Save (atomic: a crash never leaves a half-written step; the same step audited again, as
    in a resumed run, replaces it), then, unless ``keep_stores``, point the audit at its saved
    activations and remove the ``store=`` directory the audit was captured into."""
    path.parent.mkdir(parents=True, exist_ok=True)
    result.save(path, overwrite=True)
    if not keep_stores:
        _drop_capture_store(result, path)
    return path


def _drop_capture_store(result: Any, path: Path) -> None:
    from hopaudit.capture.store import ActivationStore

    pairs = [("activations", result.capture)]
    if result.heldout_capture is not None:
        pairs.insert(0, ("heldout", result.heldout_capture))  # nested in the main store
    if result.capture.store.path is None:
        return
    for sub, cap in pairs:
        old = cap.store
        cap.store = ActivationStore.open(path / sub)
        for name in cap.store.layer_names:
            cap.store.get(name)  # mapped now: still readable if rotation deletes the files
        old.discard()
    from hopaudit.layer.files import move_to_saved

    move_to_saved(result, path)  # the indexes beside the store: the saved copies from now on


def _rotate(
    paths: list[Path], limit: int | None, live: dict[Path, weakref.ref] | None = None
) -> None:
    """Delete the oldest saved audits beyond ``limit`` (only hopaudit audits this run wrote,
    and only their own files). An Audit of one of them still held by the caller (``live``)
    first reads its on-disk indexes into memory, so it keeps answering queries."""
    from hopaudit.storage.save import remove_audit

    if not limit or len(paths) <= limit:
        return
    for old in paths[:-limit]:
        ref = (live or {}).pop(old, None)
        held = None if ref is None else ref()
        if held is not None:
            _detach_indexes(held, old)
        try:
            left = remove_audit(old)
        except (HopauditError, OSError) as exc:
            warnings.warn(f"hopaudit: could not remove the old audit {old}: {exc}", stacklevel=3)
            continue
        if left:
            warnings.warn(
                f"hopaudit: removed the old audit {old} but left what was not its own: {left}",
                stacklevel=3,
            )
    del paths[:-limit]


def _hold(live: dict[Path, weakref.ref], path: Path, result: Any) -> None:
    """Remember the Audit saved at ``path`` without keeping it alive (for :func:`_rotate`)."""
    # not an Audit (a stand-in without weak references): nothing to detach later
    with contextlib.suppress(TypeError):
        live[path] = weakref.ref(result)


def _detach_indexes(audit: Any, folder: Path) -> None:
    """Open every index of ``audit`` read from a file under ``folder`` and keep it in memory:
    the folder is about to be deleted (its activations and graphs are memory-mapped already,
    and a mapped file outlives its name)."""
    from hopaudit.search.backends import LazyIndex

    for rep in audit.reports.values():
        index = getattr(rep, "index", None)
        if isinstance(index, LazyIndex) and index.file is not None and folder in index.file.parents:
            index.pin()


def _check_keep(keep: Any) -> Any:
    if keep in ("limit", "all") or (
        isinstance(keep, int) and not isinstance(keep, bool) and keep >= 1
    ):
        return keep
    raise DataError(f"keep must be 'limit', 'all' or a positive number of audits, got {keep!r}")


def _check_on_error(on_error: str) -> str:
    if on_error not in ("raise", "warn"):
        raise DataError(f"on_error must be 'raise' or 'warn', got {on_error!r}")
    return on_error


# ------------------------------------------------------------------------------ the callback
class AuditCallback(TrainerCallback):
    """Audit the model during ``transformers.Trainer`` training.

    ``every="save"`` audits at each checkpoint save (``on_save``); an integer N audits when
    ``global_step % N == 0`` (``on_step_end``). Each audit is saved to
    ``<output_dir or args.output_dir>/hopaudit/step-<global_step>/`` (read it back with
    ``hopaudit.load``) and its scalars (see :func:`audit_scalars`) are logged through the
    trainer: they land in ``trainer.state.log_history`` and reach every reporting integration
    (TensorBoard, W&B, ...) as one extra log event at that step. ``audit_options`` go to
    :func:`hopaudit.audit` (``max_length``, ``umap_layers``, ...); the tokenizer is
    the trainer's ``processing_class`` unless ``tokenizer=`` is given. ``heldout=`` (text never
    trained on) and ``extraction=`` (True or ``{"prefix": p, "suffix": s}``) go to every audit:
    each step then logs its extraction rate and the loss score's membership AUROC, and
    ``hopaudit.timeline`` draws them on the step axis beside r̂ / r* and the floor. The
    evaluation data (and held-out text) is tokenized once, at the start of training, so a bad
    dataset fails before any step is spent.

    ``on_error="raise"`` (default) stops training when an audit fails; ``"warn"`` catches any
    exception (not KeyboardInterrupt or SystemExit), warns once per distinct message, records it
    in ``errors``, hands the model back in its training mode, and training goes on.

    ``keep="limit"`` (default) keeps the newest ``args.save_total_limit`` audits (all when it is
    None), as the Trainer keeps its checkpoints; ``"all"`` keeps every audit; an integer keeps
    that many. Only audits this callback wrote are deleted, and only their own files.
    ``keep_stores=True`` keeps each audit's ``store=`` directory (else removed once saved).

    Distributed runs: only the world's rank 0 audits (``state.is_world_process_zero``); the
    audit issues no collective operation (it runs the unwrapped module, not DDP's wrapper), and
    the other ranks simply go on with the next step and wait for rank 0 at the next gradient
    all-reduce. Keep one audit shorter than ``args.ddp_timeout`` (30 min by default). Sharded
    parameters (FSDP, DeepSpeed ZeRO-3) cannot be audited on one rank: the callback refuses
    them at the start; audit the saved checkpoints with :func:`audit_checkpoints` instead.
    """

    def __init__(
        self,
        eval_data: Any,
        every: str | int = "save",
        output_dir: str | os.PathLike[str] | None = None,
        *,
        on_error: str = "raise",
        keep: str | int = "limit",
        keep_stores: bool = False,
        heldout: Any = None,
        extraction: bool | dict[str, int] = False,
        **audit_options: Any,
    ) -> None:
        if every != "save" and (isinstance(every, bool) or not isinstance(every, int) or every < 1):
            raise DataError(f"every must be 'save' or a positive number of steps, got {every!r}")
        # the evidence beside the geometry at every step: held-out text (membership AUROC) and
        # extraction, passed on to each audit like the other options
        if heldout is not None:
            audit_options["heldout"] = heldout
        if extraction is not False:
            from hopaudit.evidence.extract import parse_extraction

            parse_extraction(extraction)  # a bad value fails here, not at the first audit
            audit_options["extraction"] = extraction
        self.every = every
        self.output_dir = None if output_dir is None else Path(output_dir)
        self.on_error = _check_on_error(on_error)
        self.keep = _check_keep(keep)
        self.keep_stores = bool(keep_stores)
        self._runner = _Runner(eval_data, audit_options)
        self._handler: Any = None
        self._warned_no_handler = False
        self._audited: set[int] = set()
        self.paths: list[Path] = []  # one audit directory per audited step, in order
        self._live: dict[Path, weakref.ref] = {}  # path -> the Audit saved there, while held
        self.history: list[dict[str, Any]] = []  # {"step", "path", **scalars} per audit
        self.errors: dict[int, str] = {}  # step -> message, with on_error="warn"
        self.last_audit: Any = None

    def audit_dir(self, args: Any) -> Path:
        """The directory holding the ``step-<N>`` audits (give it to ``hopaudit.timeline``)."""
        return Path(self.output_dir or args.output_dir) / AUDIT_SUBDIR

    # ---------------------------------------------------------------- events
    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self._handler = _calling_handler() or self._handler
        _refuse_sharded(args)  # on every rank, so no rank is left waiting for the others
        if not state.is_world_process_zero:
            return control
        strategy = getattr(args, "save_strategy", None)
        if self.every == "save" and getattr(strategy, "value", strategy) == "no":
            warnings.warn(
                "AuditCallback(every='save') but the Trainer's save_strategy is 'no': nothing "
                "will be audited; pass every=<steps> or set save_strategy",
                stacklevel=2,
            )
        if model is not None:
            self._runner.prepare(_unwrap(model), _tokenizer_from(kwargs))
        return control

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if isinstance(self.every, int) and state.global_step % self.every == 0:
            self._audit(args, state, control, model, kwargs)
        return control

    def on_save(self, args, state, control, model=None, **kwargs):
        if self.every == "save":
            self._audit(args, state, control, model, kwargs)
        return control

    # ---------------------------------------------------------------- work
    def _audit(self, args, state, control, model, kwargs) -> None:
        step = int(state.global_step)
        if not state.is_world_process_zero or model is None or step in self._audited:
            return
        self._audited.add(step)
        self._handler = self._handler or _calling_handler()
        try:
            result = self._runner.run(model, _tokenizer_from(kwargs), step)
            path = _save_atomically(
                result, self.audit_dir(args) / f"step-{step}", keep_stores=self.keep_stores
            )
            scalars = audit_scalars(result)
        except Exception as exc:  # not KeyboardInterrupt / SystemExit: those stop the run
            if self.on_error == "raise":
                raise
            self._runner.failed(self.errors, step, exc)
            return
        self.paths.append(path)
        _hold(self._live, path, result)
        self.history.append({"step": step, "path": str(path), **scalars})
        self.last_audit = result
        limit = {"limit": getattr(args, "save_total_limit", None), "all": None}.get(
            self.keep, self.keep
        )
        _rotate(self.paths, limit, self._live)
        try:  # a logger that fails (W&B offline storage full...) is an audit failure too
            self._log(args, state, control, scalars, result)
        except Exception as exc:
            if self.on_error == "raise":
                raise
            self._runner.failed(self.errors, step, exc)

    def _log(self, args, state, control, scalars: dict[str, float], result: Any = None) -> None:
        """One log event at this step: into ``state.log_history``; TensorBoard and W&B directly
        under ``hopaudit/`` (their ``on_log`` would prefix ``train/``), with the layer table and
        the report; ``on_log`` of the other callbacks except the console's (which print)."""
        logs: dict[str, float] = dict(scalars)
        if state.epoch is not None:
            logs["epoch"] = state.epoch
        state.log_history.append({**logs, "step": state.global_step})
        if self._handler is None:
            if self._warned_no_handler:
                return
            self._warned_no_handler = True
            warnings.warn(
                "AuditCallback was not called by a transformers CallbackHandler, so its "
                "scalars reach trainer.state.log_history only, not the reporting integrations",
                stacklevel=3,
            )
            return
        from hopaudit.training.loggers import log_audit

        handler = self._handler
        rest = log_audit(handler.callbacks, args, state, result, scalars)
        extra = {
            name: getattr(handler, name, None)
            for name in (
                "model",
                "processing_class",
                "optimizer",
                "lr_scheduler",
                "train_dataloader",
                "eval_dataloader",
            )  # as CallbackHandler passes
        }
        # on_log may clear should_log (as the handler's does); keep the trainer's pending log.
        should_log = control.should_log
        for cb in rest:
            if cb is not self:
                cb.on_log(args, state, control, logs=logs, **extra)
        control.should_log = should_log


def _calling_handler() -> Any:
    """The ``CallbackHandler`` that is calling this callback (found on the call stack).

    A callback gets no reference to the trainer, and the handler's ``on_log`` is the only
    way to reach TensorBoard/W&B with a log event of our own: ``Trainer.log`` copies the logs
    into ``log_history`` and calls the reporting callbacks before any user callback's
    ``on_log`` could add to the dict, and ``control.should_log`` set during ``on_save`` is
    cleared at the next step's start."""
    from transformers.trainer_callback import CallbackHandler

    frame = sys._getframe(1)
    for _ in range(6):
        if frame is None:
            return None
        owner = frame.f_locals.get("self")
        if isinstance(owner, CallbackHandler):
            return owner
        frame = frame.f_back
    return None


def _tokenizer_from(kwargs: dict[str, Any]) -> Any:
    tok = kwargs.get("processing_class") or kwargs.get("tokenizer")
    # A multimodal processor carries its text tokenizer.
    if tok is not None and not callable(getattr(tok, "encode", None)):
        tok = getattr(tok, "tokenizer", None)
    return tok


def _refuse_sharded(args: Any) -> None:
    sharded = None
    if getattr(args, "fsdp", None):
        sharded = "FSDP"
    elif getattr(args, "deepspeed", None):
        with contextlib.suppress(ImportError):
            from transformers.integrations.deepspeed import is_deepspeed_zero3_enabled

            if is_deepspeed_zero3_enabled():
                sharded = "DeepSpeed ZeRO-3"
    if sharded:
        raise ModelError(
            f"AuditCallback cannot audit a {sharded}-sharded model on one rank (its forward "
            "needs every rank); save checkpoints and audit them afterwards with "
            "hopaudit.audit_checkpoints('OUTPUT_DIR/checkpoint-*', data)"
        )


# ------------------------------------------------------------------------------ plain loops
class Auditor:
    """Audits from a plain PyTorch training loop, laid out like :class:`AuditCallback`'s.

    ``auditor.step(model, step)`` audits ``model`` on ``eval_data`` (tokenized once, at the
    first step), saves it to ``<output_dir>/hopaudit/step-<step>/``, records its scalars in
    ``history`` (feed them to your logger: ``wandb.log(auditor.history[-1])``), hands the model
    back in the training mode it was in and returns the :class:`~hopaudit.Audit`. In a
    distributed loop call it on rank 0 only; a DDP wrapper is unwrapped (its forward may
    broadcast buffers) and the audit runs no collective operation. ``on_error``,
    ``keep_stores`` as for :class:`AuditCallback`; ``keep="all"`` (default) or an integer (the
    newest that many audits are kept).
    """

    def __init__(
        self,
        eval_data: Any,
        output_dir: str | os.PathLike[str],
        *,
        on_error: str = "raise",
        keep: str | int = "all",
        keep_stores: bool = False,
        **audit_options: Any,
    ) -> None:
        if output_dir is None:
            raise DataError("output_dir is None; pass the directory the audits go to")
        self.output_dir = Path(output_dir)
        self.on_error = _check_on_error(on_error)
        self.keep = _check_keep(keep)
        self.keep_stores = bool(keep_stores)
        self._runner = _Runner(eval_data, audit_options)
        self.paths: list[Path] = []
        self._live: dict[Path, weakref.ref] = {}  # path -> the Audit saved there, while held
        self.history: list[dict[str, Any]] = []
        self.errors: dict[int, str] = {}

    @property
    def audit_dir(self) -> Path:
        """The directory holding the ``step-<N>`` audits."""
        return self.output_dir / AUDIT_SUBDIR

    def step(self, model: Any, step: int) -> Any:
        """Audit ``model`` at training step ``step`` and return the Audit (None if it failed
        with ``on_error="warn"``)."""
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise DataError(f"step must be a non-negative integer, got {step!r}")
        tokenizer = getattr(_unwrap(model), "hopaudit_tokenizer", None)
        try:
            result = self._runner.run(model, tokenizer, step)
            path = _save_atomically(
                result, self.audit_dir / f"step-{step}", keep_stores=self.keep_stores
            )
            scalars = audit_scalars(result)
        except Exception as exc:  # not KeyboardInterrupt / SystemExit: those stop the loop
            if self.on_error == "raise":
                raise
            self._runner.failed(self.errors, step, exc)
            return None
        self.paths.append(path)
        _hold(self._live, path, result)
        self.history.append({"step": step, "path": str(path), **scalars})
        _rotate(self.paths, None if self.keep in ("all", "limit") else self.keep, self._live)
        return result


# ------------------------------------------------------------------------------ checkpoints
def audit_checkpoints(paths_or_glob: Any, data: Any, **audit_options: Any) -> list[Any]:
    """Audit saved checkpoint directories on the same token sequences, in step order.

    ``paths_or_glob``: a glob (``"out/checkpoint-*"``), a run directory holding
    ``checkpoint-<N>`` folders, one model directory, or a list of these. Every path is checked
    before any audit runs (a path that is not a model directory is named in a
    :class:`~hopaudit.errors.ModelError`). The audits come back sorted by the step parsed from
    ``checkpoint-<N>`` (other names last, in the order given), each with ``options["step"]``.
    ``data`` is tokenized once, with ``tokenizer=`` or the first checkpoint's own tokenizer.
    ``progress`` (default True) shows one bar over the checkpoints.
    """
    from hopaudit.model.loading import load_model
    from hopaudit.progress import tqdm

    show = bool(audit_options.pop("progress", True))
    runner = _Runner(data, audit_options)
    dirs = _checkpoint_dirs(paths_or_glob)
    audits = []
    for path in tqdm(dirs, desc="auditing checkpoints", disable=not show):
        t0 = time.perf_counter()
        model, tokenizer = load_model(str(path), tokenizer=runner.options.get("tokenizer"))
        result = runner.run(model, tokenizer, _step_of(path))
        result.options["checkpoint"] = str(path)
        audits.append(result)
        logger.info("hopaudit: audited %s in %.1f s", path, time.perf_counter() - t0)
        del model
        gc.collect()
    return audits


def _step_of(path: Path) -> int | None:
    match = _CHECKPOINT_STEP.search(path.name)
    return int(match.group(1)) if match else None


def _checkpoint_dirs(spec: Any) -> list[Path]:
    """Expand globs and run directories, check each is a model directory, sort by step."""
    if isinstance(spec, (str, os.PathLike)):
        items = [spec]
    elif isinstance(spec, (list, tuple)):
        items = list(spec)
    else:
        raise DataError(f"expected a path, a glob or a list of paths, got {type(spec).__name__}")
    if not items:
        raise DataError("no checkpoint paths given")
    found: list[Path] = []
    for item in items:
        if not isinstance(item, (str, os.PathLike)):
            raise DataError(f"checkpoint paths must be str or Path, got {type(item).__name__}")
        text = os.path.expanduser(os.fspath(item))
        if glob.has_magic(text):
            matches = sorted(Path(p) for p in glob.glob(text))
            if not matches:
                raise ModelError(f"no checkpoint directory matches {text!r}")
            found.extend(matches)
            continue
        path = Path(text)
        if path.is_dir() and not (path / "config.json").exists():
            inner = sorted(p for p in path.glob("checkpoint-*") if p.is_dir())
            if inner:  # a run's output directory
                found.extend(inner)
                continue
        found.append(path)
    for path in found:
        problem = _not_a_model_dir(path)
        if problem:
            raise ModelError(
                f"{path} is not a model directory: {problem}; expected a checkpoint saved by "
                "Trainer or save_pretrained (config.json and the model weights)"
            )
    unique = list(dict.fromkeys(p.resolve() for p in found))
    order = {p: i for i, p in enumerate(unique)}
    return sorted(unique, key=lambda p: (_step_of(p) is None, _step_of(p) or 0, order[p]))


def _not_a_model_dir(path: Path) -> str | None:
    if not path.exists():
        return "it does not exist"
    if not path.is_dir():
        return "it is a file, not a directory"
    if not (path / "config.json").is_file():
        return "it has no config.json"
    if not any((path / name).is_file() for name in _WEIGHT_FILES) and not any(
        path.glob("*.safetensors")
    ):
        return "it has no model weights (model.safetensors or pytorch_model.bin)"
    return None
