"""The audit under contention: its throughput beside one CPU-bound competitor over idle.

The same audit (a random GPT-2 from a ``GPT2Config``, or SmolLM2 with ``--smollm2``;
``positions="all"``, so the forward, the per-layer search and the UMAP all count) runs alone
and beside a ``python -c "while True: pass"`` competitor, alternated round by round (the order
flips each round), each in this one process. Another thread samples, every 50 ms, how many
threads the process has and what its pools are set to. Prints::

    cpu=                          the CPU model; native_bf16= and the flags that decide it
    loadavg_start= loadavg_end=   the machine's 1-minute load average around the run
    threads_<pool>=               each pool as the audit ran (hopaudit.engines.threads)
    max_os_threads=               the most threads the process had during an audit
    idle_seconds= contended_seconds=   medians over the rounds
    contention_throughput_ratio=  idle_seconds / contended_seconds (target >= 0.4)

Usage: ``python benchmarks/contention.py [--rounds 3] [--sequences 64] [--smollm2]``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import torch

_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))

SEQ_LEN = 64


def loadavg() -> float:
    return os.getloadavg()[0]


class Sampler:
    """Samples the process's thread count and pool settings while an audit runs."""

    def __init__(self) -> None:
        self.max_threads = 0
        self.settings: dict = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        from hopaudit.engines.threads import thread_settings

        while not self._stop.wait(0.05):
            self.max_threads = max(self.max_threads, len(os.listdir("/proc/self/task")))
            self.settings = thread_settings()

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def build(smollm2: bool, n_seq: int):
    """(model, token ids) of the audit."""
    if smollm2:
        from hopaudit.data import prepare_data
        from hopaudit.zoo import corpus
        from hopaudit.zoo import smollm2 as load

        model, tok = load()
        data = prepare_data(corpus("pydoc"), tok, max_length=SEQ_LEN, max_sequences=n_seq)
        return model, data.input_ids
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(n_layer=4, n_embd=512, n_head=8, vocab_size=8192, n_positions=SEQ_LEN)
    config.bos_token_id = config.eos_token_id = 0
    model = GPT2LMHeadModel(config).eval()
    return model, torch.randint(0, config.vocab_size, (n_seq, SEQ_LEN))


def one_audit(model, ids, sampler: Sampler | None = None) -> float:
    import hopaudit

    t0 = time.perf_counter()
    hopaudit.audit(model, ids, positions="all", progress=False, bootstrap=0)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--sequences", type=int, default=64)
    ap.add_argument("--smollm2", action="store_true")
    args = ap.parse_args()
    from hopaudit.model.precision import cpu_lines

    print(*cpu_lines(), sep="\n")
    print(f"loadavg_start={loadavg():.2f}", flush=True)
    model, ids = build(args.smollm2, args.sequences)
    one_audit(model, ids[:16])  # warm-up: imports, numba's cache, first allocations
    idle, busy = [], []
    sampler = Sampler()
    with sampler:
        for r in range(args.rounds):
            for contended in (r % 2 == 1, r % 2 == 0):
                if not contended:
                    idle.append(one_audit(model, ids))
                    continue
                rival = subprocess.Popen([sys.executable, "-c", "while True: pass"])
                try:
                    time.sleep(0.2)
                    busy.append(one_audit(model, ids))
                finally:
                    rival.kill()
                    rival.wait()
            print(f"# round {r}: idle {idle[-1]:.2f} s, contended {busy[-1]:.2f} s", flush=True)
    for key, value in sampler.settings.items():
        print(f"threads_{key}={value}")
    print(f"max_os_threads={sampler.max_threads}")
    print(f"idle_seconds={statistics.median(idle):.3f}")
    print(f"contended_seconds={statistics.median(busy):.3f}")
    print(f"contention_throughput_ratio={statistics.median(idle) / statistics.median(busy):.3f}")
    print(f"loadavg_end={loadavg():.2f}")


if __name__ == "__main__":
    main()
