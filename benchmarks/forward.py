"""SmolLM2's forward against this CPU's matrix-multiply peak, where its time goes, and the
variants that could close the gap, side by side in one run.

In the dtype the audit computes in (bfloat16 autocast where the CPU multiplies bfloat16
natively, float32 otherwise; the script prints which and why), alternated round by round over
the same pydoc batches, medians:

- ``autocast``: the model as the audit runs it (its own attention implementation);
- ``sdpa`` / ``eager``: the attention implementation switched (``config._attn_implementation``);
- ``bf16_weights``: the weights cast to bfloat16 once, no autocast (native CPUs only);
- the matrix-multiply peak: a (tokens x 576) @ (576 x 1536) product in the same dtype and
  threads, timed in the same rounds.

Prints the CPU and load average, and::

    compute_dtype=  why=                       the audit's dtype and the reason
    flops_per_token=                           2 x weights in matmuls + attention scores
    matmul_peak_gflops=                        the product above, median
    <variant>_tokens_per_second=               median over rounds
    forward_peak_fraction=                     autocast tokens/s x flops/token / peak
    <variant>_over_autocast=                   tokens/s ratios (above 1: faster)
    profile_share_<op>=                        self-CPU share of the top ops in one batch

Usage: ``python benchmarks/forward.py [--rounds 3] [--sequences 64] [--batch 16]``.
"""

from __future__ import annotations

import argparse
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


def flops_per_token(model, seq_len: int) -> float:
    """2 x the weights of every Linear (the LM head included) plus the attention products
    (QK^T and AV: 4 x seq_len/2 x hidden per layer, causal on average)."""
    linear = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    cfg = model.config
    return 2.0 * linear + 4.0 * cfg.num_hidden_layers * (seq_len / 2) * cfg.hidden_size


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
    from hopaudit.model.precision import compute_dtype, cpu_description

    desc = cpu_description()
    for key, value in desc.items():
        print(f"{key}={value!r}" if key == "cpu" else f"{key}={value}")
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

    def forward(m, ctx):
        def run() -> None:
            with torch.inference_mode(), ctx():
                for s in range(0, len(ids), args.batch):
                    m(input_ids=ids[s : s + args.batch], use_cache=False)

        return run

    variants = {"autocast": forward(model, amp)}
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
    a = torch.randn(tokens, model.config.hidden_size, dtype=dtype)
    b = torch.randn(model.config.hidden_size, model.config.intermediate_size, dtype=dtype)
    variants["matmul"] = lambda: [torch.mm(a, b) for _ in range(20)]
    for fn in variants.values():
        fn()  # warm-up
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
    peak = 20 * 2.0 * a.shape[0] * a.shape[1] * b.shape[1] / med.pop("matmul")
    print(f"matmul_peak_gflops={peak / 1e9:.1f}")
    n_tok = ids.numel()
    tps = {k: n_tok / v for k, v in med.items()}
    for k, v in tps.items():
        print(f"{k}_tokens_per_second={v:.1f}")
    print(f"forward_peak_fraction={tps['autocast'] * fpt / peak:.3f}")
    for k in tps:
        if k != "autocast":
            print(f"{k}_over_autocast={tps[k] / tps['autocast']:.3f}")
    from torch.profiler import ProfilerActivity, profile

    with torch.inference_mode(), amp(), profile(activities=[ProfilerActivity.CPU]) as prof:
        model(input_ids=ids[: args.batch], use_cache=False)
    events = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)
    total = sum(e.self_cpu_time_total for e in events)
    for e in events[:8]:
        print(f"profile_share_{e.key.replace('::', '_')}={e.self_cpu_time_total / total:.3f}")
    print(f"loadavg_end={os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
