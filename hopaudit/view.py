"""The view protocol: one state, three renderings (docs/architecture.md, "The view protocol").

A result with a view (:class:`~hopaudit.result.Audit`, :class:`~hopaudit.comparison.Comparison`,
:class:`~hopaudit.comparison.Timeline`) gives ``widget_state(**options)``: JSON scalars and
self-describing binary arrays (:mod:`hopaudit.schema`). The live widget, the HTML report and the
notebook output are renderings of that state, written once here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Protocol, runtime_checkable


@runtime_checkable
class Viewable(Protocol):
    """Anything :func:`hopaudit.report.to_html` and the widgets can draw."""

    def widget_state(self, **options: Any) -> dict[str, Any]: ...


class View:
    """Mixin: ``widget()``, ``to_html()`` and the notebook's ``_repr_mimebundle_`` from
    ``widget_state()``. ``_widget`` names the anywidget class in :mod:`hopaudit.widget`."""

    _widget: ClassVar[str] = "AuditWidget"

    def widget_state(self, **options: Any) -> dict[str, Any]:
        raise NotImplementedError

    def widget(self, **options: Any) -> Any:
        """The interactive anywidget view; ``options`` go to ``widget_state``."""
        from . import widget

        return getattr(widget, self._widget)(self.widget_state(**options))

    def to_html(self, path: str | Path, **options: Any) -> Path:
        """Write one self-contained HTML report that opens offline in any browser (see
        :func:`hopaudit.report.to_html`); ``options`` go to ``widget_state``."""
        from .report import to_html

        return to_html(self, path, **options)

    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        """The widget view, plus a static ``text/html`` snapshot and a readable ``text/plain``
        (hopaudit/snapshot.py) for whatever shows the notebook without a kernel."""
        from . import widget
        from .snapshot import snapshot_html, snapshot_text

        state = self.widget_state()
        bundle = getattr(widget, self._widget)(state)._repr_mimebundle_(**kwargs)
        data, metadata = bundle if isinstance(bundle, tuple) else (bundle, {})
        data = {
            **data,
            "text/html": snapshot_html(state),
            "text/plain": snapshot_text(state),
        }
        return data, metadata
