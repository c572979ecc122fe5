"""The capture tests' shared pieces: a model's blocks, random right-padded token data, one
capture, and the activations transformers itself reports (the independent reference)."""

from __future__ import annotations

import torch

from hopaudit.capture import capture
from hopaudit.data import TokenData


def _parts(model, info):
    blocks = [(p, model.get_submodule(p)) for p in info.block_paths]
    final = (info.final_norm, model.get_submodule(info.final_norm)) if info.has_lm_head else None
    return blocks, final


def _data(lengths, seq_len=None, vocab=512, seed=0):
    """Right-padded random ids (pad id 0) with the given real lengths."""
    g = torch.Generator().manual_seed(seed)
    seq_len = seq_len or max(lengths)
    ids = torch.randint(3, vocab, (len(lengths), seq_len), generator=g)
    mask = torch.zeros_like(ids)
    for i, n in enumerate(lengths):
        mask[i, :n] = 1
    ids[mask == 0] = 0
    return TokenData(ids, mask, [""] * len(lengths), pad_token_id=0)


def _run(model, info, data, **kw):
    blocks, final = _parts(model, info)
    kw.setdefault("progress", False)
    return capture(model, data, blocks, final=final, **kw)


def _reference(model, info, data):
    """Per layer name: (batch, seq, hidden) float32 activations seen by independent means:
    output_hidden_states, plus a pre-hook on the final norm (its input is the last block's
    output, which hidden_states replaces by the normed one) and one on the LM head."""
    seen = {}
    handles = []
    if info.final_norm is not None:
        norm = model.get_submodule(info.final_norm)
        handles.append(norm.register_forward_pre_hook(lambda m, a: seen.__setitem__("pre", a[0])))
    if info.has_lm_head:
        head = model.get_output_embeddings()
        handles.append(head.register_forward_pre_hook(lambda m, a: seen.__setitem__("head", a[0])))
    try:
        with torch.no_grad():
            out = model(
                input_ids=data.input_ids, attention_mask=data.attention_mask,
                output_hidden_states=True,
            )  # fmt: skip
    finally:
        for h in handles:
            h.remove()
    hs = out.hidden_states
    names = info.block_paths
    ref = {}
    if info.final_norm is None:  # encoders: hidden_states[i + 1] is block i's raw output
        assert len(hs) == len(names) + 1
        for i, n in enumerate(names):
            ref[n] = hs[i + 1]
    else:  # the last entry is after the final norm
        for i, n in enumerate(names[:-1]):
            ref[n] = hs[i + 1]
        ref[names[-1]] = seen["pre"]
        ref["final"] = hs[-1]
        torch.testing.assert_close(seen["head"], hs[-1])
    return {k: v.float().numpy() for k, v in ref.items()}, out
