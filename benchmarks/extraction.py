"""Greedy extraction on SmolLM2-135M: decoding every suffix to its end against stopping a batch
once every sequence in it has diverged from its text, side by side in one run.

Both decode the same pydoc sequences (``--sequences`` of 64 tokens: 32 of prefix, 32 of
suffix) in the same batches, with the KV cache, in the model's own float32 as the audit's
extraction does, the order alternating round by round. Prints the
CPU (``native_bf16``, its flags), the load average at start and end, and::

    extraction_full_seconds=     median wall seconds, every suffix decoded to its 32nd token
    extraction_stop_seconds=     median wall seconds, a batch stopped once all rows diverged
    extraction_stop_speedup=     full / stop: median over rounds of each round's ratio
    decoded_fraction=            tokens decoded when stopping / tokens decoded in full
    same_extracted_tokens=       True when both give every sequence the same matching run

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


def _matched(generated: torch.Tensor, ids: torch.Tensor) -> list[int]:
    match = (generated == ids[:, PREFIX : PREFIX + SUFFIX]).long()
    return match.cumprod(1).sum(1).tolist()


def main(argv: list[str] | None = None) -> dict[str, object]:
    from hopaudit.data import prepare_data
    from hopaudit.evidence.extract import NOT_DECODED
    from hopaudit.model.loading import load_model
    from hopaudit.model.precision import cpu_description
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
    times: dict[bool, list[float]] = {False: [], True: []}
    ratios, results = [], {}
    for r in range(args.rounds):
        order = (False, True) if r % 2 == 0 else (True, False)
        seconds = {}
        for stop in order:
            seconds[stop], results[stop] = _decode(model, ids, args.batch, stop)
            times[stop].append(seconds[stop])
        ratios.append(seconds[False] / seconds[True])
    lines["extraction_full_seconds"] = round(statistics.median(times[False]), 3)
    lines["extraction_stop_seconds"] = round(statistics.median(times[True]), 3)
    lines["extraction_stop_speedup"] = round(statistics.median(ratios), 3)
    decoded = int((results[True] != NOT_DECODED).sum())
    lines["decoded_fraction"] = round(decoded / results[False].numel(), 4)
    lines["same_extracted_tokens"] = _matched(results[True], ids) == _matched(results[False], ids)
    lines["load_average_end"] = round(os.getloadavg()[0], 2)
    print(" ".join(f"{k}={v!r}" if isinstance(v, str) else f"{k}={v}" for k, v in lines.items()))
    return lines


if __name__ == "__main__":
    main()
