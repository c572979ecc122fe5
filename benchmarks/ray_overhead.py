"""What engine="ray" costs and earns on one machine, on the same audit, in one run.

    python benchmarks/ray_overhead.py                # SmolLM2, 64 x 256 pydoc tokens
    python benchmarks/ray_overhead.py --sequences 32 --rounds 1

A local Ray (``ray.init(num_cpus=4)`` on this 2-core machine, started before any timing) and
SmolLM2-135M on the zoo's pydoc corpus, ``positions="last"``, every block: the same audit with
``engine="local"``, with ``engine="ray"`` and one capture actor given both CPUs (torch then runs
two threads, as the local engine does), and with two actors of one CPU each; the three alternate
for ``--rounds`` rounds and the fastest of each counts. Prints ``seconds_local=``,
``seconds_ray_1_worker=``, ``seconds_ray_2_workers=``, ``ray_overhead_ratio=`` (one worker over
local, target <= 1.25) and ``ray_speedup_2_workers=`` (one worker over two). On a 2-core machine
two workers split the same two cores, so the speedup can only come from overlapping the actors'
start and the per-layer tasks, not from more compute: read it as what Ray's scheduling costs or
saves, not as scaling.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))


def say(name: str, value: object) -> None:
    print(f"{name}={value:.4g}" if isinstance(value, float) else f"{name}={value}", flush=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sequences", type=int, default=64)
    p.add_argument("--length", type=int, default=256)
    p.add_argument("--rounds", type=int, default=2)
    args = p.parse_args(argv)
    os.environ.setdefault("PYTHONPATH", str(_HERE.parent))  # Ray's workers import hopaudit
    import ray

    import hopaudit
    from hopaudit.data import prepare_data

    # 4 logical CPUs on 2 cores: an actor pool asking for every CPU of the cluster never starts
    # (Ray Data keeps part for itself); the actors' num_cpus sets torch's threads
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    model, tok = hopaudit.zoo.smollm2()
    data = prepare_data(
        hopaudit.zoo.corpus("pydoc"), tok, max_length=args.length, max_sequences=args.sequences
    )
    common = dict(positions="last", progress=False, batch_size=16, autocast="off")
    runs = {
        "local": dict(engine="local"),
        "ray_1_worker": dict(engine="ray", ray_options={"concurrency": 1, "num_cpus": 2}),
        "ray_2_workers": dict(engine="ray", ray_options={"concurrency": 2, "num_cpus": 1}),
    }
    best = dict.fromkeys(runs, float("inf"))
    medians = {}
    for _ in range(args.rounds):
        for name, extra in runs.items():
            t = time.perf_counter()
            a = hopaudit.audit(model, data, **common, **extra)
            best[name] = min(best[name], time.perf_counter() - t)
            medians[name] = a.layers["nn_median"].to_numpy()
    for name in runs:
        say(f"seconds_{name}", best[name])
    say("ray_overhead_ratio", best["ray_1_worker"] / best["local"])
    say("ray_speedup_2_workers", best["ray_1_worker"] / best["ray_2_workers"])
    same = all(
        abs(m - r) <= 1e-6 * abs(r)
        for key in ("ray_1_worker", "ray_2_workers")
        for m, r in zip(medians[key], medians["local"], strict=True)
    )
    say("ray_equal_medians", same)
    print(
        f"# {data.num_sequences} x {args.length} tokens, {os.cpu_count()} CPUs, "
        f"fastest of {args.rounds} rounds each"
    )
    ray.shutdown()
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
