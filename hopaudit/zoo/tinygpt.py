"""Train a tiny GPT-2 on a text, from nothing, offline: the material of the size experiments.

``train_tiny_gpt2(text, fraction=...)`` trains a byte-level BPE tokenizer on the whole text,
cuts the token stream into sequences, keeps a seeded ``fraction`` of them, and trains a small
``GPT2LMHeadModel`` (built from a ``GPT2Config``, no hub) with AdamW on random batches of the
kept part. Runs on a fraction of the data end with a lower training loss (they memorize), which
is what the paper's model-size vs data-size experiment audits. The kept subsets nest: for one
seed, the sequences of a smaller fraction are among those of a larger one.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from hopaudit.errors import DataError, ModelError
from hopaudit.progress import tqdm

EOS_TOKEN = "<|endoftext|>"
PAD_TOKEN = "<pad>"
_MIN_VOCAB = 256 + 2 + 2  # the byte alphabet, the two special tokens, and room for merges


@dataclass
class TinyRun:
    """One training run: the model (eval mode), its tokenizer, and what it was trained on.

    ``losses`` is the training loss of every step (nats per token). ``train_texts`` /
    ``train_ids`` are the kept sequences (``fraction`` of the stream, in stream order);
    ``heldout_texts`` / ``heldout_ids`` the sequences left out (empty at ``fraction=1``).
    ``config`` holds every argument plus what was derived (sizes, counts, seconds).
    """

    model: Any
    tokenizer: Any
    losses: list[float]
    train_texts: list[str]
    config: dict[str, Any]
    train_ids: torch.Tensor = field(repr=False, default_factory=lambda: torch.empty(0, 0))
    heldout_texts: list[str] = field(repr=False, default_factory=list)
    heldout_ids: torch.Tensor = field(repr=False, default_factory=lambda: torch.empty(0, 0))

    def loss_on(self, data: str | list[str] | torch.Tensor, *, batch_size: int = 32) -> float:
        """Token-weighted mean cross-entropy (nats) of the model on ``data``.

        ``data``: texts (cut into ``seq_len`` sequences of their token stream, EOS between
        documents, as in training) or a LongTensor ``(n, seq_len)`` of token ids.
        """
        if isinstance(data, torch.Tensor):
            ids = data.long()
        else:
            stream = _token_stream(self.tokenizer, _as_documents(data))
            seq_len = int(self.config["seq_len"])
            n = len(stream) // seq_len
            if n == 0:
                raise DataError(
                    f"loss_on: the text has {len(stream)} tokens, fewer than one sequence of "
                    f"{seq_len}; pass more text"
                )
            ids = torch.from_numpy(stream[: n * seq_len].reshape(n, seq_len)).long()
        if ids.ndim != 2 or ids.shape[0] == 0 or ids.shape[1] < 2:
            shape = tuple(ids.shape)
            raise DataError(f"loss_on: expected (n, seq_len >= 2) token ids, got shape {shape}")
        return sequence_loss(self.model, ids, batch_size=batch_size)


def train_tiny_gpt2(
    text: str | list[str],
    *,
    fraction: float = 1.0,
    n_layer: int = 2,
    n_embd: int = 64,
    n_head: int = 2,
    seq_len: int = 64,
    vocab_size: int = 1024,
    steps: int = 300,
    batch_size: int = 16,
    lr: float = 3e-3,
    seed: int = 0,
    progress: bool = True,
    threads: int | None = 1,
    checkpoints: Iterable[int] = (),
    on_checkpoint: Callable[[int, TinyRun], None] | None = None,
) -> TinyRun:
    """Train a tiny GPT-2 on ``fraction`` of ``text`` and return the :class:`TinyRun`.

    ``text`` is one string or a list of documents (e.g. ``hopaudit.zoo.corpus("pydoc")``).
    The tokenizer is trained on all of it, so runs on different fractions share one
    vocabulary and their losses compare. Dropout is off (the point is memorization). The
    global torch RNG is left as it was; the same arguments give the same run. ``threads`` sets
    torch's intra-op threads for the training only and restores them after: 1 by default,
    because matrices this small gain nothing from more, and on a busy machine oversubscribed
    threads are many times slower (benchmarks/README.md, "Constants"); ``None`` leaves torch's
    setting alone.

    ``on_checkpoint(step, run)`` is called after each step listed in ``checkpoints`` (1 ..
    ``steps``), so one run can be audited from under-fit to memorized: ``run`` is a
    :class:`TinyRun` of the model as it is then (in eval mode during the call, back in
    training after; ``losses`` so far), with the final run's tokenizer, texts and ids. The
    call does not change the training: the batches come from their own generator, and
    dropout is off. Audit ``run.model`` inside the call; it keeps training afterwards.
    """
    _check_arguments(fraction, n_layer, n_embd, n_head, seq_len, vocab_size, steps, batch_size, lr)
    stops = _check_checkpoints(checkpoints, on_checkpoint, steps)
    bad_threads = isinstance(threads, bool) or not isinstance(threads, (int, type(None)))
    if bad_threads or (threads is not None and threads < 1):
        raise ModelError(f"threads must be a positive integer or None, got {threads!r}")
    docs = _as_documents(text)
    t_start = time.perf_counter()

    tokenizer = train_tokenizer(docs, vocab_size=vocab_size, model_max_length=seq_len)
    stream = _token_stream(tokenizer, docs)
    n_chunks = len(stream) // seq_len
    if n_chunks == 0:
        raise DataError(
            f"the text is {len(stream)} tokens long, shorter than one sequence of "
            f"seq_len={seq_len} tokens; pass more text or a smaller seq_len"
        )
    chunks = stream[: n_chunks * seq_len].reshape(n_chunks, seq_len)
    keep, left_out = select_chunks(n_chunks, fraction, seed)
    # Each step trains on whole kept sequences, drawn uniformly: the logged loss is the loss on
    # exactly the sequences an audit of this run sees (sliding windows would weight runs of
    # adjacent kept sequences far above isolated ones).
    starts = keep.astype(np.int64) * seq_len
    tokens = torch.from_numpy(stream[: n_chunks * seq_len].astype(np.int64))

    from transformers import GPT2Config, GPT2LMHeadModel

    eos_id = tokenizer.eos_token_id
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=seq_len,
        n_embd=n_embd,
        n_layer=n_layer,
        n_head=n_head,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=eos_id,
        eos_token_id=eos_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    train_ids = torch.from_numpy(chunks[keep].astype(np.int64))
    heldout_ids = torch.from_numpy(chunks[left_out].astype(np.int64))
    train_texts = _decode_rows(tokenizer, train_ids)
    heldout_texts = _decode_rows(tokenizer, heldout_ids)

    def _run_at(done: int) -> TinyRun:
        """The run as it stands after ``done`` steps (the model object itself, not a copy)."""
        model.hopaudit_tokenizer = tokenizer
        model.hopaudit_name = f"tiny-gpt2 L{n_layer} d{n_embd} ({fraction:.1%} of data)"
        n_params = sum(p.numel() for p in model.parameters())
        run_config = {
            "fraction": fraction,
            "n_layer": n_layer,
            "n_embd": n_embd,
            "n_head": n_head,
            "seq_len": seq_len,
            "vocab_size": len(tokenizer),
            "vocab_size_requested": vocab_size,
            "steps": steps,
            "step": done,  # steps trained so far (== steps once training is over)
            "batch_size": batch_size,
            "lr": lr,
            "seed": seed,
            "n_documents": len(docs),
            "n_stream_tokens": len(stream),
            "n_sequences_total": n_chunks,
            "n_sequences_train": len(keep),
            "n_train_tokens": len(keep) * seq_len,
            "n_params": n_params,
            "epochs": done * batch_size / len(keep),  # passes over the kept sequences
            "threads": torch.get_num_threads() if threads is None else threads,
            "seconds": time.perf_counter() - t_start,
        }
        return TinyRun(
            model=model,
            tokenizer=tokenizer,
            losses=list(losses),
            train_texts=train_texts,
            config=run_config,
            train_ids=train_ids,
            heldout_texts=heldout_texts,
            heldout_ids=heldout_ids,
        )

    losses: list[float] = []
    with torch.random.fork_rng(devices=[]), _num_threads(threads):
        torch.manual_seed(seed)
        model = GPT2LMHeadModel(config).float()
        model.loss_type = "ForCausalLM"  # what transformers picks anyway, without its warning
        generator = torch.Generator().manual_seed(seed)
        optimizer = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95))
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, _warmup_cosine(steps))
        offsets = torch.arange(seq_len)
        starts_t = torch.from_numpy(starts)
        model.train()
        bar = tqdm(range(steps), desc="training tiny GPT-2", disable=not progress, leave=False)
        for step in bar:
            pick = starts_t[torch.randint(len(starts_t), (batch_size,), generator=generator)]
            batch = tokens[pick[:, None] + offsets]
            loss = model(input_ids=batch, labels=batch).loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            schedule.step()
            losses.append(float(loss.detach()))
            bar.set_postfix(loss=f"{losses[-1]:.3f}", refresh=False)
            if step + 1 in stops:
                model.eval()
                try:
                    on_checkpoint(step + 1, _run_at(step + 1))
                finally:
                    model.train()
        bar.close()
    model.eval()
    return _run_at(steps)


# --------------------------------------------------------------------------- pieces


def train_tokenizer(docs: list[str], *, vocab_size: int = 1024, model_max_length: int = 1024):
    """A byte-level BPE ``PreTrainedTokenizerFast`` trained on ``docs`` (offline, seconds).

    Special tokens: ``<|endoftext|>`` (EOS and BOS, id 0) and ``<pad>`` (id 1). Byte-level,
    so every text encodes and ``decode(encode(text)) == text``.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE(unk_token=None))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS_TOKEN, PAD_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(docs, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token=EOS_TOKEN,
        bos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        model_max_length=model_max_length,
    )


def select_chunks(n_chunks: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded choice of ``max(1, round(fraction * n_chunks))`` sequence indices (sorted).

    Returns ``(kept, left_out)``. A prefix of one seeded permutation, so for one seed a smaller
    fraction keeps a subset of what a larger one keeps.
    """
    k = min(n_chunks, max(1, round(fraction * n_chunks)))
    order = np.random.default_rng(seed).permutation(n_chunks)
    return np.sort(order[:k]), np.sort(order[k:])


@torch.no_grad()
def sequence_loss(model: Any, ids: torch.Tensor, *, batch_size: int = 32) -> float:
    """Token-weighted mean next-token cross-entropy (nats) of a causal LM on ``ids``."""
    was_training = model.training
    model.eval()
    try:
        total, count = 0.0, 0
        device = next(model.parameters()).device
        for i in range(0, ids.shape[0], batch_size):
            batch = ids[i : i + batch_size].to(device)
            logits = model(input_ids=batch).logits[:, :-1].float()
            target = batch[:, 1:]
            nll = torch.nn.functional.cross_entropy(
                logits.reshape(-1, logits.shape[-1]), target.reshape(-1), reduction="sum"
            )
            total += float(nll)
            count += target.numel()
        return total / count
    finally:
        model.train(was_training)


@contextlib.contextmanager
def _num_threads(threads: int | None) -> Iterator[None]:
    """Set torch's intra-op thread count inside the block and restore it afterwards."""
    if threads is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _warmup_cosine(steps: int):
    warmup = max(1, min(30, steps // 10))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, steps - warmup)
        return 0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))

    return factor


def _as_documents(text: Any) -> list[str]:
    if isinstance(text, str):
        docs = [text]
    elif isinstance(text, (list, tuple)):
        bad = [type(t).__name__ for t in text if not isinstance(t, str)]
        if bad:
            raise DataError(f"text must be a str or a list of str; the list holds a {bad[0]}")
        docs = list(text)
    else:
        raise DataError(f"text must be a str or a list of str, got {type(text).__name__}")
    docs = [d for d in docs if d.strip()]
    if not docs:
        raise DataError("the text is empty; pass some documents, e.g. hopaudit.zoo.corpus()")
    return docs


def _token_stream(tokenizer: Any, docs: list[str]) -> np.ndarray:
    """All documents' token ids, each followed by EOS, as one int64 array."""
    eos = tokenizer.eos_token_id
    encoded = tokenizer.backend_tokenizer.encode_batch(docs, add_special_tokens=False)
    parts = []
    for enc in encoded:
        parts.append(np.asarray(enc.ids, dtype=np.int64))
        parts.append(np.asarray([eos], dtype=np.int64))
    return np.concatenate(parts)


def _decode_rows(tokenizer: Any, ids: torch.Tensor) -> list[str]:
    if ids.shape[0] == 0:
        return []
    return tokenizer.batch_decode(ids.tolist(), skip_special_tokens=False)


def _check_checkpoints(
    checkpoints: Iterable[int], on_checkpoint: Callable[[int, TinyRun], None] | None, steps: int
) -> frozenset[int]:
    """The checkpoint steps as a set; ModelError for steps outside 1..steps or a missing hook."""
    if isinstance(checkpoints, (str, bytes)) or not isinstance(checkpoints, Iterable):
        raise ModelError(f"checkpoints must be a list of steps, got {checkpoints!r}")
    stops = list(checkpoints)
    for s in stops:
        if isinstance(s, bool) or not isinstance(s, (int, np.integer)) or not 1 <= s <= steps:
            raise ModelError(f"checkpoints must be steps in 1..{steps} (steps), got {s!r}")
    if stops and on_checkpoint is None:
        raise ModelError("checkpoints were given without on_checkpoint: pass the function to call")
    if on_checkpoint is not None and not callable(on_checkpoint):
        raise ModelError(f"on_checkpoint must be callable, got {type(on_checkpoint).__name__}")
    return frozenset(int(s) for s in stops)


def _check_arguments(fraction, n_layer, n_embd, n_head, seq_len, vocab_size, steps, batch_size,
                     lr) -> None:  # fmt: skip
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)):
        raise DataError(f"fraction must be a number in (0, 1], got {fraction!r}")
    if not 0.0 < fraction <= 1.0:
        raise DataError(f"fraction must be in (0, 1], got {fraction}")
    sizes = {
        "n_layer": n_layer,
        "n_embd": n_embd,
        "n_head": n_head,
        "seq_len": seq_len,
        "steps": steps,
        "batch_size": batch_size,
    }
    for name, value in sizes.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ModelError(f"{name} must be a positive integer, got {value!r}")
    if seq_len < 2:
        raise ModelError(f"seq_len must be at least 2 (next-token prediction), got {seq_len}")
    if n_embd % n_head:
        raise ModelError(f"n_embd ({n_embd}) must be divisible by n_head ({n_head})")
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < _MIN_VOCAB:
        raise ModelError(
            f"vocab_size must be an integer >= {_MIN_VOCAB} (256 bytes + special tokens), "
            f"got {vocab_size!r}"
        )
    if not (isinstance(lr, (int, float)) and lr > 0 and math.isfinite(lr)):
        raise ModelError(f"lr must be a positive number, got {lr!r}")
