"""Membership evidence with a known answer: a tiny GPT-2 memorizes half of a text.

``train_tiny_gpt2`` trains a tiny GPT-2 (2 blocks, hidden 128) on half of the 64-token
sequences of some pydoc prose until its training loss is near zero; the other half is held out.
A reference model (same tokenizer) is trained on another random half for fewer steps. One
audit with ``heldout=``, ``extraction=True`` and ``reference=`` then gives the AUROC of every
score (members = the trained half) and the extraction rates of both halves. Prints::

    auroc_<score>=                every score of Audit.membership (geometric: per layer)
    extraction_rate_members=      fraction of trained sequences reproduced from 32 tokens
    extraction_rate_nonmembers=   the same for the held-out half
    extraction_method=            "teacher-forced": read off the capture (docs/theory.md §6)
    with_scores_seconds=          audit with Min-K%++, zlib, bootstrap=200, Audit.membership
    without_scores_seconds=       audit with the old per-token scores and bootstrap=0
    scores_overhead_ratio=        with / without (target <= 1.10)

The two overhead variants run on the same batches, alternated (order flipped each round) after
an untimed warm-up of each. ``--smollm2`` repeats the overhead lines (``smollm2_...``) on
SmolLM2-135M, whose 49 152-token vocabulary is where Min-K%++'s pass over every next-token
distribution costs most: 128 + 128 pydoc sequences of 64 tokens.

Usage: ``python benchmarks/membership.py [--rounds 3] [--steps 600] [--smollm2]``; about two
minutes on two busy cores (most of it training), five more with ``--smollm2``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))

MAX_CHARS = 40_000  # about 190 sequences of 64 tokens: half trained, half held out


def token_scores(logits, input_ids, mask, *, shift=True):
    """The per-token scoring capture did before Min-K%++ (this benchmark's baseline): per
    next-token prediction within the mask, (sequence index, log-prob of the true next token,
    top-1 hit), in float32 with log_softmax over bounded chunks, one sequence at a time.

    A prediction at token t of token t+1 counts when both are real tokens. ``shift=False`` is
    the seq2seq alignment: logits[t] predict ``input_ids[t]`` (the labels; the decoder read
    them shifted right), counted where the mask is set. Each sequence's predictions are read
    as a view of the logits when they are contiguous (right padding), so the logits are not
    copied.
    """
    import torch

    m = mask.bool()
    valid = m[:, :-1] & m[:, 1:] if shift else m
    step = 1 if shift else 0
    vocab = logits.shape[-1]
    chunk = max(1, 2**24 // vocab)
    seqs, lps, hits = [], [], []
    for b in range(logits.shape[0]):
        t = valid[b].nonzero()[:, 0]
        n = t.numel()
        if n == 0:
            continue
        t0, t1 = int(t[0]), int(t[-1]) + 1
        rows = logits[b, t0:t1] if t1 - t0 == n else logits[b, t]
        targets = input_ids[b, t + step]
        for s in range(0, n, chunk):
            x = rows[s : s + chunk].float()
            target = targets[s : s + chunk]
            lp = torch.log_softmax(x, dim=-1)
            lps.append(lp.gather(1, target[:, None])[:, 0])
            hits.append(x.argmax(1) == target)
        seqs.append(torch.full((n,), b, dtype=torch.long, device=logits.device))
    if not lps:
        empty = torch.empty(0, device=logits.device)
        return empty.long(), empty, empty.bool()
    return torch.cat(seqs), torch.cat(lps), torch.cat(hits)


def _train(steps: int):
    from hopaudit.zoo import corpus, train_tiny_gpt2

    docs = corpus("pydoc", max_chars=MAX_CHARS)
    common = dict(n_layer=2, n_embd=128, n_head=4, seq_len=64, progress=False)
    target = train_tiny_gpt2(docs, fraction=0.5, steps=steps, seed=0, **common)
    reference = train_tiny_gpt2(docs, fraction=0.5, steps=max(1, steps // 4), seed=1, **common)
    return target, reference


def _audit(run, *, with_scores: bool, **extra):
    return _audit_data(
        run.model, run.train_ids, run.heldout_ids, run.tokenizer, with_scores=with_scores, **extra
    )


def _audit_data(model, data, heldout, tokenizer, *, with_scores: bool, **extra):
    import hopaudit
    import hopaudit.capture.forward as capture_module

    def old_scores(logits, ids, mask, shift=True):  # the per-token scores before Min-K%++
        b, lp, hit = token_scores(logits, ids, mask, shift=shift)
        return b, lp, hit, lp.new_zeros(lp.shape)

    saved = capture_module.token_statistics
    if not with_scores:
        capture_module.token_statistics = old_scores
    try:
        a = hopaudit.audit(
            model, data, heldout=heldout, tokenizer=tokenizer,
            progress=False, umap_layers=[], bootstrap=200 if with_scores else 0, **extra,
        )  # fmt: skip
        if with_scores:
            a.membership  # noqa: B018 (the table is part of what the scores cost)
        else:
            a.samples  # noqa: B018
    finally:
        capture_module.token_statistics = saved
    return a


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--smollm2", action="store_true")
    args = parser.parse_args()

    target, reference = _train(args.steps)
    a = _audit(target, with_scores=True, extraction=True, reference=reference.model)
    for row in a.membership.itertuples():
        name = row.score if row.score != "geometric" else f"geometric_{row.layer}"
        print(f"auroc_{name}={row.auroc:.4f}")
    s = a.summary()
    print(f"extraction_rate_members={s['extraction_rate']:.4f}")
    print(f"extraction_rate_nonmembers={s['extraction_rate_heldout']:.4f}")
    print(f"extraction_method={a.extraction['method']}")
    print(f"train_loss_members={target.loss_on(target.train_ids):.4f}")
    print(f"loss_nonmembers={target.loss_on(target.heldout_ids):.4f}")

    _overhead(lambda w: _audit(target, with_scores=w), args.rounds, "")
    if args.smollm2:
        from hopaudit.data import prepare_data
        from hopaudit.zoo import corpus, smollm2

        model, tok = smollm2()
        ids = prepare_data(corpus("pydoc"), tok, max_length=64, max_sequences=256).input_ids
        _overhead(
            lambda w: _audit_data(model, ids[:128], ids[128:], tok, with_scores=w),
            args.rounds,
            "smollm2_",
        )


def _overhead(run_audit, rounds: int, prefix: str) -> None:
    times: dict[bool, list[float]] = {True: [], False: []}
    run_audit(True)  # warm-up of each
    run_audit(False)
    for r in range(rounds):
        for with_scores in (True, False) if r % 2 == 0 else (False, True):
            t0 = time.perf_counter()
            run_audit(with_scores)
            times[with_scores].append(time.perf_counter() - t0)
    with_s = sum(times[True]) / len(times[True])
    without_s = sum(times[False]) / len(times[False])
    print(f"{prefix}with_scores_seconds={with_s:.3f}")
    print(f"{prefix}without_scores_seconds={without_s:.3f}")
    print(f"{prefix}scores_overhead_ratio={with_s / without_s:.3f}")


if __name__ == "__main__":
    main()
