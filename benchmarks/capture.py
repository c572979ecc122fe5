"""Capture overhead and memory on SmolLM2-135M (30 blocks, hidden 576), side by side in one run.

1. Speed: the same batches of pydoc prose run as a plain ``model(input_ids, attention_mask)``
   forward under ``torch.inference_mode()`` on the heap the capture keeps (``heap.kept_heap``),
   as a hopaudit capture (hooks on 30 blocks and
   the final norm, positions="last", NLL/Min-K%/Min-K%++/top-1 scoring from the logits), and
   as the same capture with the vocabulary-wide scoring replaced by reading the target's logit
   (``_target_only``, the logits whole), and as the capture with the model's logits whole
   (``HEAD_CHUNKS = False``: the LM head not run by the scores, capture/head.py), the order
   rotating round by round (a busy machine gets fewer batches per round so the run keeps to
   ``--budget``). Prints the CPU (``native_bf16``, its flags)
   and the load average at start and end, and::

       capture_overhead_ratio=       capture / plain: median over rounds of each round's ratio
                                     of wall seconds (target <= 1.05); _cpu from CPU seconds
       scores_overhead_ratio=        capture / capture without the vocabulary-wide scores
                                     (target <= 1.10); _cpu likewise
       head_chunks_speedup=          capture with the logits whole / capture (the head run
                                     by the scores); _cpu likewise
       plain_tokens_per_second=      median wall
       capture_tokens_per_second=    median wall

2. Memory: a capture with positions="all" (every token of every layer kept) into a
   memory-mapped store and into RAM, each in a fresh subprocess that reports its peak resident
   set (``VmHWM``, the mark ``resource.getrusage(...).ru_maxrss`` reads; see ``_vm_hwm_mb``).
   The parent saves the loaded weights once and the children map them back
   (``torch.load(mmap=True)`` into a model built with empty weights); each child resets the
   kernel's peak mark (``/proc/self/clear_refs``) just before the capture, so model setup
   stays out of the peak. Prints::

       peak_rss_mmap_mb=  peak_rss_ram_mb=  store_mb= (the stored activations)
       peak_rss_ram_minus_mmap_mb=  rss_before_capture_mb= (weights and runtime, both modes)

``--autocast auto`` times the speed part in the numerics an audit chooses (bfloat16 autocast
with the weights cast once where the CPU multiplies bfloat16 natively; the plain forward in the
same), instead of ``capture()``'s default float32; it prints ``autocast=`` and
``compute_dtype=``.

Usage: ``python benchmarks/capture.py [--rounds 5] [--sequences 32] [--mem-sequences 64]
[--budget 200] [--autocast auto]``; under 5 minutes on two busy CPU cores (model load
included).
"""

from __future__ import annotations

import argparse
import json
import os
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
BATCH = 4
MEM_BATCH = 4  # smaller batches in the memory children: the store, not the logits, should show


def _tokens(tokenizer, n_sequences: int):
    from hopaudit.data import prepare_data
    from hopaudit.zoo import corpus

    return prepare_data(
        corpus("pydoc"), tokenizer, max_length=SEQ_LEN, chunking="stream",
        max_sequences=n_sequences,
    )  # fmt: skip


AUTOCAST = "off"  # --autocast: the numerics of every timed pass


def _plain(model, data) -> tuple[float, float]:
    """(wall, CPU) seconds of plain forwards over ``data`` in batches of BATCH, on the heap the
    capture keeps (hopaudit/heap.py; benchmarks/heap.py times that against glibc's default), in
    the capture's numerics (``AUTOCAST``)."""
    from hopaudit.heap import kept_heap
    from hopaudit.model.precision import autocast_context, cast_weights_once, compute_dtype

    cpu = torch.device("cpu")
    amp = compute_dtype(model, cpu, AUTOCAST)
    t0, c0 = time.perf_counter(), time.process_time()
    with (
        torch.inference_mode(),
        autocast_context(amp, cpu),
        cast_weights_once(model, amp),
        kept_heap() as heap,
    ):
        for s in range(0, data.num_sequences, BATCH):
            model(
                input_ids=data.input_ids[s : s + BATCH],
                attention_mask=data.attention_mask[s : s + BATCH],
                use_cache=False,
            )
            heap.batch_done()
    return time.perf_counter() - t0, time.process_time() - c0


def _capture(model, data, blocks, final, batch_size=BATCH, **kw):
    """((wall, CPU) seconds, CaptureResult) of one hopaudit capture over ``data``."""
    from hopaudit.capture import capture

    t0, c0 = time.perf_counter(), time.process_time()
    kw.setdefault("autocast", AUTOCAST)
    res = capture(model, data, blocks, final=final, batch_size=batch_size, progress=False, **kw)
    return (time.perf_counter() - t0, time.process_time() - c0), res


def _target_only(logits, input_ids, mask, *, shift=True, **_):
    """The per-token scoring without the vocabulary-wide work: log p of the target read from
    the raw logit, no Min-K%++ (a stand-in for ``scores.token_statistics`` when it is off)."""
    m = mask.bool()
    valid = m[:, :-1] & m[:, 1:] if shift else m
    b_idx, t_idx = valid.nonzero(as_tuple=True)
    lp = logits[b_idx, t_idx, input_ids[b_idx, t_idx + (1 if shift else 0)]].float()
    return b_idx, lp, torch.zeros_like(lp, dtype=torch.bool), torch.zeros_like(lp)


def _capture_whole_logits(model, data, blocks, final):
    """The capture with the model's logits whole (the LM head not run by the scores)."""
    import hopaudit.capture.forward as fwd

    chunks, fwd.HEAD_CHUNKS = fwd.HEAD_CHUNKS, False
    try:
        return _capture(model, data, blocks, final)
    finally:
        fwd.HEAD_CHUNKS = chunks


def _capture_noscores(model, data, blocks, final):
    """The capture with ``_target_only`` for the scores, which reads the whole logits."""
    import hopaudit.capture.forward as fwd

    real, fwd.token_statistics = fwd.token_statistics, _target_only
    try:
        return _capture_whole_logits(model, data, blocks, final)
    finally:
        fwd.token_statistics = real


def speed(model, tokenizer, rounds: int, n_sequences: int, budget: float) -> float:
    """Plain forward, capture, and capture without the vocabulary-wide scores over the same
    batches, the order rotating each round; returns wall s per captured sequence."""
    import statistics

    from hopaudit.model.blocks import find_blocks, find_final_norm

    blocks = find_blocks(model)
    final = find_final_norm(model, [p for p, _ in blocks])
    data = _tokens(tokenizer, n_sequences)
    warm = data.head(BATCH)
    _plain(model, warm)
    per_batch = _capture(model, warm, blocks, final)[0][0]
    # a busy machine gets fewer batches per round, so the run stays within its budget
    n_batches = max(1, min(-(-n_sequences // BATCH), int(budget / (4 * rounds * per_batch))))
    data = data.head(n_batches * BATCH)
    print(f"# {per_batch:.2f} s per capture batch of {BATCH}x{SEQ_LEN}; {n_batches} batches per "
          f"round, {rounds} rounds", flush=True)  # fmt: skip
    runs = {
        "plain": lambda: _plain(model, data),
        "capture": lambda: _capture(model, data, blocks, final)[0],
        "noscores": lambda: _capture_noscores(model, data, blocks, final)[0],
        "whole": lambda: _capture_whole_logits(model, data, blocks, final)[0],
    }
    got: dict[str, list[tuple[float, float]]] = {k: [] for k in runs}
    kinds = list(runs)
    for r in range(rounds):
        for kind in kinds[r % len(kinds) :] + kinds[: r % len(kinds)]:
            got[kind].append(runs[kind]())
        print(f"# round {r}: " + ", ".join(
            f"{k} {v[-1][0]:.2f} s ({v[-1][1]:.2f} s CPU)" for k, v in got.items()
        ), flush=True)  # fmt: skip

    def ratio(a: str, b: str, i: int) -> float:
        return statistics.median(x[i] / y[i] for x, y in zip(got[a], got[b], strict=True))

    print(f"capture_overhead_ratio={ratio('capture', 'plain', 0):.3f}")
    print(f"capture_overhead_ratio_cpu={ratio('capture', 'plain', 1):.3f}")
    print(f"scores_overhead_ratio={ratio('capture', 'noscores', 0):.3f}")
    print(f"scores_overhead_ratio_cpu={ratio('capture', 'noscores', 1):.3f}")
    print(f"head_chunks_speedup={ratio('whole', 'capture', 0):.3f}")
    print(f"head_chunks_speedup_cpu={ratio('whole', 'capture', 1):.3f}")
    n = data.num_tokens
    wall = {k: statistics.median(x[0] for x in v) for k, v in got.items()}
    print(f"plain_tokens_per_second={n / wall['plain']:.1f}")
    print(f"capture_tokens_per_second={n / wall['capture']:.1f}")
    print(f"tokens_per_round={n}")
    return wall["capture"] / data.num_sequences


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark (Linux), so ru_maxrss measures from here on."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def _vm_hwm_mb() -> float | None:
    """Peak RSS since the last reset (``VmHWM``), in MiB; None off Linux.

    ``ru_maxrss`` is the same mark, except that the kernel also folds in the peak a thread
    had when it exited, so a thread that ended during model setup keeps the setup peak there.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def child(workdir: Path, mode: str) -> None:
    """Run one positions='all' capture on mapped weights; print a JSON line of its peak RSS."""
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM

    from hopaudit.data import TokenData
    from hopaudit.model.blocks import find_blocks, find_final_norm

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
    with torch.inference_mode():  # touch the weights once, so both modes start alike
        model(input_ids=data.input_ids[:1, :8])
    setup_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    reset = _reset_peak_rss()
    current = int(Path("/proc/self/statm").read_text().split()[1]) * 4096 / 2**20
    store = workdir / "store" if mode == "mmap" else None
    (seconds, _cpu), res = _capture(
        model, data, blocks, final, batch_size=MEM_BATCH, positions="all", store=store
    )
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    hwm = _vm_hwm_mb()
    print(json.dumps({
        "peak_mb": hwm if reset and hwm is not None else maxrss, "ru_maxrss_mb": maxrss,
        "setup_peak_mb": setup_peak / 1024, "peak_reset": reset,
        "rss_before_mb": current, "store_mb": res.store.nbytes / 2**20, "seconds": seconds,
        "tokens": res.n_tokens,
    }))  # fmt: skip


def memory(model, tokenizer, n_sequences: int, budget: float, per_sequence: float) -> None:
    """Peak RSS of a positions='all' capture into a memory-mapped store and into RAM."""
    # children run batches of MEM_BATCH keeping every position: allow 1.5x the speed part's time
    n_sequences = max(MEM_BATCH, min(n_sequences, int(budget / (2 * 1.5 * per_sequence))))
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
    mm, ram = got["mmap"], got["ram"]
    print(f"peak_rss_mmap_mb={mm['peak_mb']:.0f}")
    print(f"peak_rss_ram_mb={ram['peak_mb']:.0f}")
    print(f"rss_before_capture_mb={ram['rss_before_mb']:.0f}")
    print(f"store_mb={ram['store_mb']:.1f}")
    print(f"peak_rss_ram_minus_mmap_mb={ram['peak_mb'] - mm['peak_mb']:.0f}")
    if not (mm["peak_reset"] and ram["peak_reset"]):
        print("# note: the peak-RSS mark could not be reset; peaks include model setup")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--sequences", type=int, default=32, help="at most, per round")
    ap.add_argument("--mem-sequences", type=int, default=64, help="at most")
    ap.add_argument("--budget", type=float, default=200, help="seconds for the timed parts")
    ap.add_argument("--child", choices=["mmap", "ram"])
    ap.add_argument("--workdir", type=Path)
    ap.add_argument("--skip-memory", action="store_true")
    ap.add_argument("--autocast", choices=["off", "auto"], default="off")
    args = ap.parse_args()
    global AUTOCAST
    AUTOCAST = args.autocast
    torch.manual_seed(0)
    if args.child:
        child(args.workdir, args.child)
        return
    from hopaudit.model.precision import cpu_lines
    from hopaudit.zoo import smollm2

    print(*cpu_lines(), sep="\n")  # which machine the lines come from
    print(f"loadavg_start={os.getloadavg()[0]:.2f}", flush=True)
    t0 = time.perf_counter()
    model, tokenizer = smollm2()
    from hopaudit.model.precision import compute_dtype, describe

    amp = compute_dtype(model, torch.device("cpu"), AUTOCAST)
    print(f"autocast={AUTOCAST} compute_dtype={describe(amp, model)!r}")
    print(f"# loaded SmolLM2 in {time.perf_counter() - t0:.1f} s; torch threads "
          f"{torch.get_num_threads()}", flush=True)  # fmt: skip
    per_sequence = speed(model, tokenizer, args.rounds, args.sequences, 0.5 * args.budget)
    if not args.skip_memory:
        memory(model, tokenizer, args.mem_sequences, 0.35 * args.budget, per_sequence)
    print(f"loadavg_end={os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
