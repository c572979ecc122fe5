"""A notebook run by a real kernel (nbclient): the audit with its progress bars, then shown.
Shared by the snapshot tests and the offline-HTML browser test."""

from __future__ import annotations

import hopaudit

CELLS = [
    "import sys\nsys.path[:0] = [{root!r}, {tests!r}]",
    "import hopaudit\n"
    "from tiny_models import tiny_model, tiny_tokenizer\n"
    "model, _ = tiny_model('gpt2')\n"
    "texts = [f'Notebook sequence {{i}}: pattern {{i % 9}} sits in basin {{i % 4}}.'\n"
    "         for i in range(60)]\n"
    "a = hopaudit.audit(model, texts, tokenizer=tiny_tokenizer(), max_length=32,\n"
    "                   chunking='document', umap_layers=['final'], autocast='off')",
    "a",
]


_RUNS: dict[bool, object] = {}  # store_widget_state -> the executed notebook, once per test run


def executed_notebook(tmp_path, *, store_widget_state: bool = True):
    """A notebook that audits with progress bars and shows the audit, run by a real kernel.
    ``store_widget_state=False`` saves it as JupyterLab does by default (no widget state).

    Each form is executed once per test run (a kernel start and an audit: tens of seconds on
    a loaded machine) and every caller gets its own copy, written to ``tmp_path/audit.ipynb``.
    """
    import copy

    import nbformat

    if store_widget_state not in _RUNS:
        _RUNS[store_widget_state] = _execute(tmp_path, store_widget_state)
    nb = copy.deepcopy(_RUNS[store_widget_state])
    path = tmp_path / "audit.ipynb"
    nbformat.write(nb, path)
    return nb, path


def _execute(tmp_path, store_widget_state: bool):
    from pathlib import Path

    import nbformat
    from nbclient import NotebookClient

    root = Path(hopaudit.__file__).resolve().parent.parent
    cells = [c.format(root=str(root), tests=str(root / "tests")) for c in CELLS]
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3"}
    NotebookClient(
        nb,
        timeout=600,
        kernel_name="python3",
        resources={"metadata": {"path": str(tmp_path)}},
        store_widget_state=store_widget_state,
    ).execute()
    return nb
