"""An audit into the training run's loggers: TensorBoard and W&B directly, the rest by ``on_log``.

transformers' reporting callbacks prefix every key they get through ``on_log`` with ``train/``
and its console callbacks print every log event, so :func:`log_audit` writes to TensorBoard's
``SummaryWriter`` and to the W&B run itself, under ``hopaudit/`` at the top level, with what
scalars cannot say: the layer table (``wandb.Table``) and the report (``wandb.Html`` for W&B,
a Markdown text for TensorBoard). Other callbacks (MLflow, a user's own) still get ``on_log``;
the console ones (``PrinterCallback``, ``ProgressCallback``) get nothing.
"""

from __future__ import annotations

import logging
import math
from typing import Any

logger = logging.getLogger(__name__)

#: Per-layer columns of the Markdown table TensorBoard shows.
TEXT_COLUMNS = ("name", "n_patterns", "r_hat", "r_ratio", "separated_frac", "twonn_id")


def _fmt(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value).replace("|", "\\|")


def report_markdown(audit: Any) -> str:
    """The audit as Markdown (TensorBoard's text plugin renders it): the summary's headline
    numbers and the per-layer table."""
    s = audit.summary()
    head = [
        "model",
        "n_sequences",
        "n_tokens",
        "cross_entropy",
        "floor_low",
        "floor_gauss",
        "below_floor",
        "normalize",
    ]
    lines = ["| summary | |", "| --- | --- |"]
    lines += [f"| {key} | {_fmt(s.get(key))} |" for key in head]
    lines += ["", "| " + " | ".join(TEXT_COLUMNS) + " |", "|" + " --- |" * len(TEXT_COLUMNS)]
    for row in audit.layers.to_dict("records"):
        lines.append("| " + " | ".join(_fmt(row.get(c)) for c in TEXT_COLUMNS) + " |")
    return "\n".join(lines)


def log_tensorboard(writer: Any, scalars: dict[str, float], audit: Any, step: int) -> None:
    """Scalars and the report as text, under ``hopaudit/``, at ``step``."""
    for key, value in scalars.items():
        writer.add_scalar(key, value, step)
    writer.add_text("hopaudit/report", report_markdown(audit), step)
    writer.flush()


def log_wandb(wandb: Any, scalars: dict[str, float], audit: Any, step: int) -> None:
    """Scalars, the layer table and the HTML report in one ``wandb.log``; the step goes as
    ``train/global_step``, the step metric transformers' W&B callback defines."""
    import io

    from hopaudit.views.report import render_html

    table = wandb.Table(dataframe=audit.layers, allow_mixed_types=True)
    wandb.log(
        {
            **scalars,
            "hopaudit/layers": table,
            "hopaudit/report": wandb.Html(io.StringIO(render_html(audit)), inject=False),
            "train/global_step": step,
        }
    )


def log_audit(callbacks: list[Any], args: Any, state: Any, audit: Any, scalars: dict) -> list:
    """Log ``audit`` to the TensorBoard and W&B callbacks among ``callbacks`` directly; returns
    the callbacks that should still get ``on_log`` (neither those two, nor the console's)."""
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    try:
        from transformers.integrations import TensorBoardCallback, WandbCallback
    except ImportError:  # pragma: no cover - transformers always has them
        TensorBoardCallback = WandbCallback = ()  # type: ignore[assignment,misc]

    step = int(state.global_step)
    rest = []
    for cb in callbacks:
        if isinstance(cb, (PrinterCallback, ProgressCallback)):
            continue
        if TensorBoardCallback and isinstance(cb, TensorBoardCallback):
            if cb.tb_writer is not None:
                log_tensorboard(cb.tb_writer, scalars, audit, step)
            continue
        if WandbCallback and isinstance(cb, WandbCallback):
            if cb._wandb is not None:
                if not cb._initialized:
                    cb.setup(args, state, None)
                if cb._wandb.run is not None:
                    log_wandb(cb._wandb, scalars, audit, step)
            continue
        rest.append(cb)
    return rest
