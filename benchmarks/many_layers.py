"""Memory across many layers: peak anonymous memory of a ``positions="all"`` audit, 4 and 12
blocks.

A GPT-2 with random weights (``GPT2Config``: width 768, 12 heads, 4 or 12 blocks) audits
400 x 64 random tokens with ``store=`` (activations and per-layer files on disk), each size in a
fresh process. A thread samples ``RssAnon`` from /proc/self/status every 20 ms; the model's and
the tokens' memory before the audit is subtracted. One layer's float32 patterns are
tokens x 768 x 4 bytes. Each size runs twice: as the audit runs it (with ``store=``, the
weights' bfloat16 copies held within one layer's float32 patterns, the LM head's first: at this
size the head's alone, the blocks cast by autocast at each call; model/precision.py) and with
every copy the memory allows, as an audit in RAM makes them (the lines ending ``_all_copies``):
the capture's memory against its speed. Prints the CPU and the load average at start and end,
and::

    one_layer_mb=                       one layer's float32 patterns
    peak_anon_mb_<blocks>=              peak anonymous memory above the model, during the audit
    peak_anon_over_one_layer_<blocks>=  the two over each other (target <= 3, equal for 4 and 12)
    peak_stage_<blocks>=                the audit's stage at the peak
    stage_peaks_<blocks>=               the largest peak of each kind of stage, in layers
    capture_seconds_<blocks>=           the capture's own seconds
    umap_import_over_one_layer=         importing umap and loading its compiled functions, in
                                        a fresh process after torch and hopaudit (kept for
                                        the rest of the process: a fixed working set)
    weight_copies_over_one_layer_<b>=   the bfloat16 copies of the weights the capture casts
                                        once (``precision.weights_to_cast``), from their sizes
    logits_over_one_layer_<b>=          the logits the capture holds at once, in the dtype the
                                        forward returns: the head's chunk (HEAD_CHUNK_VALUES)

A stage is what ``hopaudit.engines.memory.PeakTracker.mark`` names once it ends ("capture",
"measuring <layer>", "UMAP <layer>"): the benchmark records when each mark is taken, and the
stage a sample belongs to is the first mark taken after it.

``--speed SEQUENCES`` instead times the capture alone (4 blocks, ``SEQUENCES`` x 64 tokens,
``positions="all"``) at the batch sizes chosen under the logits budget for this audit and for a
``positions="last"`` one, and at the 512 MiB cap's, in alternated rounds (``--rounds``), and
prints each best time and ``capture_seconds_ratio_batch<b>_over_batch<cap>``.

Usage: ``python benchmarks/many_layers.py [--blocks 4 12] [--sequences 400]``,
``python benchmarks/many_layers.py --speed 123 [--rounds 2]``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))

WIDTH = 768
SEQ_LEN = 64


def rss_anon_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class AnonSampler:
    """``RssAnon`` over a block, sampled every 20 ms: the peak, when it happened (perf_counter
    seconds), and every sample (to give each stage its own peak)."""

    def __init__(self) -> None:
        self.peak, self.when = 0.0, 0.0
        self.samples: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            now, t = rss_anon_mb(), time.perf_counter()
            self.samples.append((t, now))
            if now > self.peak:
                self.peak, self.when = now, t

    def __enter__(self) -> AnonSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def record_marks() -> list[tuple[float, str]]:
    """(perf_counter seconds, stage) of every ``PeakTracker.mark`` the audit takes from now."""
    from hopaudit.engines.memory import PeakTracker

    marks: list[tuple[float, str]] = []
    mark = PeakTracker.mark

    def timed(self: PeakTracker, stage: str) -> None:
        marks.append((time.perf_counter(), stage))
        mark(self, stage)

    PeakTracker.mark = timed  # type: ignore[method-assign]
    return marks


def stage_at(marks: list[tuple[float, str]], t: float) -> str:
    """The stage running at ``t``: the first one marked after it."""
    return next((stage for when, stage in marks if when >= t), "end (after the last mark)")


def stage_peaks(samples: list, marks: list, base: float) -> dict[str, float]:
    """The peak above ``base`` (MB) of each kind of stage ("measuring", "UMAP", ...)."""
    out: dict[str, float] = {}
    for t, mb in samples:
        kind = stage_at(marks, t).split(" ")[0]
        out[kind] = max(out.get(kind, 0.0), mb - base)
    return out


def child(blocks: int, n_seq: int, all_copies: bool) -> None:
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    import hopaudit
    import hopaudit.capture.forward as fwd
    from hopaudit.evidence.scores import HEAD_CHUNK_VALUES

    one_layer = n_seq * SEQ_LEN * WIDTH * 4
    budget = None if all_copies else one_layer
    if all_copies:
        cast = fwd.cast_weights_once

        def every_copy(*args, **kwargs):  # as an audit in RAM: the memory alone bounds them
            return cast(*args, **{**kwargs, "budget": None})

        fwd.cast_weights_once = every_copy

    torch.manual_seed(0)
    config = GPT2Config(n_layer=blocks, n_embd=WIDTH, n_head=12, n_positions=SEQ_LEN)
    model = GPT2LMHeadModel(config).eval()
    ids = torch.randint(0, config.vocab_size, (n_seq, SEQ_LEN))
    with torch.inference_mode():
        model(ids[:2])  # first allocations of the forward, before the baseline
    marks = record_marks()
    with tempfile.TemporaryDirectory(prefix="hopaudit-layers-") as tmp:
        base = rss_anon_mb()
        t0 = time.perf_counter()
        with AnonSampler() as sampler:
            audit = hopaudit.audit(
                model, ids, positions="all", store=f"{tmp}/store", progress=False, bootstrap=0
            )
        seconds = time.perf_counter() - t0
        amp = str(audit.capture.compute_dtype).startswith("bfloat16")
        size = 2 if amp else 4
        logits = HEAD_CHUNK_VALUES[size] * size
        print(json.dumps({
            "peak": sampler.peak - base, "base": base, "when": sampler.when - t0,
            "stage": stage_at(marks, sampler.when),
            "stages": stage_peaks(sampler.samples, marks, base),
            "seconds": seconds, "capture_seconds": audit.capture.seconds,
            "batch_size": audit.capture.batch_size, "tokens": int(audit.n_tokens),
            "copies_mb": weight_copies_bytes(model, budget) / 2**20 if amp else 0.0,
            "logits_mb": logits / 2**20,
        }))  # fmt: skip


def weight_copies_bytes(model, budget: int | None) -> int:
    """Bytes of the bfloat16 copies the capture makes of the weights and biases of its matrix
    products (a tied weight once): the LM head's, then the blocks' within ``budget``
    (``precision.weights_to_cast`` as ``capture`` calls it, on a machine with room for all)."""
    import torch

    from hopaudit.capture.head import output_head
    from hopaudit.model.precision import weights_to_cast

    chosen = weights_to_cast(model, torch.bfloat16, budget, [output_head(model)])
    return sum(p.numel() * 2 for p in {id(p): p for _, _, p in chosen}.values())


def umap_import() -> None:
    """RssAnon that importing umap and loading its compiled functions adds, after torch,
    transformers and hopaudit (what the audit's process holds before its first layout)."""
    import torch  # noqa: F401
    import transformers  # noqa: F401

    import hopaudit  # noqa: F401
    from hopaudit.layer.embedding import cache_umap_jit

    before = rss_anon_mb()
    import umap  # noqa: F401

    cache_umap_jit()
    print(json.dumps({"umap_import_mb": rss_anon_mb() - before}))


def speed(n_seq: int, rounds: int, sequences: int) -> None:
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    from hopaudit.capture.batching import choose_batch_size, layer_bytes
    from hopaudit.capture.forward import capture
    from hopaudit.data.prepare import prepare_data
    from hopaudit.model.blocks import find_stacks

    torch.manual_seed(0)
    config = GPT2Config(n_layer=4, n_embd=WIDTH, n_head=12, n_positions=SEQ_LEN)
    model = GPT2LMHeadModel(config).eval()
    tokens = prepare_data(torch.randint(0, config.vocab_size, (n_seq, SEQ_LEN)), None, model=model)
    audit_size = prepare_data(torch.zeros(sequences, SEQ_LEN, dtype=torch.long), None, model=model)
    sizes = [choose_batch_size(model, SEQ_LEN, sequences, "cpu")]  # the cap's
    for positions in ("all", "last"):
        one = layer_bytes(model, audit_size, positions)
        sizes.append(choose_batch_size(model, SEQ_LEN, sequences, "cpu", one))
    sizes = list(dict.fromkeys(sizes))
    print(f"batch_sizes={sizes} (the cap's, then {sequences} x {SEQ_LEN} all, last)")
    best = dict.fromkeys(sizes, float("inf"))
    stacks = find_stacks(model)
    for _ in range(rounds):
        for b in sizes:
            cap = capture(model, tokens, stacks, positions="all", store_dtype=torch.float32,
                          batch_size=b, progress=False, autocast="auto")  # fmt: skip
            best[b] = min(best[b], cap.seconds)
    for b in sizes:
        print(f"capture_seconds_batch{b}={best[b]:.2f}")
    for b in sizes[1:]:
        print(f"capture_seconds_ratio_batch{b}_over_batch{sizes[0]}={best[b] / best[sizes[0]]:.2f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--blocks", type=int, nargs="+", default=[4, 12])
    ap.add_argument("--sequences", type=int, default=400)
    ap.add_argument("--child", type=int)
    ap.add_argument("--all-copies", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--umap-import", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--speed", type=int, help="time the capture at SPEED x 64 tokens instead")
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    if args.child:
        child(args.child, args.sequences, args.all_copies)
        return
    if args.umap_import:
        umap_import()
        return
    from hopaudit.model.precision import cpu_lines

    print(*cpu_lines(), sep="\n")  # which machine the lines come from
    print(f"loadavg_start={os.getloadavg()[0]:.2f}", flush=True)
    if args.speed:
        speed(args.speed, args.rounds, args.sequences)
        print(f"loadavg_end={os.getloadavg()[0]:.2f}")
        return
    one = args.sequences * SEQ_LEN * WIDTH * 4 / 2**20
    print(f"one_layer_mb={one:.1f}")
    out = subprocess.run(
        [sys.executable, __file__, "--umap-import"], check=True, capture_output=True, text=True
    )
    fixed = json.loads(out.stdout.strip().splitlines()[-1])["umap_import_mb"]
    print(f"umap_import_over_one_layer={fixed / one:.2f}", flush=True)
    for blocks in args.blocks:
        for every in (False, True):
            cmd = [sys.executable, __file__, "--child", str(blocks)]
            cmd += ["--sequences", str(args.sequences)] + (["--all-copies"] if every else [])
            out = subprocess.run(cmd, check=True, capture_output=True, text=True)
            got = json.loads(out.stdout.strip().splitlines()[-1])
            b = f"{blocks}_all_copies" if every else str(blocks)
            print(f"# {b}: {got}", flush=True)
            print(f"peak_anon_mb_{b}={got['peak']:.1f}")
            print(f"peak_anon_over_one_layer_{b}={got['peak'] / one:.2f}")
            print(f"peak_stage_{b}={got['stage']}")
            layers = {k: round(v / one, 2) for k, v in got["stages"].items()}
            print(f"stage_peaks_{b}={json.dumps(layers)}")
            print(f"capture_seconds_{b}={got['capture_seconds']:.2f}")
            print(f"weight_copies_over_one_layer_{b}={got['copies_mb'] / one:.2f}")
            print(f"logits_over_one_layer_{b}={got['logits_mb'] / one:.2f}", flush=True)
    print(f"loadavg_end={os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
