"""What everything but the forward costs: ``hopaudit.audit`` over a plain forward of the same
tokens, alternated in one process, in float32 (what a CPU without native bfloat16 computes in:
issue 25's target, at most 1.10) and in the audit's own numerics.

    python benchmarks/non_forward.py [--sequences 1000] [--length 64] [--rounds 3]

SmolLM2 on pydoc prose, as ``end_to_end.py`` runs it (``normalize="none"``, the audit's
defaults otherwise). The plain forward runs as the capture does: its numerics (``autocast``),
its batch size (``choose_batch_size`` of the same data), the weights cast once where it casts
them, its kept heap (hopaudit/heap.py), under ``torch.inference_mode``. Each numerics gets one
warm-up of both on a few sequences (imports, umap's compiled functions, first allocations),
then ``--rounds`` rounds of the two, the order alternating. Prints the CPU and the load
average, then for each numerics ``<n>`` (``float32``, ``auto``)::

    plain_seconds_<n>=          the plain forward, median over rounds
    audit_seconds_<n>=          hopaudit.audit, median over rounds
    audit_stages_<n>=           the audit's own timings (capture, measure, umap, ...) in the
                                round whose audit was the median
    non_forward_share_<n>=      audit / plain: median over rounds of each round's ratio
    capture_over_plain_<n>=     the audit's capture stage / plain, likewise
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))

WARMUP_SEQUENCES = 24
NUMERICS = {"float32": "off", "auto": "auto"}  # printed name -> audit(autocast=)


def plain_forward(model, data, autocast: str, batch: int) -> float:
    """Wall seconds of the forward alone over ``data``, as the capture runs it."""
    import torch

    from hopaudit.heap import kept_heap
    from hopaudit.model.precision import autocast_context, cast_weights_once, compute_dtype

    device = torch.device("cpu")
    amp = compute_dtype(model, device, autocast)
    t = time.perf_counter()
    with (
        torch.inference_mode(),
        autocast_context(amp, device),
        cast_weights_once(model, amp),
        kept_heap() as heap,
    ):
        for start in range(0, data.num_sequences, batch):
            stop = start + batch
            model(input_ids=data.input_ids[start:stop],
                  attention_mask=data.attention_mask[start:stop], use_cache=False)  # fmt: skip
            heap.batch_done()
    return time.perf_counter() - t


def audit_once(model, data, autocast: str) -> tuple[float, dict]:
    """(wall seconds, the audit's own timings) of ``hopaudit.audit`` over ``data``."""
    import hopaudit

    t = time.perf_counter()
    a = hopaudit.audit(model, data, normalize="none", progress=False, autocast=autocast)
    return time.perf_counter() - t, {k: round(v, 2) for k, v in a.timings.items()}


def measure(model, data, autocast: str, rounds: int) -> dict:
    """The lines of one numerics: both warmed up, then ``rounds`` alternated rounds."""
    import torch

    from hopaudit.capture.batching import choose_batch_size, layer_bytes

    seq_len = int(data.input_ids.shape[1])
    batch = choose_batch_size(
        model, seq_len, data.num_sequences, torch.device("cpu"), layer_bytes(model, data, "last")
    )
    warm = data.head(WARMUP_SEQUENCES)
    plain_forward(model, warm, autocast, batch)
    audit_once(model, warm, autocast)
    plains, audits, stages = [], [], []
    for r in range(rounds):
        for kind in ("plain", "audit") if r % 2 == 0 else ("audit", "plain"):
            if kind == "plain":
                plains.append(plain_forward(model, data, autocast, batch))
            else:
                wall, timings = audit_once(model, data, autocast)
                audits.append(wall)
                stages.append(timings)
        print(f"# round {r}: plain {plains[-1]:.2f} s, audit {audits[-1]:.2f} s {stages[-1]}",
              flush=True)  # fmt: skip
    middle = sorted(range(rounds), key=lambda i: audits[i])[(rounds - 1) // 2]
    return {
        "batch": batch,
        "plain_seconds": statistics.median(plains),
        "audit_seconds": statistics.median(audits),
        "audit_stages": stages[middle],
        "non_forward_share": statistics.median(a / p for a, p in zip(audits, plains, strict=True)),
        "capture_over_plain": statistics.median(
            s["capture"] / p for s, p in zip(stages, plains, strict=True)
        ),
    }


def main(argv: list[str] | None = None) -> dict[str, dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sequences", type=int, default=1000)
    ap.add_argument("--length", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--numerics", nargs="+", choices=sorted(NUMERICS), default=list(NUMERICS))
    args = ap.parse_args(argv)

    import hopaudit
    from hopaudit.data import prepare_data
    from hopaudit.model.precision import cpu_lines

    print(*cpu_lines(), sep="\n")  # which machine the lines come from
    print(f"loadavg_start={os.getloadavg()[0]:.2f}", flush=True)
    model, tok = hopaudit.zoo.smollm2()
    data = prepare_data(
        hopaudit.zoo.corpus("pydoc"), tok, max_length=args.length, max_sequences=args.sequences
    )
    print(f"sequences={data.num_sequences} tokens={data.num_tokens}", flush=True)
    out = {}
    for name in args.numerics:
        got = out[name] = measure(model, data, NUMERICS[name], args.rounds)
        print(f"batch_{name}={got['batch']}")
        print(f"plain_seconds_{name}={got['plain_seconds']:.2f}")
        print(f"audit_seconds_{name}={got['audit_seconds']:.2f}")
        print(f"audit_stages_{name}={json.dumps(got['audit_stages'])}")
        print(f"non_forward_share_{name}={got['non_forward_share']:.3f}")
        print(f"capture_over_plain_{name}={got['capture_over_plain']:.3f}", flush=True)
    print(f"loadavg_end={os.getloadavg()[0]:.2f}")
    return out


if __name__ == "__main__":
    main()
