"""Any input to token or tensor batches: texts, files, datasets, token ids, images, audio."""

from hopaudit.data.prepare import (
    DEFAULT_MAX_LENGTH,
    TEXT_NOT_PATH_CHARS,
    context_length,
    find_tokenizer,
    prepare_data,
)
from hopaudit.data.types import InputData, TokenData

__all__ = [
    "DEFAULT_MAX_LENGTH",
    "TEXT_NOT_PATH_CHARS",
    "InputData",
    "TokenData",
    "context_length",
    "find_tokenizer",
    "prepare_data",
]
