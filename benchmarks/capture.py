"""Capture overhead and memory on SmolLM2-135M (30 blocks, hidden 576), side by side in one run.

1. Speed: the same batches of pydoc prose run as a plain ``model(input_ids, attention_mask)``
   forward under ``torch.inference_mode()`` and as a hopaudit capture (hooks on 30 blocks and
   the final norm, positions="last", NLL/Min-K%/top-1 scoring from the logits), alternated
   round by round (the order flips each round; a busy machine gets fewer batches per round so
   the run keeps to ``--budget``). Prints::

       capture_overhead_ratio=      total capture time / total plain time (target <= 1.10)
       plain_tokens_per_second=
       capture_tokens_per_second=

2. Memory: a capture with positions="all" (every token of every layer kept) into a
   memory-mapped store and into RAM, each in a fresh subprocess that reports its peak resident
   set (``resource.getrusage(...).ru_maxrss``). To keep the GGUF loading peak out of the
   number, the parent saves the loaded weights once and the children map them back
   (``torch.load(mmap=True)`` into a model built with empty weights). Prints::

       peak_rss_mmap_mb=   peak_rss_ram_mb=   store_mb= (size of the stored activations)

Usage: ``python benchmarks/capture.py [--rounds 4] [--sequences 32] [--mem-sequences 64]
[--budget 200]``; under 5 minutes on two busy CPU cores (model load included).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

_HERE = Path(__file__).resolve().parent
# run from a checkout: import hopaudit from the repository, not sibling scripts (umap.py)
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))

SEQ_LEN = 128
BATCH = 8
MEM_BATCH = 4  # smaller batches in the memory children: the store, not the logits, should show


def _tokens(tokenizer, n_sequences: int):
    from hopaudit.data import prepare_data
    from hopaudit.zoo import corpus

    return prepare_data(
        corpus("pydoc"), tokenizer, max_length=SEQ_LEN, chunking="stream",
        max_sequences=n_sequences,
    )  # fmt: skip


def _plain(model, data) -> float:
    t0 = time.perf_counter()
    with torch.inference_mode():
        for s in range(0, data.num_sequences, BATCH):
            model(
                input_ids=data.input_ids[s : s + BATCH],
                attention_mask=data.attention_mask[s : s + BATCH],
                use_cache=False,
            )
    return time.perf_counter() - t0


def _capture(model, data, blocks, final, batch_size=BATCH, **kw):
    from hopaudit.capture import capture

    t0 = time.perf_counter()
    res = capture(model, data, blocks, final=final, batch_size=batch_size, progress=False, **kw)
    return time.perf_counter() - t0, res


def speed(model, tokenizer, rounds: int, n_sequences: int, budget: float) -> float:
    """Alternate plain and capture passes over the same batches; returns seconds per batch."""
    from hopaudit.blocks import find_blocks, find_final_norm

    blocks = find_blocks(model)
    final = find_final_norm(model, [p for p, _ in blocks])
    data = _tokens(tokenizer, n_sequences)
    warm = data.head(BATCH)
    _plain(model, warm)
    _capture(model, warm, blocks, final)
    per_batch = _plain(model, warm)
    # a busy machine gets fewer batches per round, so the run stays within its budget
    n_batches = max(1, min(-(-n_sequences // BATCH), int(budget / (2 * rounds * per_batch))))
    data = data.head(n_batches * BATCH)
    print(f"# {per_batch:.2f} s per plain batch of {BATCH}x{SEQ_LEN}; {n_batches} batches per "
          f"round, {rounds} rounds", flush=True)  # fmt: skip
    plain, cap = [], []
    for r in range(rounds):
        if r % 2 == 0:
            plain.append(_plain(model, data))
            cap.append(_capture(model, data, blocks, final)[0])
        else:
            cap.append(_capture(model, data, blocks, final)[0])
            plain.append(_plain(model, data))
        print(f"# round {r}: plain {plain[-1]:.2f} s, capture {cap[-1]:.2f} s", flush=True)
    n = data.num_tokens * rounds
    best = min(c / p for c, p in zip(cap, plain, strict=True))
    print(f"capture_overhead_ratio={sum(cap) / sum(plain):.3f}")
    print(f"capture_overhead_ratio_best_round={best:.3f}")
    print(f"plain_tokens_per_second={n / sum(plain):.1f}")
    print(f"capture_tokens_per_second={n / sum(cap):.1f}")
    print(f"tokens_per_round={data.num_tokens}")
    return sum(plain) / (rounds * n_batches)


def child(workdir: Path, mode: str) -> None:
    """Run one positions='all' capture on mapped weights; print a JSON line of its peak RSS."""
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM

    from hopaudit.blocks import find_blocks, find_final_norm
    from hopaudit.data import TokenData

    config = AutoConfig.from_pretrained(workdir)
    with init_empty_weights():  # parameters on "meta"; buffers (rotary) real
        model = AutoModelForCausalLM.from_config(config)
    state = torch.load(workdir / "weights.pt", mmap=True, weights_only=True)
    model.load_state_dict(state, assign=True, strict=False)
    model.tie_weights()
    model.eval()
    ids = torch.load(workdir / "ids.pt", weights_only=True)
    data = TokenData(ids["input_ids"], ids["attention_mask"], [""] * len(ids["input_ids"]))
    blocks = find_blocks(model)
    final = find_final_norm(model, [p for p, _ in blocks])
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    store = workdir / "store" if mode == "mmap" else None
    seconds, res = _capture(
        model, data, blocks, final, batch_size=MEM_BATCH, positions="all", store=store
    )
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({
        "peak_mb": peak / 1024, "before_mb": before / 1024, "store_mb": res.store.nbytes / 2**20,
        "seconds": seconds, "tokens": res.n_tokens,
    }))  # fmt: skip


def memory(model, tokenizer, n_sequences: int, budget: float, per_batch: float) -> None:
    """Peak RSS of a positions='all' capture into a memory-mapped store and into RAM."""
    per_sequence = per_batch / BATCH
    n_sequences = max(MEM_BATCH, min(n_sequences, int(budget / (2 * per_sequence))))
    data = _tokens(tokenizer, n_sequences)
    print(f"# memory: {data.num_sequences} sequences, positions='all'", flush=True)
    with tempfile.TemporaryDirectory(prefix="hopaudit-bench-") as tmp:
        work = Path(tmp)
        model.config.to_json_file(work / "config.json")
        torch.save(model.state_dict(), work / "weights.pt")
        torch.save(
            {"input_ids": data.input_ids, "attention_mask": data.attention_mask}, work / "ids.pt"
        )
        got = {}
        for mode in ("mmap", "ram"):
            out = subprocess.run(
                [sys.executable, __file__, "--child", mode, "--workdir", str(work)],
                check=True, capture_output=True, text=True,
            )  # fmt: skip
            got[mode] = json.loads(out.stdout.strip().splitlines()[-1])
            print(f"# {mode}: {got[mode]}", flush=True)
    print(f"peak_rss_mmap_mb={got['mmap']['peak_mb']:.0f}")
    print(f"peak_rss_ram_mb={got['ram']['peak_mb']:.0f}")
    print(f"rss_before_capture_mb={got['ram']['before_mb']:.0f}")
    print(f"store_mb={got['ram']['store_mb']:.0f}")
    print(f"peak_rss_ram_over_mmap={got['ram']['peak_mb'] / got['mmap']['peak_mb']:.2f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--sequences", type=int, default=32, help="at most, per round")
    ap.add_argument("--mem-sequences", type=int, default=64, help="at most")
    ap.add_argument("--budget", type=float, default=200, help="seconds for the timed parts")
    ap.add_argument("--child", choices=["mmap", "ram"])
    ap.add_argument("--workdir", type=Path)
    ap.add_argument("--skip-memory", action="store_true")
    args = ap.parse_args()
    torch.manual_seed(0)
    if args.child:
        child(args.workdir, args.child)
        return
    from hopaudit.zoo import smollm2

    t0 = time.perf_counter()
    model, tokenizer = smollm2()
    print(f"# loaded SmolLM2 in {time.perf_counter() - t0:.1f} s; torch threads "
          f"{torch.get_num_threads()}", flush=True)  # fmt: skip
    per_batch = speed(model, tokenizer, args.rounds, args.sequences, 0.55 * args.budget)
    if not args.skip_memory:
        memory(model, tokenizer, args.mem_sequences, 0.45 * args.budget, per_batch)


if __name__ == "__main__":
    main()
