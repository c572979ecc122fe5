"""Progress bars that leave plain text behind: ``tqdm.auto``, whose notebook bars are replaced
by their last line of text when they finish.

A finished notebook bar of tqdm stays a widget; a notebook saved and reopened without the
kernel then shows "Error displaying widget: model not found" where each bar was. Here the bar
is shown with a display id, and on ``close`` its output is updated to the bar's final text
(empty for ``leave=False``) and the widget closed, so the saved notebook holds text only.
Outside a notebook this is ``tqdm.auto.tqdm`` itself.
"""

from __future__ import annotations

from typing import Any

from tqdm.auto import tqdm as _auto_tqdm

try:
    from tqdm.notebook import tqdm as _notebook_tqdm
except ImportError:  # pragma: no cover - tqdm always ships it; ipywidgets may be missing
    _notebook_tqdm = None

__all__ = ["tqdm"]

if _notebook_tqdm is not None and issubclass(_auto_tqdm, _notebook_tqdm):

    class tqdm(_auto_tqdm):  # type: ignore[no-redef,valid-type,misc]
        """``tqdm.notebook.tqdm`` whose output becomes text when it is closed."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            show = kwargs.pop("display", True)
            self._handle: Any = None
            super().__init__(*args, display=False, **kwargs)
            if show and not self.disable and self.delay <= 0:
                self._show()

        def _show(self) -> None:
            from IPython.display import display

            self._handle = display(self.container, display_id=True)
            self.displayed = True

        def display(self, *args: Any, **kwargs: Any) -> Any:
            if kwargs.get("check_delay", True) and self.delay > 0 and not self.displayed:
                kwargs["check_delay"] = False
                result = super().display(*args, **kwargs)
                self._show()
                return result
            return super().display(*args, **kwargs)

        def close(self) -> None:
            was_disabled = self.disable  # tqdm's close sets disable
            super().close()
            handle, self._handle = getattr(self, "_handle", None), None
            if handle is None or was_disabled:
                return
            failed = bool(self.total and self.n < self.total)
            text = str(self) if (self.leave or failed) else ""
            handle.update({"text/plain": text}, raw=True)
            self.container.close()

else:
    tqdm = _auto_tqdm  # type: ignore[misc]
