"""How an audit's stages grow with the patterns per layer, and what memory one layer costs.

    python benchmarks/scale.py                       # 1e4 and 1e5 patterns x 3 layers
    python benchmarks/scale.py --sizes 1e4,1e5,1e6 --layers 2
    python benchmarks/scale.py --smollm2             # + a real SmolLM2 positions="all" audit

Synthetic part: for each size n, a fresh process writes ``--layers`` layers of n activation-like
576-d patterns (SmolLM2's width; a low-rank signal plus noise, float16) into an activation store
on disk, then measures them as ``audit(store=...)`` does, one layer at a time (``measure``, then
the layer's index and graph moved to ``<store>.layers/``), with ``--index`` (default ``auto``)
at every size, and a UMAP of one layer on ``audit()``'s default subsample. It prints
``seconds_<stage>_<n>=`` for the stages index, search (the self kNN), geometry (the rest of
``measure``) and umap, per layer, ``peak_rss_mb_<n>=`` (the process's high-water mark while
measuring), and ``peak_rss_over_one_layer_<n>=``: the peak above the process before measuring,
over one layer's float32 vectors plus its saved index (hnswlib's file; none for others). Then the
fitted ``growth_exponent_<stage>=`` (slope of log seconds on log n; target for index and
search <= 1.15) and ``peak_rss_over_one_layer=`` at the largest size (target <= 1.5).

``--smollm2``: SmolLM2-135M on the zoo's pydoc corpus (about 1.1e5 tokens), ``positions="all"``,
a store on disk, blocks 0, 15 and 29 plus the final norm: ``seconds_capture_smollm2=``,
``patterns_per_layer_smollm2=``, ``seconds_measure_smollm2=``, ``peak_rss_mb_smollm2=`` and
where the peak was reached. Needs the model in the zoo's cache.

``--all-tokens N`` (e.g. 1e6; or ``1e4,1e5,1e6``, each in a fresh process, then
``growth_exponent_<stage>_all``): ``audit(positions="all", store=..., index=--index)`` of N
tokens, so N patterns per layer, with SmolLM2's real weights cut after its first block (the
forward pass is one block deep, so the capture takes minutes, not hours, on two cores: the
measuring is what grows with N), on CPython's own standard-library source:
``patterns_per_layer_all=``, ``seconds_capture_all=``, ``seconds_measure_per_layer_all=`` (of
it ``seconds_index_per_layer_all=`` and ``seconds_search_per_layer_all=``), ``seconds_umap_all=``,
``peak_rss_mb_all=``, ``peak_rss_over_one_layer_all=``; per layer the recall the audit reports
(``reported_recall_at_1_<layer>_all=``) and the recall of its kNN graph on 1 000 sampled
patterns against exact search, by distance (``recall_at_1_<layer>_all=``,
``recall_at_k_<layer>_all=``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

import numpy as np

_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))

WIDTH = 576  # SmolLM2-135M's hidden size
RANK = 32  # the synthetic patterns' signal dimension
STAGES = ("index", "search", "geometry", "umap")


def say(name: str, value: object) -> None:
    print(f"{name}={value:.4g}" if isinstance(value, float) else f"{name}={value}", flush=True)


def write_layers(store_path: Path, n: int, layers: int, seed: int = 0):
    """``layers`` layers of n activation-like rows (float16), written in chunks."""
    from hopaudit.capture.store import ActivationStore

    names = [f"layer{i}" for i in range(layers)]
    st = ActivationStore(names, dtype=np.float16, path=store_path)
    rng = np.random.default_rng(seed)
    for name in names:
        basis = rng.normal(size=(RANK, WIDTH)).astype(np.float32)
        for start in range(0, n, 50_000):
            m = min(50_000, n - start)
            z = rng.normal(size=(m, RANK)).astype(np.float32)
            rows = z @ basis + 0.5 * rng.normal(size=(m, WIDTH)).astype(np.float32)
            st.append(name, rows)
    st.finalize()
    return st


def child(n: int, layers: int, index: str) -> dict:
    """One size in this process: returns stage seconds and memory."""
    import hopaudit.layer.measuring  # noqa: F401  (sys.modules below needs it imported)
    from hopaudit.engines.local import settle
    from hopaudit.engines.memory import current_rss, peak_rss, reset_peak
    from hopaudit.layer.embedding import embed_layer
    from hopaudit.layer.files import LayerFiles, layer_files_path

    measure_mod = sys.modules["hopaudit.layer.measuring"]
    work = Path(tempfile.mkdtemp(prefix="hopaudit-scale-"))
    try:
        st = write_layers(work / "store", n, layers)
        files = LayerFiles(layer_files_path(work / "store"))
        stored = types.SimpleNamespace(store=st)
        import gc

        with StageTimer() as timer:
            # warm: the imports and allocator pools of a first measure() are not one layer's cost
            warm = np.random.default_rng(1).normal(size=(64, WIDTH)).astype(np.float16)
            measure_mod.measure(warm, index=index, k=15)
            del warm
            timer.seconds.update(index=0.0, search=0.0)
            gc.collect()
            base = current_rss()
            reset_peak()
            reports = {}
            t_all = time.perf_counter()
            for i, name in enumerate(st.layer_names):
                rep = measure_mod.measure(st.get(name), index=index, k=15, n_blocks=layers)
                reports[name] = settle(rep, i, name, stored, files, "float32")
                del rep
                st.release(name)
            measured = time.perf_counter() - t_all
        peak = peak_rss()
        times = {**timer.seconds, "geometry": measured - sum(timer.seconds.values())}
        saved = work / "store.layers" / "layer_000.bin"  # an HNSW graph; other kinds: none
        index_bytes = saved.stat().st_size if saved.exists() else 0
        t = time.perf_counter()
        name = st.layer_names[0]
        embed_layer(reports[name], st.get(name), np.zeros(n, np.int64), 20_000, 0, None)
        times["umap"] = time.perf_counter() - t
        one_layer = n * WIDTH * 4 + index_bytes
        return {
            "seconds": {s: times[s] / (1 if s == "umap" else layers) for s in STAGES},
            "peak_rss_mb": peak / 2**20,
            "over_one_layer": (peak - base) / one_layer,
            "one_layer_mb": one_layer / 2**20,
        }
    finally:
        import shutil

        shutil.rmtree(work, ignore_errors=True)


def project_fig2(
    seconds_per_pattern: float, width: int, tokens_per_second: float, workers: int
) -> dict[str, float]:
    """Projected seconds of the paper's Fig. 2 audit (benchmarks/gpu.py's constants: 80 000
    chunks x 256 tokens of GPT-2 medium, every block and the final norm) on ``workers``
    workers: the capture splits its tokens over the actors; each layer is one task (80 000
    patterns, the last token of each chunk), at the measured cost per pattern scaled by width
    (distance evaluations are linear in it); layers run ``workers`` at a time."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("hopaudit_benchmark_gpu", _HERE / "gpu.py")
    gpu = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu)
    layers = gpu.GPT2_MEDIUM["n_layer"] + 1
    patterns, width_big = gpu.FIG2_CHUNKS, gpu.GPT2_MEDIUM["n_embd"]
    capture = gpu.FIG2_CHUNKS * gpu.FIG2_TOKENS / (tokens_per_second * workers)
    per_layer = seconds_per_pattern * patterns * width_big / width
    measure = per_layer * math.ceil(layers / workers)
    return {"capture": capture, "measure": measure, "total": capture + measure}


def gpt2_medium_flops_per_token(seq: int = 256) -> float:
    """Forward FLOPs per token of GPT-2 medium (Kaplan et al. 2020, Table 1: 2N + 2 n_layer
    n_ctx d, N = 12 n_layer d^2 the non-embedding parameters) plus the logits the capture's
    loss needs (2 d vocab): what a GPU's sustained FLOP/s divides into tokens per second."""
    layer, d, vocab = 24, 1024, 50257
    return 2 * 12 * layer * d * d + 2 * layer * seq * d + 2 * d * vocab


def smollm2() -> float:
    import hopaudit
    from hopaudit.data import prepare_data

    model, tok = hopaudit.zoo.smollm2()
    data = prepare_data(hopaudit.zoo.corpus("pydoc"), tok, max_length=256)
    blocks = [f"model.layers.{i}" for i in (0, 15, 29)]
    with tempfile.TemporaryDirectory() as tmp:
        a = hopaudit.audit(
            model,
            data,
            positions="all",
            store=f"{tmp}/store",
            blocks=blocks,
            progress=False,
            umap_layers=[],
        )
        s = a.summary()
        say("tokens_smollm2", a.n_tokens)
        say("patterns_per_layer_smollm2", int(a.layers["n_patterns"].min()))
        say("layers_smollm2", len(a.layer_names))
        say("seconds_capture_smollm2", a.timings["capture"])
        say("seconds_measure_smollm2", a.timings["measure"])
        say("seconds_measure_per_layer_smollm2", a.timings["measure"] / len(a.layer_names))
        say("peak_rss_mb_smollm2", s["peak_rss_mb"])
        print(f"# peak reached in: {s['peak_rss_stage']}")
        return a.n_tokens / a.timings["capture"]


def stdlib_source(chars: int) -> list[str]:
    """CPython's standard-library modules (sorted paths, site-packages left out), whole files,
    until ``chars`` characters: a corpus of millions of tokens found on every machine."""
    import sysconfig

    root = Path(sysconfig.get_paths()["stdlib"])
    docs, total = [], 0
    for f in sorted(root.rglob("*.py")):
        if "site-packages" in f.parts or total >= chars:
            continue
        try:
            text = f.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        docs.append(text)
        total += len(text)
    return docs


class StageTimer:
    """Seconds spent in ``measure``'s index build and self search, by wrapping the two."""

    def __init__(self) -> None:
        import hopaudit.layer.measuring  # noqa: F401  (sys.modules below needs it imported)

        self.mod = sys.modules["hopaudit.layer.measuring"]
        self.seconds = {"index": 0.0, "search": 0.0}
        self.real = (self.mod.build_index, self.mod.knn_self)

    def _timed(self, stage, fn):
        def wrapped(*a, **kw):
            t = time.perf_counter()
            out = fn(*a, **kw)
            self.seconds[stage] += time.perf_counter() - t
            return out

        return wrapped

    def __enter__(self) -> StageTimer:
        self.mod.build_index = self._timed("index", self.real[0])
        self.mod.knn_self = self._timed("search", self.real[1])
        return self

    def __exit__(self, *exc) -> None:
        self.mod.build_index, self.mod.knn_self = self.real


def sample_recall(a, name: str, sample: int = 1000, seed: int = 0) -> tuple[float, float]:
    """recall@1 and recall@k of the audit's kNN graph for layer ``name`` on a seeded sample of
    its normalized patterns searched exactly (``search.graph_recall``), by distance."""
    from hopaudit.layer.patterns import layer_patterns
    from hopaudit.search.backends import graph_recall

    rep = a.layer_report(name)
    x = layer_patterns(a.capture.store, name, rep.valid_rows, rep.normalize)
    return graph_recall(x, np.asarray(rep.knn_dists)[:, 1:], sample=sample, seed=seed)


def all_tokens(n_tokens: int, index: str) -> dict:
    """positions="all" over n_tokens tokens: a real audit, n_tokens patterns per layer."""
    import hopaudit
    from hopaudit.data import prepare_data
    from hopaudit.engines.memory import current_rss

    model, tok = hopaudit.zoo.smollm2()
    model.model.layers = model.model.layers[:1]  # cut after block 0: the real weights of it
    model.config.num_hidden_layers = 1
    seq = 256
    data = prepare_data(
        stdlib_source(8 * n_tokens), tok, max_length=seq, max_sequences=-(-n_tokens // seq)
    )
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        base = current_rss()  # the model and the tokens: not the audit's
        with StageTimer() as timer:
            a = hopaudit.audit(
                model,
                data,
                positions="all",
                store=f"{tmp}/store",
                index=index,
                progress=True,
                umap_layers=["final"],
            )
        s = a.summary()
        n = int(a.layers["n_patterns"].min())
        layers = len(a.layer_names)
        files = [p.stat().st_size for p in Path(f"{tmp}/store.layers").glob("*.bin")]
        one_layer = n * a.layers["n"].iloc[0] * 4 + max(files, default=0)
        out["tokens"] = a.n_tokens
        out["patterns_per_layer"] = n
        out["layers"] = layers
        out["index_kind"] = a.layer_report(a.layer_names[0]).index.kind
        out["seconds_capture"] = a.timings["capture"]
        out["seconds_measure_per_layer"] = a.timings["measure"] / layers
        out["seconds_index_per_layer"] = timer.seconds["index"] / layers
        out["seconds_search_per_layer"] = timer.seconds["search"] / layers
        out["seconds_umap"] = a.timings.get("umap", math.nan)
        out["peak_rss_mb"] = s["peak_rss_mb"]
        out["one_layer_mb"] = one_layer / 2**20
        out["peak_rss_over_one_layer"] = (s["peak_rss_mb"] * 2**20 - base) / one_layer
        for name in a.layer_names:
            tag = name.replace(".", "_")
            row = a.layers.set_index("name").loc[name]
            out[f"reported_recall_at_1_{tag}"] = float(row["search_recall_at_1"])
            out[f"reported_recall_at_k_{tag}"] = float(row["search_recall_at_k"])
            r1, rk = sample_recall(a, name)
            out[f"recall_at_1_{tag}"], out[f"recall_at_k_{tag}"] = r1, rk
        print(
            f"# peak reached in: {s['peak_rss_stage']}; the process held {base / 2**20:.0f} MB "
            "(model, tokens) before the audit, left out of the ratio as in the synthetic part",
            file=sys.stderr,
        )
    return out


def fit(ns: list[int], seconds: list[float]) -> float:
    x, y = np.log(ns), np.log(np.maximum(seconds, 1e-9))
    return float(np.polyfit(x, y, 1)[0])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="1e4,1e5", help="patterns per layer, comma separated")
    p.add_argument("--layers", type=int, default=3)
    p.add_argument("--smollm2", action="store_true", help="also the real SmolLM2 audit")
    p.add_argument(
        "--all-tokens",
        default=None,
        help='only real positions="all" audits of this many tokens (one SmolLM2 block), '
        "comma separated (then growth exponents too)",
    )
    p.add_argument("--all-tokens-child", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--index", default="auto", help="the index kind (default auto)")
    p.add_argument(
        "--gpu-tokens-per-second",
        type=float,
        default=None,
        help="one GPU's GPT-2-medium capture rate (benchmarks/gpu.py's "
        "fig2_capture_tokens_per_second) for the Fig. 2 projection",
    )
    p.add_argument(
        "--gpu-tflops",
        type=float,
        default=None,
        help="an ASSUMED sustained bf16 TFLOP/s of one GPU: the Fig. 2 projection then takes "
        "its capture rate from GPT-2 medium's FLOPs per token (no GPU was measured)",
    )
    p.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child is not None:
        print(json.dumps(child(args.child, args.layers, args.index)))
        return 0
    if args.all_tokens_child is not None:
        print(json.dumps(all_tokens(args.all_tokens_child, args.index)))
        return 0
    from hopaudit.model.precision import cpu_lines

    print(*cpu_lines(), sep="\n")  # which machine the lines come from
    print(f"loadavg_start={os.getloadavg()[0]:.2f}", flush=True)
    if args.all_tokens:
        sizes = [int(float(v)) for v in args.all_tokens.split(",")]
        found = {}
        for n in sizes:  # each size in a fresh process
            cmd = [sys.executable, __file__, "--all-tokens-child", str(n), "--index", args.index]
            run = subprocess.run(cmd, check=False, stdout=subprocess.PIPE, text=True)
            if run.returncode:
                return 2
            found[n] = json.loads(run.stdout.strip().splitlines()[-1])
            suffix = "_all" if len(sizes) == 1 else f"_all_{n}"
            for key, value in found[n].items():
                say(f"{key}{suffix}", value)
        if len(sizes) > 1:
            for stage in ("index", "search", "measure"):
                seconds = [found[n][f"seconds_{stage}_per_layer"] for n in sizes]
                say(f"growth_exponent_{stage}_all", fit(sizes, seconds))
        print(f"loadavg_end={os.getloadavg()[0]:.2f}")
        return 0
    sizes = [int(float(s)) for s in args.sizes.split(",")]
    results = {}
    for n in sizes:
        out = subprocess.run(
            [
                sys.executable,
                __file__,
                "--child",
                str(n),
                "--layers",
                str(args.layers),
                "--index",
                args.index,
            ],
            check=False,
            capture_output=True,
            text=True,
            env={**os.environ, "TQDM_DISABLE": "1"},
        )
        if out.returncode:
            sys.stderr.write(out.stderr)
            return 2
        r = json.loads(out.stdout.strip().splitlines()[-1])
        results[n] = r
        for stage in STAGES:
            say(f"seconds_{stage}_{n}", r["seconds"][stage])
        say(f"peak_rss_mb_{n}", r["peak_rss_mb"])
        say(f"one_layer_mb_{n}", r["one_layer_mb"])
        say(f"peak_rss_over_one_layer_{n}", r["over_one_layer"])
    if len(sizes) > 1:
        for stage in STAGES:
            say(
                f"growth_exponent_{stage}",
                fit(sizes, [results[n]["seconds"][stage] for n in sizes]),
            )
    say("peak_rss_over_one_layer", results[max(sizes)]["over_one_layer"])
    print(f"# layers per size: {args.layers}; every size measured in a fresh process")
    rates = {}  # one worker's GPT-2-medium capture rate, by where it came from
    if args.smollm2:
        # per-token cost scales with the non-embedding parameters: SmolLM2-135M ~ 106 M,
        # GPT-2 medium ~ 302 M
        rates["cpu"] = smollm2() * 106 / 302
        say("gpt2_medium_tokens_per_second_cpu_projected", rates["cpu"])
    if args.gpu_tokens_per_second:
        rates["gpu"] = args.gpu_tokens_per_second
    elif args.gpu_tflops:
        rates["gpu"] = args.gpu_tflops * 1e12 / gpt2_medium_flops_per_token()
        say("gpt2_medium_flops_per_token", gpt2_medium_flops_per_token())
        say("gpt2_medium_tokens_per_second_gpu_assumed", rates["gpu"])
    if rates:
        # the per-pattern cost at the measured size nearest Fig. 2's 80 000 patterns per layer
        near = min(sizes, key=lambda n: abs(math.log(n / 80_000)))
        big = results[near]["seconds"]
        per_pattern = (big["index"] + big["search"] + big["geometry"]) / near
        say(f"measure_seconds_per_pattern_576_at_{near}", per_pattern)
        for where, tps in rates.items():
            for key, value in project_fig2(per_pattern, WIDTH, tps, 8).items():
                say(f"projected_fig2_{key}_seconds_8_{where}_workers", value)
        print("# a projection from the costs measured above, not a measurement")
    print(f"loadavg_end={os.getloadavg()[0]:.2f}")
    return 0 if math.isfinite(results[max(sizes)]["over_one_layer"]) else 1


if __name__ == "__main__":
    sys.exit(main())
