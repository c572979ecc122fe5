"""Audit.query with known answers: a tiny GPT-2 memorizes half of a text, then is asked about
its members, perturbed members, held-out texts and its own generations.

``train_tiny_gpt2`` trains a tiny GPT-2 (2 blocks, hidden 128) on half of the 64-token
sequences of some pydoc prose (as benchmarks/membership.py); the audit stores the trained half
(``extraction=True``: 32 + 32 tokens). Queries, as token ids (one 64-token sequence each):
(a) the members themselves; (b) members with 1, 2 or 4 tokens of their 32-token prefix replaced
by random tokens; (c) the held-out half; (d) the model's greedy generation from each member's
prefix (prefix + 32 generated tokens). Each (b) and (d) query has a source: the member it came
from. Prints, with 95 % intervals (Wilson for rates, percentile bootstrap for AUROCs and
differences)::

    nearest_is_source_<kind>_<layer>=  rate at which the nearest stored sequence is the source
                                       (kind: members, perturbed_1/2/4, generated)
    auroc_ratio_perturbed_vs_heldout_<layer>=  AUROC of -(distance / r_hat): perturbed (all m)
                                       against held-out queries
    inside_source_ball_<extracting|not_extracting>_<layer>=  among perturbed queries, the rate
                                       inside their source's ball (docs/theory.md §2), split
                                       by whether greedy decoding still reproduces the suffix
    inside_source_ball_difference_<layer>=  extracting minus not extracting
    extraction_rate_<kind>=            how many queries of each kind still extract

Inside the source's ball is the same as "the nearest pattern is the source and the query lies
within its radius nn/2": the balls of docs/theory.md do not overlap.

``--smollm2``: SmolLM2-135M audited on 256 pydoc sequences of 64 tokens (UMAP of four layers),
then a query of 10 texts timed after one untimed warm-up, ``--rounds`` times; prints the median
of ``smollm2_query_forward_seconds`` (the hooked forward, which also gives the extraction:
docs/theory.md §6), ``smollm2_query_beyond_seconds`` (everything else: tokenizing, checks,
search of every layer, placement on the UMAPs; target <= 2 s) and the total. ``--umap-cost N``
prints what keeping umap's fitted ``UMAP`` object for an N-point layer would cost
(``umap_object_pickle_mb``, ``umap_object_fit_seconds``) against what the audit keeps for
placement (two integers per layout, ``kept_bytes``).

Usage: ``python benchmarks/query.py [--steps 600] [--queries 64] [--smollm2] [--umap-cost 5000]``.
"""

from __future__ import annotations

import argparse
import math
import pickle
import statistics
import sys
import time
from pathlib import Path

_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))

import numpy as np  # noqa: E402

PREFIX, SUFFIX = 32, 32
Z95 = 1.959963984540054


def wilson(hits: int, n: int) -> tuple[float, float, float]:
    """(rate, lo, hi): the Wilson score interval at 95 %."""
    if n == 0:
        return math.nan, math.nan, math.nan
    p = hits / n
    centre = (p + Z95**2 / (2 * n)) / (1 + Z95**2 / n)
    half = Z95 * math.sqrt(p * (1 - p) / n + Z95**2 / (4 * n * n)) / (1 + Z95**2 / n)
    return p, max(0.0, centre - half), min(1.0, centre + half)


def line(name: str, value: float, lo: float, hi: float, n: int | str) -> None:
    print(f"{name}={value:.4f} [{lo:.4f}, {hi:.4f}] n={n}")


def _train(steps: int, max_chars: int, layers: int):
    from hopaudit.zoo import corpus, train_tiny_gpt2

    docs = corpus("pydoc", max_chars=max_chars)
    return train_tiny_gpt2(
        docs, fraction=0.5, steps=steps, seed=0, n_layer=layers, n_embd=128, n_head=4,
        seq_len=64, progress=False,
    )  # fmt: skip


def perturb(ids, m: int, vocab: int, rng: np.random.Generator):
    """Each row with ``m`` distinct positions of its prefix set to other random tokens."""
    out = ids.clone()
    for row in out:
        for pos in rng.choice(PREFIX, size=m, replace=False):
            new = int(rng.integers(vocab - 1))
            row[pos] = new + (new >= int(row[pos]))  # any token but the original
    return out


def _queries(run, n: int, rng: np.random.Generator):
    import torch

    from hopaudit.evidence.extract import extract

    members = run.train_ids[:n]
    vocab = int(run.model.config.vocab_size)
    kinds = {"members": members}
    for m in (1, 2, 4):
        kinds[f"perturbed_{m}"] = perturb(members, m, vocab, rng)
    ex = extract(
        run.model, members, torch.ones_like(members), prefix=PREFIX, suffix=SUFFIX,
        progress=False, full=True,
    )  # fmt: skip
    kinds["generated"] = torch.cat([members[:, :PREFIX], torch.as_tensor(ex.generated)], 1)
    heldout = run.heldout_ids[: max(n, 2)]
    return kinds, heldout


def _source_rates(audit, results: dict, layers: list[str]) -> None:
    for kind, r in results.items():
        if kind == "heldout":
            continue
        first = r.nearest[r.nearest["rank"] == 1]
        for name in layers:
            at = first[first["name"] == name]
            hits = int((at["sequence"].to_numpy() == at["query"].to_numpy()).sum())
            line(f"nearest_is_source_{kind}_{name}", *wilson(hits, len(at)), len(at))


def _auroc_lines(results: dict, layers: list[str], n_boot: int) -> None:
    from hopaudit.evidence.membership import auroc, bootstrap_auroc

    perturbed = [results[f"perturbed_{m}"] for m in (1, 2, 4)]
    for name in layers:
        pos = np.concatenate([_ratio(r, name) for r in perturbed])
        neg = _ratio(results["heldout"], name)
        lo, hi = bootstrap_auroc(-pos, -neg, n_boot=n_boot, seed=0)
        line(f"auroc_ratio_perturbed_vs_heldout_{name}", auroc(-pos, -neg), lo, hi,
             f"{pos.size}+{neg.size}")  # fmt: skip


def _ratio(result, name: str) -> np.ndarray:
    first = result.nearest[(result.nearest["rank"] == 1) & (result.nearest["name"] == name)]
    return first.sort_values("query")["distance_over_r_hat"].to_numpy(float)


def _inside_lines(results: dict, layers: list[str], n_boot: int) -> None:
    rng = np.random.default_rng(0)
    frames = [results[f"perturbed_{m}"] for m in (1, 2, 4)]
    extracted = np.concatenate(
        [r.scores.sort_values("query")["extracted"].to_numpy() for r in frames]
    )
    for name in layers:
        inside = []
        for r in frames:
            first = r.nearest[(r.nearest["rank"] == 1) & (r.nearest["name"] == name)]
            first = first.sort_values("query")
            inside.append(
                (first["sequence"].to_numpy() == first["query"].to_numpy())
                & first["inside_ball"].to_numpy(bool)
            )
        inside_all = np.concatenate(inside)
        a, b = inside_all[extracted], inside_all[~extracted]
        for label, x in (("extracting", a), ("not_extracting", b)):
            line(f"inside_source_ball_{label}_{name}", *wilson(int(x.sum()), x.size), x.size)
        if a.size and b.size:
            diffs = [
                rng.choice(a, a.size).mean() - rng.choice(b, b.size).mean() for _ in range(n_boot)
            ]
            lo, hi = np.percentile(diffs, [2.5, 97.5])
            line(f"inside_source_ball_difference_{name}", a.mean() - b.mean(), lo, hi,
                 f"{a.size}+{b.size}")  # fmt: skip


def known_answers(args: argparse.Namespace) -> None:
    import hopaudit

    run = _train(args.steps, args.max_chars, args.layers)
    rng = np.random.default_rng(0)
    n = min(args.queries, len(run.train_ids))
    audit = hopaudit.audit(
        run.model, run.train_ids, tokenizer=run.tokenizer, progress=False, umap_layers=[],
        positions=args.positions,
        bootstrap=0, extraction=True,
    )  # fmt: skip
    print(f"members_stored={len(audit.texts)} queries_per_kind={n} positions={args.positions}")
    print(f"train_loss_members={run.loss_on(run.train_ids):.4f}")
    kinds, heldout = _queries(run, n, rng)
    results = {k: audit.query(ids, k=1, place=False) for k, ids in kinds.items()}
    results["heldout"] = audit.query(heldout, k=1, place=False)
    for kind, r in results.items():
        x = r.scores["extracted"].to_numpy(bool)
        line(f"extraction_rate_{kind}", *wilson(int(x.sum()), x.size), x.size)
    layers = [n for n in audit.layer_names if n in audit.reports]
    _source_rates(audit, results, layers)
    _auroc_lines(results, layers, args.boot)
    _inside_lines(results, layers, args.boot)


def smollm2_timing(args: argparse.Namespace) -> None:
    import torch

    import hopaudit
    from hopaudit.data import prepare_data
    from hopaudit.model.precision import native_bf16
    from hopaudit.zoo import corpus, smollm2

    model, tok = smollm2()
    docs = corpus("pydoc")
    ids = prepare_data(docs, tok, max_length=64, max_sequences=266).input_ids
    audit = hopaudit.audit(model, ids[:256], tokenizer=tok, progress=False, bootstrap=0)
    texts = [tok.decode(row) for row in ids[256:266]]
    print(f"cpu_native_bf16={native_bf16(torch.device('cpu'))} "
          f"compute_dtype={audit.summary()['compute_dtype']!r}")  # fmt: skip
    audit.query(texts)  # warm-up: numba's jit of the placement, indexes, caches
    parts: dict[str, list[float]] = {"forward": [], "beyond": [], "total": []}
    for _ in range(args.rounds):
        r = audit.query(texts)
        s = r.seconds
        parts["forward"].append(s["forward"])
        parts["beyond"].append(s["total"] - s["forward"])
        parts["total"].append(s["total"])
    for key, values in parts.items():
        print(f"smollm2_query_{key}_seconds={statistics.median(values):.3f}")
    print(f"smollm2_query_layers={len(r.nearest['name'].unique())} "
          f"placed_layers={len(r.placements['name'].unique())} rounds={args.rounds}")  # fmt: skip


def umap_cost(n: int) -> None:
    """What keeping umap's fitted object would cost, against the two integers kept."""
    import umap

    from hopaudit.search.backends import build_index, knn_self

    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, 576)).astype(np.float32)
    index = build_index(x, "hnsw")
    ids, dists = knn_self(index, x, 14)
    ids = np.concatenate([np.arange(n)[:, None], ids], 1)
    dists = np.concatenate([np.zeros((n, 1), np.float32), dists], 1)
    t0 = time.perf_counter()
    reducer = umap.UMAP(n_neighbors=15, init="pca", n_epochs=60, random_state=0, n_jobs=1,
                        precomputed_knn=(ids, dists, None)).fit(x)  # fmt: skip
    seconds = time.perf_counter() - t0
    size = len(pickle.dumps(reducer))
    print(f"umap_object_points={n} umap_object_pickle_mb={size / 2**20:.1f} "
          f"umap_object_fit_seconds={seconds:.1f} layout_mb={n * 2 * 4 / 2**20:.2f} "
          "kept_bytes=16")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--max-chars", type=int, default=40_000)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--queries", type=int, default=64, help="queries of each kind")
    parser.add_argument("--positions", default="last", help="the audit's positions (last, mean)")
    parser.add_argument("--boot", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--smollm2", action="store_true")
    parser.add_argument("--umap-cost", type=int, default=0, metavar="N")
    parser.add_argument("--no-known-answers", action="store_true", help="skip the tiny GPT-2")
    args = parser.parse_args()
    if not args.no_known_answers:
        known_answers(args)
    if args.smollm2:
        smollm2_timing(args)
    if args.umap_cost:
        umap_cost(args.umap_cost)


if __name__ == "__main__":
    main()
