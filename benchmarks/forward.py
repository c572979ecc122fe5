"""SmolLM2's forward against this CPU's matrix-multiply peak, where its time goes, and the
variants that could close the gap, side by side in one run.

In the dtype the audit computes in (bfloat16 autocast where the CPU multiplies bfloat16
natively, float32 otherwise; the script prints which and why), alternated round by round over
the same pydoc batches, medians:

- ``autocast``: the model under autocast alone (its own attention implementation);
- ``sdpa`` / ``eager``: the attention implementation switched (``config._attn_implementation``);
- ``bf16_weights``: the weights cast to bfloat16 once, no autocast (native CPUs only);
- ``audit``: as the audit's capture runs it, autocast with the weights cast once
  (``model.precision.cast_weights_once``);
- ``head_only``: autocast with the LM head's weight cast once and the blocks' cast at each call
  (what the capture does where the memory allows no more copies);

every variant on the heap the capture keeps (``heap.kept_heap``: large blocks reused, not
mapped and faulted in anew; ``benchmarks/heap.py`` times that against glibc's default);
- ``compiled``: the same with ``compile=True`` (each block through ``torch.compile``,
  ``model.compiled.compiled_blocks``); its first call, the compilation, is timed apart;
- the matrix-multiply peak: each distinct shape of the model's Linear layers at the batch's
  tokens, in the same dtype and threads, repeated for about 2e11 operations and timed in the
  same rounds; the peak is the best rate of any (each shape's fastest round).

Prints the CPU and load average, and::

    compute_dtype=  why=                       the audit's dtype and the reason
    flops_per_token=                           2 x weights in matmuls + attention scores
    matmul_gflops_<tokens>x<in>x<out>=          each product's rate
    matmul_peak_gflops=                        the best of them
    <variant>_tokens_per_second=               median over rounds
    forward_peak_fraction=                     audit tokens/s x flops/token / peak
    forward_peak_fraction_compiled=            the same, compiled
    products_only_tokens_per_second=           the Linear products alone, each shape at its rate
    forward_products_fraction[_compiled]=      the share of the forward those products are
    compile_seconds=                           the compiled variant's first run less a later one
    compiled_over_audit=                       compile=True's speed-up of the forward
    audit_over_head_only=                      the blocks' copies' speed-up of the forward
    <variant>_over_autocast=                   tokens/s ratios (above 1: faster)
    profile_share_<op>=                        self-CPU share of the top ops in one batch, as
                                               the audit runs it; profile_compiled_share_<op>=
                                               the same, compiled

Usage: ``python benchmarks/forward.py [--rounds 3] [--sequences 64] [--batch 16]``.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import copy
import os
import statistics
import sys
import time
from pathlib import Path

import torch

_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))

SEQ_LEN = 64
# each product repeated to about this many operations: a tenth of a second or more, timed as
# steadily as a forward variant (its outputs dropped at once, never held in a list)
MATMUL_FLOP_TARGET = 2e11


def flops_per_token(model, seq_len: int) -> float:
    """2 x the weights of every Linear (the LM head included) plus the attention products
    (QK^T and AV: 4 x seq_len/2 x hidden per layer, causal on average)."""
    linear = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    cfg = model.config
    return 2.0 * linear + 4.0 * cfg.num_hidden_layers * (seq_len / 2) * cfg.hidden_size


def product_shapes(model) -> list[tuple[int, int]]:
    """The distinct (in, out) shapes of the model's Linear layers: the products its forward
    runs, whose best rate on this CPU is the peak the forward is held to."""
    return sorted({tuple(m.weight.shape[::-1]) for m in model.modules()
                   if isinstance(m, torch.nn.Linear)})  # fmt: skip


def product(tokens: int, k_in: int, n_out: int, dtype):
    """(tokens x k_in) @ (k_in x n_out), repeated to about MATMUL_FLOP_TARGET operations."""
    a = torch.randn(tokens, k_in, dtype=dtype)
    b = torch.randn(k_in, n_out, dtype=dtype)
    reps = max(1, round(MATMUL_FLOP_TARGET / (2.0 * tokens * k_in * n_out)))

    def run() -> None:
        for _ in range(reps):
            torch.mm(a, b)

    run.reps = reps
    return run


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--sequences", type=int, default=64)
    ap.add_argument("--batch", type=int, default=16)
    args = ap.parse_args()
    import hopaudit
    from hopaudit.data import prepare_data
    from hopaudit.heap import kept_heap
    from hopaudit.model.compiled import compiled_blocks
    from hopaudit.model.precision import (
        cast_weights_once,
        compute_dtype,
        cpu_description,
        cpu_lines,
    )

    desc = cpu_description()
    print(*cpu_lines(), sep="\n")  # which machine the lines come from
    print(f"loadavg_start={os.getloadavg()[0]:.2f}", flush=True)
    model, tok = hopaudit.zoo.smollm2()
    model.eval()
    ids = prepare_data(
        hopaudit.zoo.corpus("pydoc"), tok, max_length=SEQ_LEN, max_sequences=args.sequences
    ).input_ids
    dtype = compute_dtype(model, torch.device("cpu"), "auto") or torch.float32
    why = "native bfloat16 (AVX512-BF16 or AMX)" if desc["native_bf16"] else "no native bfloat16"
    print(f"compute_dtype={str(dtype).removeprefix('torch.')} why={why!r}")
    fpt = flops_per_token(model, ids.shape[1])
    print(f"flops_per_token={fpt:.4g}")
    amp = (
        (lambda: torch.autocast("cpu", dtype=torch.bfloat16))
        if dtype == torch.bfloat16
        else contextlib.nullcontext
    )

    held = contextlib.ExitStack()  # a capture casts and compiles once for its whole pass
    # every variant on the heap a capture keeps (heap.py; benchmarks/heap.py times the default)
    heap = held.enter_context(kept_heap())

    def forward(m, ctx):
        def run() -> None:
            with torch.inference_mode(), ctx():
                for s in range(0, len(ids), args.batch):
                    m(input_ids=ids[s : s + args.batch], use_cache=False)
                    heap.batch_done()

        return run

    def as_audit(compiled: bool, budget: int | None = None):
        """A copy of the model as the capture runs it: the weights cast once (for the whole
        run, as for a capture's whole pass; the head's, then the blocks' within ``budget``),
        the blocks compiled or not, under autocast."""
        m = copy.deepcopy(model)
        cast = dtype if dtype == torch.bfloat16 else None
        first = [m.get_output_embeddings()]
        held.enter_context(cast_weights_once(m, cast, budget=budget, first=first))
        held.enter_context(compiled_blocks(list(m.model.layers), compiled))
        return m

    audit_model, compiled_model = as_audit(False), as_audit(True)
    variants = {"autocast": forward(model, amp)}
    variants["audit"] = forward(audit_model, amp)
    variants["head_only"] = forward(as_audit(False, budget=0), amp)
    variants["compiled"] = forward(compiled_model, amp)
    own = getattr(model.config, "_attn_implementation", None)
    print(f"attn_implementation={own}")
    for impl in ("sdpa", "eager"):
        if impl != own:
            other = copy.deepcopy(model)
            other.config._attn_implementation = impl
            variants[impl] = forward(other, amp)
    if dtype == torch.bfloat16:
        variants["bf16_weights"] = forward(
            copy.deepcopy(model).to(torch.bfloat16), contextlib.nullcontext
        )
    tokens = args.batch * ids.shape[1]
    shapes = product_shapes(model)
    for i, (k_in, n_out) in enumerate(shapes):
        variants[f"matmul_{i}"] = product(tokens, k_in, n_out, dtype)
    for name, fn in variants.items():
        first = timed(fn)  # warm-up; the compiled variant's compiles
        if name == "compiled":
            compile_seconds = first - timed(fn)
    print(f"compile_seconds={compile_seconds:.1f}")
    got: dict[str, list[float]] = {k: [] for k in variants}
    names = list(variants)
    for r in range(args.rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            got[name].append(timed(variants[name]))
        print(
            "# round " + str(r) + ": " + ", ".join(f"{k} {v[-1]:.2f} s" for k, v in got.items()),
            flush=True,
        )
    med = {k: statistics.median(v) for k, v in got.items()}
    rates = {}  # a peak is the best a product reached: its fastest round
    for i, (k_in, n_out) in enumerate(shapes):
        med.pop(f"matmul_{i}")
        flops = variants[f"matmul_{i}"].reps * 2.0 * tokens * k_in * n_out
        rates[(k_in, n_out)] = flops / min(got[f"matmul_{i}"])
        print(f"matmul_gflops_{tokens}x{k_in}x{n_out}={rates[(k_in, n_out)] / 1e9:.1f}")
    peak = max(rates.values())
    print(f"matmul_peak_gflops={peak / 1e9:.1f}")
    n_tok = ids.numel()
    tps = {k: n_tok / v for k, v in med.items()}
    for k, v in tps.items():
        print(f"{k}_tokens_per_second={v:.1f}")
    print(f"forward_peak_fraction={tps['audit'] * fpt / peak:.3f}")
    print(f"forward_peak_fraction_compiled={tps['compiled'] * fpt / peak:.3f}")
    # the products alone, each at its own shape's measured rate: the time a forward cannot
    # go below without faster products (the LM head's wide product runs far below the peak)
    counts = collections.Counter(
        tuple(m.weight.shape[::-1]) for m in model.modules() if isinstance(m, torch.nn.Linear)
    )
    per_token = sum(c * 2.0 * k * n / rates[(k, n)] for (k, n), c in counts.items())
    print(f"products_only_tokens_per_second={1 / per_token:.1f}")
    print(f"forward_products_fraction={tps['audit'] * per_token:.3f}")
    print(f"forward_products_fraction_compiled={tps['compiled'] * per_token:.3f}")
    print(f"compiled_over_audit={tps['compiled'] / tps['audit']:.3f}")
    print(f"audit_over_head_only={tps['audit'] / tps['head_only']:.3f}")
    for k in tps:
        if k != "autocast":
            print(f"{k}_over_autocast={tps[k] / tps['autocast']:.3f}")
    from torch.profiler import ProfilerActivity, profile

    for label, m in (("profile", audit_model), ("profile_compiled", compiled_model)):
        with torch.inference_mode(), amp(), profile(activities=[ProfilerActivity.CPU]) as prof:
            m(input_ids=ids[: args.batch], use_cache=False)
        events = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)
        total = sum(e.self_cpu_time_total for e in events)
        for e in events[:8]:
            key = e.key.replace("::", "_").replace(" ", "_")
            print(f"{label}_share_{key}={e.self_cpu_time_total / total:.3f}")
    held.close()
    print(f"loadavg_end={os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
