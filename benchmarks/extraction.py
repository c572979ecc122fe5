"""Greedy extraction on SmolLM2-135M, three ways side by side in one run: decoding every suffix
to its end, stopping a batch once every sequence in it has diverged from its text (what
``hopaudit.extraction()`` does), and reading the run off one teacher-forced forward's top-1
hits (what an audit does, from its capture's pass: docs/theory.md §6).

All three take the same pydoc sequences (``--sequences`` of 64 tokens: 32 of prefix, 32 of
suffix) in the same batches, the decoding with the KV cache, in the model's own float32, the
order rotating round by round. Then the decoding to the end and the teacher-forced reading
once more in bfloat16 autocast with the weights cast once (the audit's numerics where the CPU
multiplies bfloat16 natively), to count where near-ties fall differently. Prints the CPU
(``native_bf16``, its flags), the load average at start and end, and::

    extraction_full_seconds=     median wall seconds, every suffix decoded to its 32nd token
    extraction_stop_seconds=     median wall seconds, a batch stopped once all rows diverged
    extraction_teacher_forced_seconds=  median wall seconds, one forward of the 64 tokens
    extraction_stop_speedup=     full / stop: median over rounds of each round's ratio
    teacher_forced_over_stop=    teacher-forced / stop seconds: median of each round's ratio
                                 (inside an audit the forward is the capture's: no cost at all)
    decoded_fraction=            tokens decoded when stopping / tokens decoded in full
    same_extracted_tokens=       True when stopping gives every sequence full's matching run
    teacher_forced_differs=      sequences whose teacher-forced run differs from full's
    extracted_full=              sequences full decoding extracts (all 32 tokens)
    teacher_forced_differs_bf16= the same count in bfloat16 autocast (weights cast once)

Usage: ``python benchmarks/extraction.py [--rounds 3] [--sequences 128] [--batch 32]``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch

_HERE = Path(__file__).resolve().parent
# run from a checkout: import hopaudit from the repository, not sibling scripts
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))

PREFIX = SUFFIX = 32


def _decode(model, ids, batch: int, stop: bool) -> tuple[float, torch.Tensor]:
    from hopaudit.evidence.extract import _cache_argument, greedy_suffix

    cache_arg = _cache_argument(model)
    out = []
    t0 = time.perf_counter()
    with torch.inference_mode():
        for start in range(0, ids.shape[0], batch):
            rows = ids[start : start + batch]
            target = rows[:, PREFIX : PREFIX + SUFFIX] if stop else None
            out.append(greedy_suffix(model, rows[:, :PREFIX], SUFFIX, cache_arg, target))
    return time.perf_counter() - t0, torch.cat(out)


def _teacher_forced(model, ids, batch: int) -> tuple[float, list[int]]:
    """One forward over each batch's 64 tokens; the run of top-1 hits from the prefix on."""
    from hopaudit.evidence.scores import greedy_runs

    hits = []
    t0 = time.perf_counter()
    with torch.inference_mode():
        for start in range(0, ids.shape[0], batch):
            rows = ids[start : start + batch, : PREFIX + SUFFIX]
            top = model(input_ids=rows).logits[:, :-1].argmax(-1)
            hits.append((top == rows[:, 1:]).reshape(-1))
    seconds = time.perf_counter() - t0
    n, per = ids.shape[0], PREFIX + SUFFIX - 1
    seq = torch.arange(n).repeat_interleave(per).numpy()
    return seconds, greedy_runs(seq, torch.cat(hits).numpy(), n, PREFIX, SUFFIX)[0].tolist()


def _matched(generated: torch.Tensor, ids: torch.Tensor) -> list[int]:
    match = (generated == ids[:, PREFIX : PREFIX + SUFFIX]).long()
    return match.cumprod(1).sum(1).tolist()


def _differ(a: list[int], b: list[int]) -> int:
    return sum(x != y for x, y in zip(a, b, strict=True))


def main(argv: list[str] | None = None) -> dict[str, object]:
    from hopaudit.data import prepare_data
    from hopaudit.evidence.extract import NOT_DECODED
    from hopaudit.model.loading import load_model
    from hopaudit.model.precision import autocast_context, cast_weights_once, cpu_description
    from hopaudit.zoo import corpus

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--sequences", type=int, default=128)
    parser.add_argument("--batch", type=int, default=32)
    args = parser.parse_args(argv)

    lines: dict[str, object] = {}
    cpu = cpu_description()
    lines.update({k: v for k, v in cpu.items() if not isinstance(v, (list, dict))})
    lines["load_average_start"] = round(os.getloadavg()[0], 2)
    model, tokenizer = load_model("smollm2")
    model.eval()
    lines["dtype"] = str(next(model.parameters()).dtype).removeprefix("torch.")
    tokens = prepare_data(
        corpus("pydoc"), tokenizer, max_length=PREFIX + SUFFIX, max_sequences=args.sequences
    )
    full = tokens.attention_mask.sum(1) == PREFIX + SUFFIX
    ids = tokens.input_ids[full]
    lines["sequences"] = int(ids.shape[0])
    ways = ("full", "stop", "teacher_forced")
    times: dict[str, list[float]] = {w: [] for w in ways}
    ratios: dict[str, list[float]] = {"stop": [], "teacher_forced": []}
    results: dict[str, object] = {}
    for r in range(args.rounds):
        seconds = {}
        for way in ways[r % 3 :] + ways[: r % 3]:
            if way == "teacher_forced":
                seconds[way], results[way] = _teacher_forced(model, ids, args.batch)
            else:
                seconds[way], results[way] = _decode(model, ids, args.batch, way == "stop")
            times[way].append(seconds[way])
        ratios["stop"].append(seconds["full"] / seconds["stop"])
        ratios["teacher_forced"].append(seconds["teacher_forced"] / seconds["stop"])
    for way in ways:
        lines[f"extraction_{way}_seconds"] = round(statistics.median(times[way]), 3)
    lines["extraction_stop_speedup"] = round(statistics.median(ratios["stop"]), 3)
    lines["teacher_forced_over_stop"] = round(statistics.median(ratios["teacher_forced"]), 3)
    decoded = int((results["stop"] != NOT_DECODED).sum())
    lines["decoded_fraction"] = round(decoded / results["full"].numel(), 4)
    full_runs = _matched(results["full"], ids)
    lines["same_extracted_tokens"] = _matched(results["stop"], ids) == full_runs
    lines["teacher_forced_differs"] = _differ(results["teacher_forced"], full_runs)
    lines["extracted_full"] = sum(run == SUFFIX for run in full_runs)
    bf16 = torch.bfloat16
    with autocast_context(bf16, torch.device("cpu")), cast_weights_once(model, bf16):
        full_bf16 = _matched(_decode(model, ids, args.batch, stop=False)[1], ids)
        teacher_bf16 = _teacher_forced(model, ids, args.batch)[1]
    lines["teacher_forced_differs_bf16"] = _differ(teacher_bf16, full_bf16)
    lines["load_average_end"] = round(os.getloadavg()[0], 2)
    print(" ".join(f"{k}={v!r}" if isinstance(v, str) else f"{k}={v}" for k, v in lines.items()))
    return lines


if __name__ == "__main__":
    main()
