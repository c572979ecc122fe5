"""The local engine: the capture in this process, then every layer measured one at a time
(its index and graph moved to disk with a store, so memory holds one layer's work)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from hopaudit.capture.forward import capture
from hopaudit.engines.options import AuditOptions
from hopaudit.errors import SearchError
from hopaudit.heap import release_freed_memory
from hopaudit.layer.embedding import lay_out, layout_inputs
from hopaudit.layer.files import LayerFiles, compact_graph
from hopaudit.layer.measuring import measure
from hopaudit.layer.patterns import patterns_of
from hopaudit.progress import tqdm

__all__ = ["LAYER_BAR_ROWS", "LocalEngine", "settle"]

#: Patterns from which a layer gets a bar of its own (index, then search): smaller layers take
#: seconds, while 10^6 patterns take minutes per layer (benchmarks/README.md).
LAYER_BAR_ROWS = 50_000


class LocalEngine:
    name = "local"

    def __init__(self, options: AuditOptions) -> None:
        self.options = options

    def check(self, stacks: list, tokens: Any = None) -> None:
        """Every model and every input form is audited locally."""

    def store_root(self, store: Any) -> tuple[Any, Any]:
        return store, None

    def capture(
        self,
        model: Any,
        tokens: Any,
        stacks: list,
        *,
        where: Any,
        store_dtype: Any,
        peak: Any,
        extraction: tuple[int, int] | None = None,
    ) -> Any:
        o = self.options
        return capture(
            model,
            tokens,
            stacks,
            positions=o.positions,
            store_dtype=store_dtype,
            store=where,
            batch_size=o.batch_size,
            progress=o.progress,
            autocast=o.autocast,
            extraction=extraction,
            compile=o.compile,
        )

    def measure(
        self, stored: Any, held: Any, layer_files: Any, measure_kwargs: dict, peak: Any
    ) -> tuple[dict, dict]:
        progress = self.options.progress
        reports, skipped = {}, {}
        names = stored.layer_names
        bar = tqdm(names, desc="measuring layers", disable=not progress or not names)
        for i, name in enumerate(bar):
            rows = stored.store.shape(name)[0]
            try:
                with _layer_bar(name, rows, progress and rows >= LAYER_BAR_ROWS) as step:
                    rep = measure(
                        stored.store.get(name),
                        None if held is None else held.store.get(name),
                        progress=step,
                        **measure_kwargs,
                    )
            except SearchError as exc:
                skipped[name] = str(exc)
            else:
                reports[name] = settle(rep, i, name, stored, layer_files, self.options.graph_dtype)
                del rep
            # one layer at a time: its mapped pages leave the resident set before the next
            stored.store.release(name)
            if held is not None:
                held.store.release(name)
            # a layer frees arrays of a few MB (graphs, chunks) that fragment glibc's heap;
            # without a trim the heap grew by part of a layer for every layer measured
            release_freed_memory()
            peak.mark(f"measuring {name}")
        return reports, skipped

    def embed(self, stored: Any, reports: dict, names: list[str], device: Any, peak: Any) -> dict:
        """Every chosen layer's neighbours and start first, then the layouts: umap's import (a
        fixed working set, docs/performance.md) is never held beside a layer's patterns."""
        o = self.options
        inputs = {}
        bar = tqdm(names, desc="UMAP neighbours", disable=not o.progress or not names)
        for name in bar:
            inputs[name] = layout_inputs(
                reports[name], stored.store.get(name), o.umap_max_points, o.seed, device
            )
            stored.store.release(name)
            release_freed_memory()
            peak.mark(f"UMAP neighbours {name}")
        out = {}
        for name in tqdm(names, desc="UMAP", disable=not o.progress or not names):
            out[name] = lay_out(reports[name], inputs.pop(name), stored.rows_of(name)[0], o.seed)
            release_freed_memory()
            peak.mark(f"UMAP {name}")
        return out

    def finish(self, stored: Any, held: Any, reports: dict, scratch: Any) -> None:
        """Nothing: the local engine's stores are the audit's own."""


@contextlib.contextmanager
def _layer_bar(name: str, rows: int, show: bool) -> Iterator[Any]:
    """A bar over one layer's index build and search (each row counted once in each), or None."""
    if not show:
        yield None
        return
    bar = tqdm(total=2 * rows, desc=f"{name}: index", unit="pattern", leave=False)
    shown = ["index"]  # the stage named, kept here: a disabled bar (TQDM_DISABLE) has no desc

    def step(stage: str, done: int) -> None:
        if shown[0] != stage:
            shown[0] = stage
            bar.set_description_str(f"{name}: {stage}")
        bar.update(done)

    try:
        yield step
    finally:
        bar.close()


def settle(
    rep: Any, i: int, name: str, stored: Any, layer_files: LayerFiles | None, graph_dtype: str
) -> Any:
    """A measured layer's graph compacted and, with layer files, its index and graph moved to
    disk (opened on demand), so the next layer starts with only this layer's scalars held."""
    ids, dists = compact_graph(rep.knn_ids, rep.knn_dists, graph_dtype)
    if layer_files is None:
        rep.knn_ids, rep.knn_dists = ids, dists
        return rep
    rep.knn_ids, rep.knn_dists = layer_files.put_graph(i, ids, dists, graph_dtype)
    del ids, dists
    rep.index = layer_files.put_index(i, rep.index, patterns_of(stored, name, rep))
    return rep
