"""The LM head run by the scores a chunk at a time (``evidence.scores.head_statistics``) at
several chunk sizes, against the head's product on the whole batch followed by
``token_statistics`` on its logits, side by side in one run.

A batch shaped like a SmolLM2 capture batch (``--batch`` x ``--length`` hidden states of width
576, a head of 49 152 x 576 with random values: the products' speed depends on the shapes, not
the values), in float32 and in bfloat16 (the weights' copy and autocast's output, as the capture
computes where the CPU multiplies bfloat16 natively). Every variant runs once a round, the order
rotating, ``--rounds`` rounds. Prints the CPU, the load average at start and end and, per dtype::

    whole_seconds_<dtype>=                 the product on every row, then token_statistics
    head_seconds_<dtype>_<values>=         head_statistics with HEAD_CHUNK_VALUES = values
    head_chunks_speedup_<dtype>_<values>=  whole over chunked, the median of the rounds' ratios
    best_head_values_<dtype>=              the fastest chunk size
    columns_seconds_<dtype>_<values>=      head_statistics given the head's weight
                                           (``linear=``): every row at once, a slice of
                                           ``values`` logits at a time, as the capture runs a
                                           plain ``nn.Linear`` head (in bfloat16 too, where
                                           the scores choose the rows: ``COLUMN_BYTES``)
    best_column_values_<dtype>=            the fastest slice size
    columns_speedup_<dtype>=               whole over columns at the shipped COLUMN_VALUES
    columns_over_rows_<dtype>=             rows at the shipped HEAD_CHUNK_VALUES over columns at
                                           the shipped COLUMN_VALUES
    max_abs_diff_log_p_<dtype>=            largest |log p| difference from the whole logits'
                                           over every chunk size and the columns (a product of
                                           another shape may round a logit differently: up to
                                           bfloat16's step)
    hit_mismatches_<dtype>=                top-1 hits that differ from the whole logits'

Usage: ``python benchmarks/head_chunks.py [--rounds 7] [--batch 21] [--length 64]``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))

WIDTH, VOCAB = 576, 49_152
VALUES = (2**21, 2**22, 2**23, 2**24, 2**25)
COLUMNS = (2**19, 2**20, 2**21)  # logits a slice of the vocabulary holds (linear=)


def main(argv: list[str] | None = None) -> dict[str, object]:
    import torch

    import hopaudit.evidence.scores as scores
    from hopaudit.evidence.scores import (
        COLUMN_VALUES,
        HEAD_CHUNK_VALUES,
        head_statistics,
        token_statistics,
    )
    from hopaudit.model.precision import cpu_description

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--batch", type=int, default=21)
    parser.add_argument("--length", type=int, default=64)
    parser.add_argument("--vocab", type=int, default=VOCAB, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    lines: dict[str, object] = {}

    def say(key: str, value: object) -> None:
        lines[key] = value
        print(f"{key}={value}", flush=True)

    for key, value in cpu_description().items():
        if not isinstance(value, (list, dict)):
            say(key, value)
    say("load_average_start", round(os.getloadavg()[0], 2))
    gen = torch.Generator().manual_seed(0)
    hidden32 = torch.randn(args.batch, args.length, WIDTH, generator=gen)
    weight32 = torch.randn(args.vocab, WIDTH, generator=gen) / WIDTH**0.5 * 3
    ids = torch.randint(0, args.vocab, (args.batch, args.length), generator=gen)
    mask = torch.ones_like(ids)
    mask[1, args.length // 2 :] = 0  # a padded sequence, as a batch has

    def columns(*args, **kwargs):
        """head_statistics made to take the slices whatever the logits' dtype."""
        chosen, scores.COLUMN_BYTES = scores.COLUMN_BYTES, 1
        try:
            return head_statistics(*args, **kwargs)
        finally:
            scores.COLUMN_BYTES = chosen

    for dtype in (torch.float32, torch.bfloat16):
        name = str(dtype).removeprefix("torch.")
        weight, hidden = weight32.to(dtype), hidden32.to(dtype)

        def head(rows: torch.Tensor, weight: torch.Tensor = weight) -> torch.Tensor:
            return torch.nn.functional.linear(rows, weight)

        def whole(head=head, hidden=hidden):
            logits = head(hidden.reshape(-1, WIDTH)).reshape(args.batch, args.length, -1)
            return token_statistics(logits, ids, mask, overwrite=True)

        runs = {"whole": whole}
        for v in VALUES:
            runs[str(v)] = lambda v=v, head=head, hidden=hidden, dt=dtype: head_statistics(
                hidden, head, ids, mask, head_values=v, vocab=args.vocab, dtype=dt
            )
        for v in COLUMNS:  # the slices in either dtype, whichever the scores choose
            runs[f"columns_{v}"] = lambda v=v, h=head, x=hidden, dt=dtype, w=weight: columns(
                x, h, ids, mask, head_values=v, dtype=dt, linear=(w, None)
            )
        first = {k: f() for k, f in runs.items()}  # warm, and the scores compared
        base = first["whole"]
        diff = max(float((first[k][1] - base[1]).abs().max()) for k in runs)
        mismatches = sum(int((first[k][2] != base[2]).sum()) for k in runs)
        times: dict[str, list[float]] = {k: [] for k in runs}
        kinds = list(runs)
        for r in range(args.rounds):
            for k in kinds[r % len(kinds) :] + kinds[: r % len(kinds)]:
                t = time.perf_counter()
                runs[k]()
                times[k].append(time.perf_counter() - t)
        say(f"whole_seconds_{name}", round(statistics.median(times["whole"]), 4))
        for v in VALUES:
            say(f"head_seconds_{name}_{v}", round(statistics.median(times[str(v)]), 4))
        for v in VALUES:
            ratio = statistics.median(
                w / c for w, c in zip(times["whole"], times[str(v)], strict=True)
            )
            say(f"head_chunks_speedup_{name}_{v}", round(ratio, 3))
        say(f"best_head_values_{name}", min(VALUES, key=lambda v: statistics.median(times[str(v)])))
        shipped = str(HEAD_CHUNK_VALUES[dtype.itemsize])

        def ratio_of(a: str, b: str, times: dict = times) -> float:
            pairs = zip(times[a], times[b], strict=True)
            return round(statistics.median(x / y for x, y in pairs), 3)

        for v in COLUMNS:
            say(f"columns_seconds_{name}_{v}", round(statistics.median(times[f"columns_{v}"]), 4))
        fastest = min(COLUMNS, key=lambda v: statistics.median(times[f"columns_{v}"]))
        say(f"best_column_values_{name}", fastest)
        say(f"columns_speedup_{name}", ratio_of("whole", f"columns_{COLUMN_VALUES}"))
        say(f"columns_over_rows_{name}", ratio_of(shipped, f"columns_{COLUMN_VALUES}"))
        say(f"max_abs_diff_log_p_{name}", round(diff, 6))
        say(f"hit_mismatches_{name}", mismatches)
    say("load_average_end", round(os.getloadavg()[0], 2))
    return lines


if __name__ == "__main__":
    main()
