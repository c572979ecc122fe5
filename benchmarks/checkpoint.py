"""What auditing during training costs: a Trainer run with and without AuditCallback.

The same short run (tiny GPT-2, 2 blocks, hidden 64, 100 steps of 16 x 64 tokens of pydoc
prose, no checkpoint saves) is timed with ``AuditCallback(every=20)`` (5 audits of
``--eval-sequences`` held sequences, each saved to disk) and without it, alternated round by
round (the order flips each round) after one untimed warm-up of each. Prints::

    with_callback_seconds=     mean wall time of a run with the callback
    without_seconds=           mean wall time of a run without it
    callback_overhead_ratio=   with / without
    audit_seconds_mean=        mean time of one audit inside the callback (its own timer)
    audits_per_run=

Usage: ``python benchmarks/checkpoint.py [--rounds 2] [--eval-sequences 256] [--umap]``
(``--umap`` adds the default UMAP layouts to every audit); about 2 minutes on two busy cores.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

_HERE = Path(__file__).resolve().parent
# run from a checkout: import hopaudit from the repository, not sibling scripts (umap.py)
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))

SEQ_LEN = 64
STEPS = 100
EVERY = 20


def _setup(n_eval: int):
    from hopaudit.zoo import corpus
    from hopaudit.zoo.tinygpt import _token_stream, train_tokenizer

    docs = corpus("pydoc")
    tok = train_tokenizer(docs, vocab_size=1024, model_max_length=SEQ_LEN)
    stream = torch.from_numpy(_token_stream(tok, docs))
    n = len(stream) // SEQ_LEN
    rows = stream[: n * SEQ_LEN].view(n, SEQ_LEN)
    return tok, rows[n_eval:], rows[:n_eval]


def _run(tok, train_rows, eval_rows, *, audited: bool, umap: bool) -> tuple[float, list[float]]:
    from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainingArguments

    from hopaudit.training import AuditCallback

    torch.manual_seed(0)
    config = GPT2Config(vocab_size=len(tok), n_positions=SEQ_LEN, n_embd=64, n_layer=2, n_head=2,
                        eos_token_id=tok.eos_token_id, bos_token_id=tok.eos_token_id,
                        pad_token_id=tok.pad_token_id)  # fmt: skip
    model = GPT2LMHeadModel(config)
    data = [{"input_ids": r, "labels": r} for r in train_rows]
    with tempfile.TemporaryDirectory() as out:
        args = TrainingArguments(output_dir=out, max_steps=STEPS, save_strategy="no",
                                 logging_steps=EVERY, per_device_train_batch_size=16,
                                 learning_rate=3e-3, report_to="none", use_cpu=True,
                                 disable_tqdm=True, log_level="error", seed=0)  # fmt: skip
        options = {} if umap else {"umap_layers": []}
        callback = AuditCallback(eval_rows, every=EVERY, max_length=SEQ_LEN, **options)
        trainer = Trainer(model=model, args=args, train_dataset=data, processing_class=tok,
                          callbacks=[callback] if audited else None)  # fmt: skip
        t0 = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - t0
        audits = [h["hopaudit/audit_seconds"] for h in callback.history]
        if audited and len(audits) != STEPS // EVERY:
            raise RuntimeError(f"expected {STEPS // EVERY} audits, got {len(audits)}")
    return seconds, audits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--eval-sequences", type=int, default=256)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--umap", action="store_true")
    opts = parser.parse_args()
    torch.set_num_threads(opts.threads)
    import transformers

    transformers.logging.set_verbosity_error()
    tok, train_rows, eval_rows = _setup(opts.eval_sequences)
    for audited in (True, False):  # warm-up: imports, numba, allocator
        _run(tok, train_rows, eval_rows, audited=audited, umap=opts.umap)
    with_s, without_s, audit_s = [], [], []
    for r in range(opts.rounds):
        for audited in (True, False) if r % 2 == 0 else (False, True):
            seconds, audits = _run(tok, train_rows, eval_rows, audited=audited, umap=opts.umap)
            (with_s if audited else without_s).append(seconds)
            audit_s += audits
        print(f"# round {r}: with={with_s[-1]:.2f}s without={without_s[-1]:.2f}s", flush=True)
    with_mean = sum(with_s) / len(with_s)
    without_mean = sum(without_s) / len(without_s)
    print(f"with_callback_seconds={with_mean:.3f}")
    print(f"without_seconds={without_mean:.3f}")
    print(f"callback_overhead_ratio={with_mean / without_mean:.3f}")
    print(f"audit_seconds_mean={sum(audit_s) / len(audit_s):.3f}")
    print(f"audits_per_run={STEPS // EVERY}")


if __name__ == "__main__":
    main()
