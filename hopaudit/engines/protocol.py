"""What an engine does for ``audit()``: capture, measure every layer, lay some out, finish.

``audit()`` chooses the engine once (:func:`choose`) and calls these steps in order; an engine
owns where the work runs (this process, or a Ray cluster), never what is computed: both give
the same :class:`~hopaudit.results.audit.Audit`.
"""

from __future__ import annotations

from typing import Any, Protocol

from hopaudit.engines.options import AuditOptions

__all__ = ["Engine", "choose"]


class Engine(Protocol):
    name: str

    def check(self, stacks: list, tokens: Any = None) -> None:
        """Refuse, before any forward pass, a model or data this engine does not audit."""

    def store_root(self, store: Any) -> tuple[Any, Any]:
        """(where the capture goes, a scratch folder to discard at the end or None)."""

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
        """One pass over ``tokens``: a CaptureResult whose store holds every layer's rows
        (and, with ``extraction=(prefix, suffix)``, each sequence's extracted tokens)."""

    def measure(
        self, stored: Any, held: Any, layer_files: Any, measure_kwargs: dict, peak: Any
    ) -> tuple[dict, dict]:
        """(reports by layer, reasons by skipped layer), one layer at a time."""

    def embed(self, stored: Any, reports: dict, names: list[str], device: Any, peak: Any) -> dict:
        """The UMAP layouts of ``names`` (each with enough patterns)."""

    def finish(self, stored: Any, held: Any, reports: dict, scratch: Any) -> None:
        """Whatever the audit must hold in memory once the engine's own files go."""


def choose(options: AuditOptions) -> Engine:
    """The engine ``options.engine`` names (Ray is imported only for ``engine="ray"``)."""
    if options.engine == "ray":
        from hopaudit.engines.ray import RayEngine

        return RayEngine(options)
    from hopaudit.engines.local import LocalEngine

    return LocalEngine(options)
