"""``audit(..., engine="ray")``: the same audit with Ray doing the capture and the per-layer work.

Imported only for ``engine="ray"`` (``pip install "hopaudit[ray]"``). Ray schedules everything;
this module only says what runs where (docs/scale.md):

- **Capture**: a Ray Data ``map_batches`` over token batches (one dataset row per batch, the
  same batches as ``engine="local"``), run by an actor pool of model replicas (``num_gpus=1``
  per actor where the cluster has GPUs, CPUs otherwise). Each actor runs
  :func:`hopaudit.capture.capture` on its batch into a fresh shard (an activation store in
  ``<store>.shards/``, a path every node must read) and returns the shard's name with the
  per-sequence losses. Actors are restarted and their batches retried when they die; a batch
  that ran twice leaves an unreferenced shard, so only the shards named by the returned rows
  are assembled (in batch order) and every shard is deleted afterwards: no row lost or doubled.
- **Measuring**: one Ray task per layer (:func:`hopaudit.measure.measure`, then the layer's
  index and graph written to ``<store>.layers/``), with ``memory`` requested from the layer's
  size and retried when its worker dies. UMAP layouts are tasks too.
- **Assembly**: the driver builds the same :class:`~hopaudit.result.Audit` as the local engine.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import pickle
import shutil
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from hopaudit.capture.batching import choose_batch_size, layer_bytes, model_device
from hopaudit.capture.forward import capture, storage_dtypes
from hopaudit.capture.result import CaptureResult
from hopaudit.capture.store import ActivationStore
from hopaudit.engines.memory import PeakTracker, peak_rss, reset_peak
from hopaudit.errors import CaptureError, HopauditError, SearchError
from hopaudit.layer.embedding import embed_layer
from hopaudit.layer.files import LayerFiles
from hopaudit.layer.patterns import layer_patterns, patterns_of

__all__ = [
    "RAY_OPTION_KEYS",
    "RayEngine",
    "capture_ray",
    "check_ray",
    "embed_layers",
    "measure_layers",
]

#: Keys ``audit(ray_options=...)`` accepts (docs/scale.md).
RAY_OPTION_KEYS = ("concurrency", "num_cpus", "num_gpus", "max_retries", "before_batch")
#: Bytes a measuring task needs per float32 value of its layer: the normalized copy, the
#: index's own copy, and the search's temporaries (the RSS ratio benchmarks/scale.py prints).
MEMORY_PER_VALUE = 4 * 3
_MEMORY_FLOOR = 256 << 20  # Python, numpy and hnswlib themselves


def check_ray(ray_options: Any) -> None:
    """Ray importable and the options understood, before any forward pass."""
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError as exc:
        raise HopauditError(
            f"engine='ray' needs Ray Data ({exc}); install it with pip install 'hopaudit[ray]'"
        ) from None
    if ray_options is None:
        return
    if not isinstance(ray_options, dict):
        raise HopauditError(f"ray_options must be a dict, got {type(ray_options).__name__}")
    unknown = sorted(set(ray_options) - set(RAY_OPTION_KEYS))
    if unknown:
        raise HopauditError(f"ray_options: unknown keys {unknown}; known: {RAY_OPTION_KEYS}")
    conc = ray_options.get("concurrency")
    if conc is not None and (isinstance(conc, bool) or not isinstance(conc, int) or conc < 1):
        raise HopauditError(f"ray_options['concurrency'] must be a positive int, got {conc!r}")


def check_resources(ray_options: dict | None, cluster: list[dict]) -> None:
    """Refuse, before anything is sent, a request no node can meet: ``num_cpus`` or
    ``num_gpus`` per actor above every alive node's, or ``concurrency`` actors of it above the
    cluster's total (Ray would wait for them forever). ``cluster``: each alive node's
    resources (``ray.nodes()``'s ``Resources``)."""
    opts = ray_options or {}
    asked = {"CPU": opts.get("num_cpus"), "GPU": opts.get("num_gpus")}
    for key, value in asked.items():
        name = f"num_{key.lower()}s"
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0
        ):
            raise HopauditError(f"ray_options[{name!r}] must be a number >= 0, got {value!r}")
    have = {key: [float(n.get(key, 0)) for n in cluster] for key in asked}
    conc = opts.get("concurrency") or 1
    for key, value in asked.items():
        if not value:
            continue
        name = f"num_{key.lower()}s"
        most, total = max(have[key], default=0.0), sum(have[key])
        if value > most or value * conc > total:
            per_node = ", ".join(f"{h:g}" for h in have[key]) or "none"
            raise HopauditError(
                f"ray_options asks {name}={value:g} per actor (x {conc} actors) but the Ray "
                f"cluster has {key} {per_node} on its {len(cluster)} nodes ({total:g} in all): "
                f"no node can run it and Ray would wait forever; ask for at most {most:g}"
                + ("" if conc == 1 else f" per actor and {total:g} in all")
            )


#: Ray's setting (read by the raylet it starts, in Ray's own spelling) for its workers' niceness.
_NICENESS = "RAY_worker_niceness"


def _ray() -> Any:
    """Ray, started quiet when hopaudit starts it: warnings and errors only from Ray's own
    loggers, the workers' output left in Ray's log files (``/tmp/ray/session_latest/logs``)
    rather than interleaved with hopaudit's bars, and Ray Data's progress bars off (hopaudit
    draws its own). A Ray the caller started (``ray.init(...)`` first, e.g. to join a cluster)
    keeps the caller's settings."""
    import ray
    import ray.data

    if not ray.is_initialized():
        # Ray's notice that it turned token authentication on (its safe default) has nothing
        # for the user to do; its warning when authentication is off still shows
        setup = logging.getLogger("ray._private.authentication.authentication_token_setup")
        notice = _DropMessage("Token authentication is enabled for this Ray cluster")
        setup.addFilter(notice)
        # Ray runs its workers at niceness 15 by default; here the workers do the audit's work,
        # and on a busy machine they would get a sliver of the CPUs the driver waits on
        nice = _NICENESS not in os.environ
        if nice:
            os.environ[_NICENESS] = "0"
        try:
            ray.init(  # a local Ray; call ray.init(address="auto") first to join a cluster
                logging_level=logging.WARNING,
                log_to_driver=False,
                include_dashboard=False,
            )
        except Exception as exc:  # Ray raises a bare Exception when its raylet is late
            if "timed out during startup" not in str(exc):
                raise
            ray.shutdown()
            raise HopauditError(
                "a local Ray did not start: Ray waits a fixed 30 s for its processes to "
                "register, which a busy machine can miss. Try again when the machine is less "
                "loaded, start Ray yourself (ray start --head, then ray.init(address='auto') "
                "before audit), or use engine='local' (faster for audits of minutes: "
                "docs/scale.md, 'When Ray pays')"
            ) from exc
        finally:
            setup.removeFilter(notice)
            if nice:
                os.environ.pop(_NICENESS, None)
    quiet_ray_data()
    return ray


class _DropMessage(logging.Filter):
    """Drops the log records whose message starts with ``prefix``."""

    def __init__(self, prefix: str) -> None:
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.getMessage()).startswith(self.prefix)


def quiet_ray_data() -> None:
    """Ray Data's progress bars and per-operator progress logs off, its logger at warnings."""
    import ray.data

    ctx = ray.data.DataContext.get_current()
    for flag in ("enable_progress_bars", "enable_operator_progress_bars"):
        if hasattr(ctx, flag):
            setattr(ctx, flag, False)
    if hasattr(ctx, "enable_progress_bar_name_truncation"):
        ctx.enable_progress_bar_name_truncation = True
    for name in ("ray.data", "ray.data._internal.execution.streaming_executor"):
        logging.getLogger(name).setLevel(logging.WARNING)


# ------------------------------------------------------------------------------ capture
class _CaptureActor:
    """One model replica: captures whole token batches into shards."""

    def __init__(self, refs: list, options: dict) -> None:
        import ray
        import torch

        reset_peak()  # this actor's peak: its model replica and every batch it captures
        self.model, self.tokens = ray.get(refs[0]), ray.get(refs[1])
        if options["num_gpus"] and torch.cuda.is_available():
            self.model.to("cuda")
        modules = dict(self.model.named_modules())
        self.blocks = [(p, modules[p]) for p in options["blocks"]]
        final = options["final"]
        self.final = None if final is None else (final, modules[final])
        self.options = options

    def __call__(self, batch: dict) -> dict:
        from hopaudit.data.prepare import TokenData

        o = self.options
        start, stop = int(batch["start"][0]), int(batch["stop"][0])
        if o["before_batch"] is not None:
            o["before_batch"](start)
        tok = self.tokens
        sub = TokenData(
            input_ids=tok.input_ids[start:stop],
            attention_mask=tok.attention_mask[start:stop],
            texts=tok.texts[start:stop],
            pad_token_id=tok.pad_token_id,
        )
        shard = Path(o["shards"]) / f"batch_{start:010d}_{uuid.uuid4().hex}"
        cap = capture(
            self.model,
            sub,
            self.blocks,
            final=self.final,
            positions=o["positions"],
            store_dtype=o["store_dtype"],
            store=shard,
            batch_size=stop - start,
            progress=False,
            min_k=o["min_k"],
            autocast=o["autocast"],
            extraction=o["extraction"],
            compile=o.get("compile", False),
        )
        fields = {
            f.name: getattr(cap, f.name) for f in dataclasses.fields(cap) if f.name != "store"
        }
        fields["row_sequence"] = fields["row_sequence"] + start
        payload = pickle.dumps({"shard": str(shard), "fields": fields, "peak_rss": peak_rss()})
        return {"start": np.array([start]), "payload": np.array([payload], dtype=object)}


def capture_ray(
    model: Any,
    tokens: Any,
    block_list: list,
    *,
    final: Any,
    positions: Any,
    store_dtype: Any,
    store: str,
    batch_size: int | None,
    progress: bool,
    autocast: str,
    ray_options: dict | None,
    min_k: float = 0.2,
    peak: PeakTracker | None = None,
    extraction: tuple[int, int] | None = None,
    compile: bool = False,
) -> CaptureResult:
    """The capture of ``tokens`` by a Ray Data actor pool, assembled into a store at ``store``
    (rows in the same order as the local engine). Shards are always deleted; on a failure that
    retries cannot fix the store is removed too and one :class:`CaptureError` says why."""
    ray = _ray()

    opts = dict(ray_options or {})
    t0 = time.perf_counter()
    n_seq = tokens.num_sequences
    device = model_device(model)
    if batch_size is None:
        # the local engine's batches: logits within one layer of the whole audit's rows
        one_layer = layer_bytes(model, tokens, positions)
        batch_size = choose_batch_size(model, tokens.seq_len, n_seq, device, one_layer)
    gpus = ray.cluster_resources().get("GPU", 0)
    num_gpus = opts.get("num_gpus", 1 if gpus else 0)
    # one actor per GPU; on CPUs half of them: Ray Data keeps part of the cluster for its own
    # work, and an actor pool asking for every CPU waits for it forever
    cpus = int(ray.cluster_resources().get("CPU", 1))
    concurrency = opts.get("concurrency") or max(1, min(int(gpus) if gpus else cpus // 2, n_seq))
    shards = Path(str(store) + ".shards")
    if shards.exists() or shards.is_symlink():
        raise CaptureError(
            f"{shards} exists (left by an interrupted Ray capture?); remove it or give another "
            "store path"
        )
    shards.mkdir(parents=True)
    layer_names = [p for p, _ in block_list] + ([] if final is None else ["final"])
    st = None
    try:
        # the store first, as the local engine does: a bad path fails before any forward pass
        st = ActivationStore(layer_names, dtype=storage_dtypes(store_dtype)[2], path=store)
        cpu_model = model.to("cpu") if str(device) != "cpu" else model
        refs = [ray.put(cpu_model), ray.put(tokens)]
        if str(device) != "cpu":
            model.to(device)
        options = {
            "blocks": [p for p, _ in block_list],
            "final": None if final is None else final[0],
            "positions": positions,
            "store_dtype": store_dtype,
            "shards": str(shards),
            "min_k": min_k,
            "autocast": autocast,
            "extraction": extraction,
            "compile": compile,
            "num_gpus": num_gpus,
            "before_batch": opts.get("before_batch"),
        }
        batches = [
            {"start": s, "stop": min(n_seq, s + batch_size)} for s in range(0, n_seq, batch_size)
        ]
        ds = ray.data.from_items(batches).map_batches(
            _CaptureActor,
            batch_size=1,
            fn_constructor_args=(refs, options),
            compute=ray.data.ActorPoolStrategy(size=concurrency),
            num_gpus=num_gpus,
            num_cpus=opts.get("num_cpus", 0 if num_gpus else 1),
        )  # Ray Data restarts a dead actor and retries its batch (max_restarts=-1 by default)
        try:
            rows = ds.take_all()
        except Exception as exc:  # Ray wraps the worker's error; one clear error instead
            raise CaptureError(
                f"the capture under Ray failed after its retries ({type(exc).__name__}: "
                f"{_first_line(exc)}); its shards were removed. Check that every node can "
                f"write {shards.parent} and load the model, or use engine='local'"
            ) from exc
        done = {}
        for row in rows:
            done.setdefault(int(row["start"]), pickle.loads(row["payload"]))
        missing = [b["start"] for b in batches if b["start"] not in done]
        if missing:
            raise CaptureError(f"the capture under Ray returned no rows for batches {missing}")
        parts = [done[b["start"]] for b in batches]
        if peak is not None:
            peak.worker("capture (Ray actor)", max(p["peak_rss"] for p in parts))
        for part in parts:
            shard = ActivationStore.open(part["shard"])
            for name in layer_names:
                arr = shard.get(name)
                for s in range(0, arr.shape[0], 65536):
                    st.append(name, np.asarray(arr[s : s + 65536]))
        st.finalize()
    except BaseException:
        if st is not None:
            st.discard()
        raise
    finally:
        shutil.rmtree(shards, ignore_errors=True)
    return _join_captures(st, layer_names, [p["fields"] for p in parts], t0, batch_size)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return next((line for line in reversed(text) if line.strip()), type(exc).__name__)[:400]


def _join_captures(
    st: ActivationStore, names: list[str], parts: list[dict], t0: float, batch_size: int
) -> CaptureResult:
    """One CaptureResult from the batches' fields, in batch order."""

    def cat(key: str) -> np.ndarray | None:
        vals = [p[key] for p in parts]
        return None if any(v is None for v in vals) else np.concatenate(vals)

    n_pred = sum(int(p["n_predicted"]) for p in parts)
    ce = None
    if all(p["cross_entropy"] is not None for p in parts):
        weighted = sum(p["cross_entropy"] * p["n_predicted"] for p in parts if p["n_predicted"])
        ce = float(weighted / n_pred) if n_pred else math.nan
    n_tokens = sum(int(p["n_tokens"]) for p in parts)
    seconds = time.perf_counter() - t0
    overflow: dict[str, int] = {}
    for p in parts:
        for k, v in p["overflow"].items():
            overflow[k] = overflow.get(k, 0) + int(v)
    notes = [p["loss_note"] for p in parts if p["loss_note"]]
    return CaptureResult(
        store=st,
        layer_names=list(names),
        row_sequence=cat("row_sequence").astype(np.int64),
        row_position=cat("row_position").astype(np.int64),
        nonfinite={n: sum(int(p["nonfinite"][n]) for p in parts) for n in names},
        seq_nll=cat("seq_nll"),
        seq_min_k=cat("seq_min_k"),
        seq_top1=cat("seq_top1"),
        seq_min_k_pp=cat("seq_min_k_pp"),
        seq_n_predicted=cat("seq_n_predicted"),
        seq_extracted_tokens=cat("seq_extracted_tokens"),
        cross_entropy=ce,
        n_tokens=n_tokens,
        seconds=seconds,
        tokens_per_second=n_tokens / seconds if seconds > 0 else math.inf,
        loss_note=notes[0] if notes else None,
        n_predicted=n_pred,
        batch_size=batch_size,
        positions=parts[0]["positions"],
        min_k=float(parts[0]["min_k"]),
        overflow=overflow,
        compute_dtype=parts[0]["compute_dtype"],
        compiled=parts[0].get("compiled"),
    )


# ---------------------------------------------------------------------------- measuring
def _measure_task(
    store: str, held: str | None, name: str, i: int, files: str, kwargs: dict, graph_dtype: str
) -> dict:
    """One layer on a Ray worker: measure, write the index and graph, return the scalars and
    the worker's peak resident set during this task."""
    from hopaudit.layer.measuring import measure

    reset_peak()  # a worker runs many tasks: count this one's
    st = ActivationStore.open(store)
    queries = None if held is None else ActivationStore.open(held).get(name)
    try:
        rep = measure(st.get(name), queries, **kwargs)
    except SearchError as exc:
        return {"skipped": str(exc), "peak_rss": peak_rss()}
    lf = LayerFiles(files)
    lf.put_graph(i, rep.knn_ids, rep.knn_dists, graph_dtype)
    lazy = lf.put_index(i, rep.index, lambda: None)
    rep.index = rep.knn_ids = rep.knn_dists = None
    return {"report": rep, "index_meta": lazy.meta, "peak_rss": peak_rss()}


def layer_memory(rows: int, hidden: int) -> int:
    """Bytes a measuring task asks Ray for: the layer's float32 values times
    :data:`MEMORY_PER_VALUE`, plus a floor for the interpreter."""
    return int(rows) * int(hidden) * MEMORY_PER_VALUE + _MEMORY_FLOOR


def measure_layers(
    stored: CaptureResult,
    held: CaptureResult | None,
    layer_files: LayerFiles,
    kwargs: dict,
    graph_dtype: str,
    *,
    progress: bool,
    ray_options: dict | None,
    peak: PeakTracker | None = None,
) -> tuple[dict, dict]:
    """Every layer measured by its own Ray task; (reports, skipped) as the local loop gives."""
    from hopaudit.progress import tqdm

    ray = _ray()
    opts = dict(ray_options or {})
    node_memory = max(
        (n["Resources"].get("memory", 0) for n in ray.nodes() if n.get("Alive")), default=0
    )
    task = ray.remote(_measure_task)
    futures = {}
    names = stored.layer_names
    for i, name in enumerate(names):
        rows, hidden = stored.store.shape(name)
        need = layer_memory(rows, hidden)
        if node_memory:
            need = min(need, int(node_memory))  # a request no node can meet never runs
        futures[name] = task.options(
            memory=need, num_cpus=1, max_retries=opts.get("max_retries", 3)
        ).remote(
            str(stored.store.path),
            None if held is None else str(held.store.path),
            name,
            i,
            str(layer_files.path),
            kwargs,
            graph_dtype,
        )
    reports, skipped = {}, {}
    for i, name in enumerate(tqdm(names, desc="measuring layers (ray)", disable=not progress)):
        try:
            out = ray.get(futures[name])
        except Exception as exc:
            for f in futures.values():
                ray.cancel(f, force=True)
            raise HopauditError(
                f"measuring layer {name!r} under Ray failed after its retries "
                f"({type(exc).__name__}: {_first_line(exc)})"
            ) from exc
        if peak is not None:
            peak.worker(f"measuring {name} (Ray task)", out["peak_rss"])
        if "skipped" in out:
            skipped[name] = out["skipped"]
            continue
        rep = out["report"]
        rep.knn_ids, rep.knn_dists = layer_files.adopt_graph(i)
        rep.index = layer_files.adopt_index(i, out["index_meta"], patterns_of(stored, name, rep))
        reports[name] = rep
    return reports, skipped


@dataclasses.dataclass
class _Kind:
    kind: str


def _embed_task(rep: Any, store: str, name: str, row_sequence: np.ndarray, *args: Any) -> Any:
    reset_peak()
    emb = embed_layer(rep, ActivationStore.open(store).get(name), row_sequence, *args)
    return emb, peak_rss()


def embed_layers(
    stored: CaptureResult,
    reports: dict,
    chosen: list[str],
    max_points: int,
    seed: int,
    peak: PeakTracker | None = None,
) -> dict:
    """One Ray task per UMAP layout; the same layouts as the local engine's loop."""
    ray = _ray()
    task = ray.remote(_embed_task).options(num_cpus=1, max_retries=3)
    seq_ref = ray.put(stored.row_sequence)
    futures = {}
    for name in chosen:
        rep = reports[name]
        light = dataclasses.replace(
            rep,
            index=_Kind(rep.index.kind),
            knn_ids=np.asarray(rep.knn_ids),
            knn_dists=np.asarray(rep.knn_dists),
        )
        futures[name] = task.remote(
            light, str(stored.store.path), name, seq_ref, max_points, seed, None
        )
    out = {}
    for name, f in futures.items():
        out[name], worker_peak = ray.get(f)
        if peak is not None:
            peak.worker(f"UMAP {name} (Ray task)", worker_peak)
    return out


# ----------------------------------------------------------------------------- assembly
def to_memory(stored: CaptureResult, reports: dict) -> None:
    """For ``store=None``: the store, graphs and indexes read into memory (as the local engine
    keeps them), so the temporary folder can go."""
    from hopaudit.search.backends import ExactIndex

    ram = ActivationStore(stored.layer_names, dtype=stored.store.dtype, path=None)
    for name in stored.layer_names:
        ram.append(name, np.array(stored.store.get(name)))
    ram.finalize()
    stored.store = ram
    for name, rep in reports.items():
        rep.knn_ids, rep.knn_dists = np.array(rep.knn_ids), np.array(rep.knn_dists)
        if rep.index.kind == "exact":
            exact = ExactIndex(rep.index.dim)
            exact.add(layer_patterns(ram, name, rep.valid_rows, rep.normalize))
            rep.index = exact
        else:
            rep.index = rep.index.open()


class TemporaryRoot:
    """A private folder for ``store=None`` under Ray (one machine: every node reads /tmp);
    ``discard`` removes it (the audit keeps everything in memory by then)."""

    def __init__(self) -> None:
        self.path = Path(tempfile.mkdtemp(prefix="hopaudit-ray-"))
        self.store = str(self.path / "store")

    def discard(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


# ------------------------------------------------------------------------------- engine
class RayEngine:
    """engine="ray": Ray Data captures, one Ray task per layer measures (docs/scale.md)."""

    name = "ray"

    def __init__(self, options: Any) -> None:
        check_ray(options.ray_options)
        self.options = options
        self.ray_options = None if options.ray_options is None else dict(options.ray_options)

    def check(self, stacks: list, tokens: Any = None) -> None:
        from hopaudit.data.types import TokenData
        from hopaudit.errors import DataError

        ray = _ray()
        alive = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
        check_resources(self.ray_options, alive)

        if len(stacks) > 1:
            raise DataError(
                "engine='ray' audits models of one stack of blocks (decoders, encoders); this "
                "encoder-decoder's two stacks are audited with engine='local'"
            )
        if tokens is not None and not isinstance(tokens, TokenData):
            raise DataError(
                "engine='ray' takes token data (texts or token ids); images and audio are "
                "audited with engine='local'"
            )

    def store_root(self, store: Any) -> tuple[Any, Any]:
        """Ray's workers read the store from disk: a scratch folder when ``store=None``."""
        if store is not None:
            return store, None
        scratch = TemporaryRoot()
        return scratch.store, scratch

    def capture(
        self,
        model: Any,
        tokens: Any,
        stacks: list,
        *,
        where: Any,
        store_dtype: Any,
        peak: Any,
        extraction: tuple[int, int] | None = None,
    ) -> Any:
        o = self.options
        return capture_ray(
            model,
            tokens,
            [b for st in stacks for b in st.blocks],
            final=stacks[-1].final,
            positions=o.positions,
            store_dtype=store_dtype,
            store=where,
            batch_size=o.batch_size,
            progress=o.progress,
            autocast=o.autocast,
            ray_options=self.ray_options,
            peak=peak,
            extraction=extraction,
            compile=o.compile,
        )

    def measure(
        self, stored: Any, held: Any, layer_files: Any, measure_kwargs: dict, peak: Any
    ) -> tuple[dict, dict]:
        out = measure_layers(
            stored,
            held,
            layer_files,
            {**measure_kwargs, "device": None},
            self.options.graph_dtype,
            progress=self.options.progress,
            ray_options=self.ray_options,
            peak=peak,
        )
        peak.mark("measuring (ray)")
        return out

    def embed(self, stored: Any, reports: dict, names: list[str], device: Any, peak: Any) -> dict:
        o = self.options
        out = embed_layers(stored, reports, names, o.umap_max_points, o.seed, peak)
        peak.mark("UMAP (ray)")
        return out

    def finish(self, stored: Any, held: Any, reports: dict, scratch: Any) -> None:
        """With ``store=None``: everything into memory, as the local engine keeps it, and the
        scratch folder removed."""
        if scratch is None:
            return
        to_memory(stored, reports)
        if held is not None:
            to_memory(held, {})
        scratch.discard()
