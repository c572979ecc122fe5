"""hopaudit.audit against doing the same audit by hand, on SmolLM2, in one run.

By hand is what a user would write without hopaudit: ``output_hidden_states=True``, every
layer's last-position vector kept in float32, sklearn ``NearestNeighbors`` (brute force) per
layer, umap-learn with its own neighbour search on the same layers hopaudit embeds. Both run
in fresh subprocesses (so peak memory is each one's own), on the same sequences, after the
model is loaded; the model load is timed apart and left out of both. hopaudit loads umap's
compiled functions from numba's on-disk cache once any earlier process has compiled them
(``embedding.cache_umap_jit``); by hand, umap compiles them in its process, as in every new
kernel.

    python benchmarks/end_to_end.py [--sequences 1000] [--length 64] [--rounds 2]

hopaudit and by hand run ``--rounds`` times, alternated (the host's speed drifts between runs:
one run each moved by 5 s in a session); ``wall_ratio`` is the median of the rounds' ratios and
``wall_seconds_rounds=`` lists them.

hopaudit runs with its defaults, so its forward pass uses bfloat16 autocast where the CPU
multiplies bfloat16 natively (``compute_dtype`` says what ran); a third run with
``autocast="off"`` (float32, as by hand) shows what that choice is worth.

A fourth subprocess runs only the forward pass over the same tokens, in the numerics, batches
and heap hopaudit's capture uses (bfloat16 autocast with the weights cast once where the CPU
multiplies bfloat16 natively, float32 otherwise; glibc's heap kept, hopaudit/heap.py):
``plain_forward_seconds=`` and ``non_forward_share=`` (hopaudit's seconds over it: what
everything but the forward costs; issue 25's target on a float32-only CPU is 1.10). By hand
runs on glibc's heap as it comes, as a user's own code would.

Then hopaudit with ``compile=True`` twice over one fresh inductor cache: ``_cold`` pays the
whole compilation (a user's first compiled audit on a machine), ``_warm`` reads the cache.

Prints the CPU, ``wall_ratio=`` (by hand / hopaudit; target >= 3), ``wall_ratio_autocast_off=``,
``wall_ratio_compile_cold=``, ``wall_ratio_compile_warm=``,
``peak_rss_ratio=`` (hopaudit / by hand; target <= 0.5), ``peak_rss_above_model_ratio=`` (the
same, less the loaded model), and ``max_rel_diff_median_nn=`` (per-layer median nearest
distances against the float32 ones by hand; target <= 0.01), for both hopaudit runs.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _tokens(tokenizer, n_seq: int, length: int):
    import hopaudit
    from hopaudit.data import prepare_data

    return prepare_data(
        hopaudit.zoo.corpus("pydoc"), tokenizer, max_length=length, max_sequences=n_seq
    )


def worker_hopaudit(n_seq: int, length: int, autocast: str = "auto", compile: bool = False) -> dict:
    import hopaudit

    model, tok = hopaudit.zoo.smollm2()
    data = _tokens(tok, n_seq, length)
    rss_model = _rss_mb()
    t = time.perf_counter()
    a = hopaudit.audit(
        model, data, normalize="none", progress=False, autocast=autocast, compile=compile
    )
    wall = time.perf_counter() - t
    layers = a.layers
    # hidden_states[i + 1] is block i's raw output for i < L - 1; the last one is `final`.
    medians = {row.name: float(row.nn_median) for row in layers.itertuples()}
    return {
        "wall": wall,
        "rss": _rss_mb(),
        "rss_model": rss_model,
        "medians": medians,
        "compute_dtype": a.summary()["compute_dtype"],
        "timings": a.timings,
    }


def worker_manual(n_seq: int, length: int) -> dict:
    import torch
    import umap
    from sklearn.neighbors import NearestNeighbors

    import hopaudit

    model, tok = hopaudit.zoo.smollm2()
    data = _tokens(tok, n_seq, length)
    rss_model = _rss_mb()
    t = time.perf_counter()
    n_layers = model.config.num_hidden_layers
    kept: list[list[np.ndarray]] = [[] for _ in range(n_layers + 1)]
    with torch.inference_mode():
        for start in range(0, data.num_sequences, 32):
            ids = data.input_ids[start : start + 32]
            out = model(ids, output_hidden_states=True)
            for i, h in enumerate(out.hidden_states):
                kept[i].append(h[:, -1].float().numpy())
    names = [f"model.layers.{i}" for i in range(n_layers - 1)] + ["final"]
    medians = {}
    for i, name in enumerate(names):
        x = np.concatenate(kept[i + 1])
        dist, _ = NearestNeighbors(n_neighbors=2, algorithm="brute").fit(x).kneighbors(x)
        medians[name] = float(np.median(dist[:, 1]))
    embed = [names[0], names[(n_layers - 1) // 2], names[-2], names[-1]]
    for name in embed:
        x = np.concatenate(kept[names.index(name) + 1])
        umap.UMAP(n_neighbors=15).fit_transform(x)
    wall = time.perf_counter() - t
    return {"wall": wall, "rss": _rss_mb(), "rss_model": rss_model, "medians": medians}


def worker_plain(n_seq: int, length: int) -> dict:
    """The forward alone, as hopaudit's capture runs it: its numerics, its batch size, its
    kept heap (hopaudit/heap.py)."""
    import torch

    import hopaudit
    from hopaudit.capture.batching import choose_batch_size, layer_bytes
    from hopaudit.heap import kept_heap
    from hopaudit.model.precision import autocast_context, cast_weights_once, compute_dtype

    model, tok = hopaudit.zoo.smollm2()
    data = _tokens(tok, n_seq, length)
    device = torch.device("cpu")
    amp = compute_dtype(model, device, "auto")
    one_layer = layer_bytes(model, data, "last")  # the batch hopaudit's capture chooses
    batch = choose_batch_size(
        model, int(data.input_ids.shape[1]), data.num_sequences, device, one_layer
    )
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
    return {"wall": time.perf_counter() - t, "dtype": str(amp), "batch": batch}


def _run_worker(kind: str, n_seq: int, length: int, env: dict | None = None) -> dict:
    out = subprocess.run(
        [
            sys.executable,
            __file__,
            "--worker",
            kind,
            "--sequences",
            str(n_seq),
            "--length",
            str(length),
        ],
        check=True,
        capture_output=True,
        text=True,
        env=None if env is None else {**os.environ, **env},
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sequences", type=int, default=1000)
    p.add_argument("--length", type=int, default=64)
    p.add_argument(
        "--rounds", type=int, default=2, help="hopaudit and by hand, alternated, this many times"
    )
    p.add_argument(
        "--worker", choices=["hopaudit", "hopaudit_off", "hopaudit_compile", "manual", "plain"]
    )
    args = p.parse_args()
    if args.worker:
        fns = {
            "hopaudit": worker_hopaudit,
            "hopaudit_off": lambda n, m: worker_hopaudit(n, m, autocast="off"),
            "hopaudit_compile": lambda n, m: worker_hopaudit(n, m, compile=True),
            "manual": worker_manual,
            "plain": worker_plain,
        }
        print(json.dumps(fns[args.worker](args.sequences, args.length)))
        return

    walls: dict[str, list[float]] = {"hopaudit": [], "manual": []}
    for r in range(args.rounds):  # the host's speed drifts: each round's ratio, then the median
        for kind in ("hopaudit", "manual") if r % 2 == 0 else ("manual", "hopaudit"):
            run = _run_worker(kind, args.sequences, args.length)
            walls[kind].append(run["wall"])
            if kind == "hopaudit":
                hop = run
            else:
                man = run
    ratios = [m / h for m, h in zip(walls["manual"], walls["hopaudit"], strict=True)]
    hop_wall, man_wall = (statistics.median(walls[k]) for k in ("hopaudit", "manual"))
    off = _run_worker("hopaudit_off", args.sequences, args.length)
    plain = _run_worker("plain", args.sequences, args.length)
    with tempfile.TemporaryDirectory() as cache:  # compile=True, cold then warm cache
        env = {"TORCHINDUCTOR_CACHE_DIR": cache}
        cold = _run_worker("hopaudit_compile", args.sequences, args.length, env)
        warm = _run_worker("hopaudit_compile", args.sequences, args.length, env)
    common = sorted(set(hop["medians"]) & set(man["medians"]))

    def max_rel(run: dict) -> float:
        return max(abs(run["medians"][k] - man["medians"][k]) / man["medians"][k] for k in common)

    rel = max_rel(hop)
    from hopaudit.model.precision import cpu_description

    cpu = cpu_description()
    print(" ".join(f"{k}={v}" for k, v in cpu.items() if not isinstance(v, (list, dict))))
    print(f"sequences={args.sequences} length={args.length} layers_compared={len(common)}")
    print(f"hopaudit_compute_dtype={hop['compute_dtype']}")
    timings = " ".join(f"{k}={v:.1f}" for k, v in hop["timings"].items())
    print(f"hopaudit_seconds={hop_wall:.1f} (last round: {timings})")
    print(f"by_hand_seconds={man_wall:.1f}")
    print(
        f"plain_forward_seconds={plain['wall']:.1f} (dtype {plain['dtype']}, batch "
        f"{plain['batch']}) non_forward_share={hop_wall / plain['wall']:.3f}"
    )
    print(
        "wall_seconds_rounds="
        + ",".join(
            f"{h:.1f}/{m:.1f}" for h, m in zip(walls["hopaudit"], walls["manual"], strict=True)
        )
        + " (hopaudit/by hand)"
    )
    print(f"wall_ratio={statistics.median(ratios):.2f}  (by hand / hopaudit, median of rounds)")
    print(
        f"hopaudit_autocast_off_seconds={off['wall']:.1f} "
        f"wall_ratio_autocast_off={man_wall / off['wall']:.2f} "
        f"max_rel_diff_median_nn_autocast_off={max_rel(off):.4f}"
    )
    for label, run in (("cold", cold), ("warm", warm)):
        timings = " ".join(f"{k}={v:.1f}" for k, v in run["timings"].items())
        print(
            f"hopaudit_compile_{label}_seconds={run['wall']:.1f} ({timings}) "
            f"wall_ratio_compile_{label}={man_wall / run['wall']:.2f} "
            f"max_rel_diff_median_nn_compile_{label}={max_rel(run):.4f}"
        )
    print(f"hopaudit_peak_rss_mb={hop['rss']:.0f} by_hand_peak_rss_mb={man['rss']:.0f}")
    print(f"peak_rss_ratio={hop['rss'] / man['rss']:.2f}  (hopaudit / by hand; target <= 0.5)")
    above_h = hop["rss"] - hop["rss_model"]
    above_m = man["rss"] - man["rss_model"]
    print(f"peak_rss_above_model_ratio={above_h / max(above_m, 1e-9):.2f}")
    print(f"max_rel_diff_median_nn={rel:.4f}  (target <= 0.01)")


if __name__ == "__main__":
    main()
