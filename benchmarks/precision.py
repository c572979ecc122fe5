"""SmolLM2's forward pass in float32 against bfloat16 autocast, side by side, and what it changes.

    python benchmarks/precision.py [--sequences 512] [--length 64] [--rounds 3]

Same model object, same batches of pydoc tokens, the two precisions alternated round by round
(plain forwards, no hooks). Prints ``name=value`` lines:

- ``bf16_speedup``: median tokens per second with ``torch.autocast(bfloat16)`` over float32
  (``native_bf16`` says whether this machine multiplies bfloat16 in hardware);
- ``mean_ce_float32``, ``mean_ce_bf16``, ``max_abs_diff_ce_per_sequence``: cross-entropy in
  nats, from the logits of each run;
- ``median_rel_err_activations_max``: the largest over layers of the median relative error of
  the last-position hidden states;
- ``max_rel_diff_median_nn``: the largest over layers of the relative change of the median
  nearest-other distance (RMS-normalized, exact, float64);
- the same three with ``_compiled``: bfloat16 autocast with ``compile=True``'s compiled blocks
  (``hopaudit.model.compiled``), against float32 as well, and ``compiled_tokens_per_second``;
- ``mm_share_bf16``: with ``--profile``, the share of one bfloat16 batch's CPU time spent in
  ``aten::mm`` (torch.profiler): how much of the forward is matrix products.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time

import numpy as np
import torch

import hopaudit
from hopaudit.data import prepare_data
from hopaudit.model.compiled import compiled_blocks
from hopaudit.model.precision import native_bf16


def forward_all(model, ids: torch.Tensor, batch: int, ctx) -> tuple[float, np.ndarray, np.ndarray]:
    """(tokens per second, last-position states (layers, n, d), per-sequence cross-entropy)."""
    states, ces = [], []
    t = time.perf_counter()
    with torch.inference_mode(), ctx():
        for s in range(0, len(ids), batch):
            x = ids[s : s + batch]
            out = model(x, output_hidden_states=True)
            lp = torch.log_softmax(out.logits[:, :-1].float(), -1)
            ces.append(-lp.gather(-1, x[:, 1:, None])[..., 0].mean(1))
            states.append(torch.stack([h[:, -1].float() for h in out.hidden_states]))
    seconds = time.perf_counter() - t
    return ids.numel() / seconds, torch.cat(states, 1).numpy(), torch.cat(ces).numpy()


def median_nn(x: np.ndarray) -> float:
    x = x.astype(np.float64)
    x = x / np.sqrt((x * x).mean(1, keepdims=True))
    sq = (x * x).sum(1)
    d2 = sq[:, None] + sq[None] - 2 * x @ x.T
    np.fill_diagonal(d2, np.inf)
    return float(np.median(np.sqrt(np.maximum(d2.min(1), 0))))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sequences", type=int, default=512)
    ap.add_argument("--length", type=int, default=64)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--profile", action="store_true", help="profile one bfloat16 batch")
    args = ap.parse_args()

    model, tok = hopaudit.zoo.smollm2()
    data = prepare_data(
        hopaudit.zoo.corpus("pydoc"), tok, max_length=args.length, max_sequences=args.sequences
    )
    ids = data.input_ids
    print(f"native_bf16={native_bf16(torch.device('cpu'))} threads={torch.get_num_threads()}")

    @contextlib.contextmanager
    def compiled():
        with (
            torch.autocast("cpu", dtype=torch.bfloat16),
            compiled_blocks(list(model.model.layers), True),
        ):
            yield

    runs = {
        "float32": contextlib.nullcontext,
        "bf16": lambda: torch.autocast("cpu", dtype=torch.bfloat16),
        "compiled": compiled,
    }
    speed: dict[str, list[float]] = {k: [] for k in runs}
    out = {}
    forward_all(model, ids[: args.batch], args.batch, contextlib.nullcontext)  # warm up
    forward_all(model, ids[: args.batch], args.batch, compiled)  # and compile
    for r in range(args.rounds):
        for name in runs if r % 2 == 0 else list(runs)[::-1]:
            tps, states, ce = forward_all(model, ids, args.batch, runs[name])
            speed[name].append(tps)
            out[name] = (states, ce)
        print(f"round={r} " + " ".join(f"{k}={v[-1]:.0f}tok/s" for k, v in speed.items()))
    med = {k: statistics.median(v) for k, v in speed.items()}
    print(f"float32_tokens_per_second={med['float32']:.0f}")
    print(f"bf16_tokens_per_second={med['bf16']:.0f}")
    print(f"bf16_speedup={med['bf16'] / med['float32']:.2f}")
    print(f"compiled_tokens_per_second={med['compiled']:.0f}")

    h32, ce32 = out["float32"]
    print(f"mean_ce_float32={ce32.mean():.4f}")
    for name, suffix in (("bf16", ""), ("compiled", "_compiled")):
        hbf, cebf = out[name]
        print(f"mean_ce_{name}={cebf.mean():.4f}")
        print(f"max_abs_diff_ce_per_sequence{suffix}={np.abs(ce32 - cebf).max():.4f}")
        rel_act = [
            float(
                np.median(np.linalg.norm(hbf[i] - h32[i], axis=1) / np.linalg.norm(h32[i], axis=1))
            )
            for i in range(1, len(h32))
        ]
        print(f"median_rel_err_activations_max{suffix}={max(rel_act):.4f}")
        rel_nn = [abs(median_nn(hbf[i]) / median_nn(h32[i]) - 1) for i in range(1, len(h32))]
        print(f"max_rel_diff_median_nn{suffix}={max(rel_nn):.4f}")

    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        with (
            torch.inference_mode(),
            runs["bf16"](),
            profile(activities=[ProfilerActivity.CPU]) as p,
        ):
            model(ids[: args.batch])
        events = p.key_averages()
        mm = sum(e.self_cpu_time_total for e in events if e.key == "aten::mm")
        print(f"mm_share_bf16={mm / sum(e.self_cpu_time_total for e in events):.2f}")


if __name__ == "__main__":
    main()
