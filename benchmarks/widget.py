"""Widget payload size and time to draw, on an audit-sized synthetic state.

31 layers (30 blocks + final), 20 000 sequences, UMAP on 4 layers of 20 000 points each,
packed by the real ``widget_state`` and exported by the real ``to_html``. The sequences' texts
are real prose: consecutive 240-character slices of ``hopaudit.zoo.corpus("pydoc")`` (CPython's
topic help, 465 KB, so the slices repeat only every ~1940 sequences, far beyond gzip's 32 KB
window: no text compresses against a copy of itself). Prints:

- ``report_bytes``: the whole HTML file (page, compressed bundle and CSS, state, texts);
- ``report_bytes_without_texts``: the same file with the texts left out;
- ``report_bytes_texts``: the texts' share (the difference), and ``text_bytes_per_sequence``,
  that share per sequence (against ``text_raw_bytes_per_sequence`` of UTF-8);
- ``fixed_bytes``: the file of an empty state (page, bundle, CSS); ``state_bytes``: the file
  without texts minus that; ``bytes_per_point``: ``state_bytes`` / scatter points;
- ``target_bytes``: the issue's target, 8 bytes per scatter point + 200 KB, and
  ``meets_target`` (the whole file) and ``meets_target_without_texts``. The target's formula
  has no term for the texts: they cost what real prose costs gzipped and base64-encoded
  per sequence, however many points are drawn;
- ``json_over_binary``: how much larger the same arrays are as JSON lists of numbers;
- ``gzip_bytes_with_filters`` and ``gzip_bytes_without_filters``: the state gzipped with and
  without the byte shuffle and delta filters, and ``filters_saving`` (what the filters earn);
- ``time_to_all_panels_ms``: navigation to every panel's ``data-ready`` in Chromium, median of
  runs alternated between a 900 px and a 1400 px wide page (their ratio is printed too).

Run: ``.venv/bin/python benchmarks/widget.py`` (needs /usr/bin/chromium and the built bundle).
"""

from __future__ import annotations

import gzip
import json
import math
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hopaudit.views import report
from hopaudit.views.schema import pack
from hopaudit.views.widget import ESM_PATH, widget_state
from hopaudit.zoo import corpus

N_BLOCKS, D, HIDDEN, POINTS, UMAP_LAYERS, RUNS = 30, 20_000, 576, 20_000, 4, 3
TEXT_CHARS = 240  # widget_state's default text_chars


def prose(n: int, chars: int = TEXT_CHARS) -> list[str]:
    """``n`` consecutive ``chars``-character slices of the pydoc corpus (wrapping around)."""
    text = "\n\n".join(corpus("pydoc"))
    ring = text + text[:chars]
    return [ring[i * chars % len(text) :][:chars] for i in range(n)]


@dataclass
class Rep:
    nn: np.ndarray
    saturation_nn: dict
    r_hat: float
    r_star: float
    r_c: float
    basin_sizes: np.ndarray
    n: int = HIDDEN
    n_patterns: int = D


@dataclass
class Emb:
    xy: np.ndarray
    rows: np.ndarray
    sequence: np.ndarray
    basin: np.ndarray
    ratio: np.ndarray
    n_total: int = D


class SyntheticAudit:
    def __init__(self, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        names = [f"model.layers.{i}" for i in range(N_BLOCKS)] + ["final"]
        r_star = math.sqrt(HIDDEN / (2 * math.pi * math.e))
        self.reports, rows, self.embeddings = {}, [], {}
        umap_at = {0, N_BLOCKS // 2, N_BLOCKS - 1, N_BLOCKS}
        sub = np.sort(rng.choice(D, size=POINTS, replace=False))
        for i, name in enumerate(names):
            nn = rng.gamma(20, 0.5 + 0.02 * i, size=D)
            sat = {f: nn[: int(f * D)] * (1 + (1 - f)) for f in (0.25, 0.5, 0.75)}
            sat[1.0] = nn
            basin = rng.zipf(1.6, size=D) % D
            rep = Rep(
                nn, sat, float(np.median(nn) / 2), r_star, 5.0, np.bincount(basin, minlength=D)
            )
            self.reports[name] = rep
            rows.append(
                {
                    "layer": i,
                    "name": name,
                    "n": HIDDEN,
                    "n_patterns": D,
                    "n_queries": D,
                    "r_hat": rep.r_hat,
                    "r_star": r_star,
                    "r_c": 5.0,
                    "nn_median": float(np.median(nn)),
                    "twonn_id": 10 + i,
                    "floor_low": 2.0,
                    "floor_high": 5.0,
                    "skipped_reason": None,
                }
            )
            if i in umap_at:
                centers = rng.normal(size=(30, 2)) * 8
                xy = centers[rng.integers(0, 30, POINTS)] + rng.normal(size=(POINTS, 2))
                self.embeddings[name] = Emb(
                    xy.astype(np.float32),
                    sub,
                    sub,
                    basin[sub],
                    (nn[sub] / rep.r_hat).astype(np.float32),
                )
        self.layers = pd.DataFrame(rows)
        ce = rng.gamma(8, 0.3, size=D)
        self.samples = pd.DataFrame(
            {
                "sequence": np.arange(D),
                "text": prose(D),
                "cross_entropy": ce,
                "min_k": -2 * ce,
                "top1": rng.random(D),
                "distance_ratio": nn / self.reports["final"].r_hat,
                "basin": basin,
            }
        )

    def summary(self) -> dict:
        return {
            "model": "synthetic-30-blocks",
            "n_params_total": 134_515_008,
            "n_params_blocks": 106_168_320,
            "n_layers": N_BLOCKS,
            "hidden_size": HIDDEN,
            "n_sequences": D,
            "n_tokens": D * 256,
            "cross_entropy": 2.4,
            "floor_low": 2.0,
            "floor_high": 5.0,
            "chinchilla_loss": 3.1,
            "log10_N": 8.03,
            "two_log10_D": 2 * math.log10(D * 256),
            "normalize": "rms",
            "capture_seconds": 60.0,
            "total_seconds": 120.0,
        }


def main() -> None:
    if not ESM_PATH.is_file():
        sys.exit("build the front end first: cd js && npm install && npm run build")
    audit = SyntheticAudit()
    t = time.perf_counter()
    state = widget_state(audit)
    pack_ms = (time.perf_counter() - t) * 1000
    points = sum(m["n"] for m in state["scatter_layers"])
    tmp = Path(tempfile.mkdtemp())
    path = report.to_html(state, tmp / "bench.html")
    no_text = dict(state, text_bytes=pack([], "uint8"), text_offsets=pack([], "uint32"))
    bare = report.to_html(no_text, tmp / "bare.html")
    fixed = report.to_html({}, tmp / "empty.html").stat().st_size
    bundle = len(ESM_PATH.read_bytes())
    report_bytes = path.stat().st_size
    bare_bytes = bare.stat().st_size
    texts = report_bytes - bare_bytes
    n_seq = state["n_sequences"]
    target = 8 * points + 200_000
    scatter_keys = ("scatter_xy", "scatter_basin", "scatter_ratio", "scatter_seq")
    binary = sum(len(state[k]["view"]) for k in scatter_keys)
    as_json = len(
        json.dumps(
            {
                n: {
                    "xy": e.xy.round(4).tolist(),
                    "basin": e.basin.tolist(),
                    "ratio": e.ratio.round(4).tolist(),
                    "sequence": e.sequence.tolist(),
                }
                for n, e in audit.embeddings.items()
            }
        )
    )
    print(f"points={points}")
    print(f"pack_ms={pack_ms:.0f}")
    print(f"report_bytes={report_bytes}")
    print(f"bundle_bytes={bundle} (raw; compressed inside the report)")
    print(f"report_bytes_without_texts={bare_bytes}")
    print(f"report_bytes_texts={texts}")
    print(f"text_bytes_per_sequence={texts / n_seq:.1f}")
    print(f"text_raw_bytes_per_sequence={len(state['text_bytes']['view']) / n_seq:.1f}")
    print(f"fixed_bytes={fixed} (page, bundle and CSS: the report of an empty state)")
    print(f"bytes_per_point={(bare_bytes - fixed) / points:.2f}")
    print(f"target_bytes={target} (8 per point + 200 KB); state_bytes={bare_bytes - fixed}")
    print(f"meets_target={report_bytes <= target}")
    print(f"meets_target_without_texts={bare_bytes <= target}")
    print(f"json_over_binary={as_json / binary:.1f}")
    with_filters = len(gzip.compress(report.pack_state(state), compresslevel=9, mtime=0))
    without = len(gzip.compress(report.pack_state(state, filters={}), compresslevel=9, mtime=0))
    print(f"gzip_bytes_with_filters={with_filters}")
    print(f"gzip_bytes_without_filters={without}")
    print(f"filters_saving={1 - with_filters / without:.3f}")

    from playwright.sync_api import sync_playwright

    args = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
    ]
    times: dict[int, list[float]] = {900: [], 1400: []}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=args)
        for _ in range(RUNS):
            for width in (900, 1400):  # alternated
                ctx = browser.new_context(viewport={"width": width, "height": 1000})
                page = ctx.new_page()
                t = time.perf_counter()
                page.goto(path.as_uri())
                page.wait_for_selector(".hopaudit[data-ready=true]", timeout=120_000)
                times[width].append((time.perf_counter() - t) * 1000)
                ctx.close()
        browser.close()
    med = {w: statistics.median(v) for w, v in times.items()}
    print(f"time_to_all_panels_ms={med[900]:.0f}")
    print(f"time_to_all_panels_ms_1400px={med[1400]:.0f}")
    print(f"time_1400_over_900={med[1400] / med[900]:.2f}")


if __name__ == "__main__":
    main()
