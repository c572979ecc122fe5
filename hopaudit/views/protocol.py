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


def _own(view: Any, owner: Any) -> None:
    """Mark ``view`` as drawn from ``owner`` (a weak reference: the widget must not keep the
    audit alive), so ``Audit.selected(view)`` can refuse another audit's widget."""
    import contextlib
    import weakref

    with contextlib.suppress(TypeError):  # an owner without weak references: no mark
        view.drawn_from = weakref.ref(owner)


class View:
    """Mixin: ``widget()``, ``to_html()`` and the notebook's ``_repr_mimebundle_`` from
    ``widget_state()``. ``_widget`` names the anywidget class in :mod:`hopaudit.widget`."""

    _widget: ClassVar[str] = "AuditWidget"

    def widget_state(self, **options: Any) -> dict[str, Any]:
        raise NotImplementedError

    def widget(self, **options: Any) -> Any:
        """The interactive anywidget view; ``options`` go to ``widget_state``."""
        from hopaudit.views import widget

        view = getattr(widget, self._widget)(self.widget_state(**options))
        _answer_queries(view, self)
        self._last_view = view  # what Audit.selected() reads when no widget is given
        _own(view, self)
        return view

    def to_html(self, path: str | Path, **options: Any) -> Path:
        """Write one self-contained HTML report that opens offline in any browser (see
        :func:`hopaudit.report.to_html`); ``options`` go to ``widget_state``."""
        from hopaudit.views.report import to_html

        return to_html(self, path, **options)

    def _notebook_outputs(self) -> tuple[dict[str, Any], Any]:
        """The snapshot's bundle (``text/html`` and a readable ``text/plain``, from
        hopaudit/views/snapshot.py) and the live widget, tied by a token: the widget hides the
        snapshot that carries it."""
        import secrets

        import traitlets

        from hopaudit.views import widget
        from hopaudit.views.snapshot import snapshot_html, snapshot_text

        state = self.widget_state()
        token = secrets.token_hex(8)
        view = getattr(widget, self._widget)(state)
        view.add_traits(snapshot_id=traitlets.Unicode(token).tag(sync=True))
        _answer_queries(view, self)
        self._last_view = view
        _own(view, self)
        snapshot = {
            "text/html": snapshot_html(state, token=token),
            "text/plain": snapshot_text(state),
        }
        return snapshot, view

    def _ipython_display_(self) -> None:
        """Two outputs: the static snapshot, then the widget. Whatever shows the notebook
        without a kernel (a saved notebook reopened, nbconvert, GitHub, VS Code) shows the
        snapshot; a live widget hides it. The widget's own ``text/plain`` is empty, so a
        viewer that falls back to it adds nothing under the snapshot (whose note says to run
        the cell with a kernel)."""
        from IPython.display import display

        snapshot, view = self._notebook_outputs()
        data, metadata = _bundle(view._repr_mimebundle_())
        data = {**data, "text/plain": WIDGET_TEXT}
        display(snapshot, raw=True)
        display(data, metadata=metadata, raw=True)

    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        """One bundle (for front ends that do not call ``_ipython_display_``): the widget view,
        the static ``text/html`` snapshot and the readable ``text/plain``."""
        snapshot, view = self._notebook_outputs()
        data, metadata = _bundle(view._repr_mimebundle_(**kwargs))
        return {**data, **snapshot}, metadata


#: The widget output's text, for viewers that cannot draw the widget (GitHub, nbconvert, an
#: untrusted notebook): nothing, since the snapshot above already ends with its note "run the cell
#: with a kernel for the interactive view", and is itself hidden wherever a kernel drew the widget.
WIDGET_TEXT = ""


def _bundle(bundle: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """(data, metadata) of what a ``_repr_mimebundle_`` returned (a dict or a pair)."""
    if isinstance(bundle, tuple):
        return dict(bundle[0]), dict(bundle[1] or {})
    return dict(bundle or {}), {}


def _answer_queries(view: Any, viewable: Any) -> None:
    """A live view of an audit answers its "ask about a text" box (``AuditWidget``)."""
    answer = getattr(view, "answer_queries", None)
    if callable(answer) and callable(getattr(viewable, "query", None)):
        answer(viewable)
