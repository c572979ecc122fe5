"""Audits during training: the Trainer callback, the plain-loop auditor, checkpoint folders,
and the scalars sent to the trainer's loggers."""

from hopaudit.training.callback import (
    AUDIT_SUBDIR,
    LAYER_SCALARS,
    AuditCallback,
    Auditor,
    audit_checkpoints,
    audit_scalars,
)

__all__ = [
    "AUDIT_SUBDIR",
    "LAYER_SCALARS",
    "AuditCallback",
    "Auditor",
    "audit_checkpoints",
    "audit_scalars",
]
