"""Find the transformer blocks of any model, the norm that feeds its LM head, and its size.

Blocks are the elements of one ``nn.ModuleList`` (or ``nn.Sequential``). The recipe
(DESIGN.md): candidates are the lists whose length equals the text config's layer count; the
one whose element class is in ``model._no_split_modules`` wins; then known paths
(``transformer.h``, ``model.layers``, ...); for a model without a config (a plain
``nn.Module``), the longest top-level list of composite modules of one class, a list named
``blocks``/``layers``/``h`` first. ``blocks="path"`` overrides all of this.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from .errors import ModelError

# Where the blocks live in common architectures, most specific first.
KNOWN_BLOCK_PATHS: tuple[str, ...] = (
    "transformer.h",  # gpt2, gpt_neo, gptj, bloom, falcon, codegen, starcoder
    "model.layers",  # llama, mistral, qwen2, gemma, phi, olmo, smollm
    "model.decoder.layers",  # opt, whisper/bart decoders
    "gpt_neox.layers",  # pythia, gpt-neox
    "model.language_model.layers",  # multimodal wrappers (transformers >= 4.52)
    "language_model.model.layers",
    "model.text_model.layers",
    "transformer.blocks",  # mpt
    "transformer.layers",
    "transformer.encoder.layers",  # chatglm
    "backbone.layers",  # mamba
    "rwkv.blocks",
    "bert.encoder.layer",
    "roberta.encoder.layer",
    "deberta.encoder.layer",
    "electra.encoder.layer",
    "distilbert.transformer.layer",
    "encoder.layer",  # BertModel, RobertaModel
    "transformer.layer",  # DistilBertModel
    "encoder.layers",
    "decoder.layers",
    "model.blocks",
    "layers",
    "blocks",
    "h",
)
_PREFERRED_NAMES = ("blocks", "layers", "h", "layer", "block")
_LAYER_COUNT_KEYS = ("num_hidden_layers", "n_layer", "num_layers", "n_layers")
_NOT_BLOCK = re.compile(r"embed|norm|dropout|activation|^ln", re.IGNORECASE)
_NORM_CLASS = re.compile(r"norm|^ln|layernorm", re.IGNORECASE)
_NORM_NAME = re.compile(r"norm|^ln(_|$)|^ln_f$", re.IGNORECASE)
_HEAD_NAMES = ("lm_head", "embed_out", "unembed", "output", "head", "output_layer")


def _check_module(model: Any) -> nn.Module:
    if isinstance(model, nn.Module):
        return model
    kind = type(model).__name__
    hint = ""
    if isinstance(model, str):
        hint = (
            f" (the string {model[:60]!r}); load it first, e.g. "
            f"AutoModelForCausalLM.from_pretrained({model[:60]!r}), or pass the path to "
            "hopaudit.audit, which loads it"
        )
    raise ModelError(
        f"expected a torch model (torch.nn.Module, e.g. a transformers model), got {kind}{hint}"
    )


def _lists(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Every non-empty ModuleList / Sequential, in registration order."""
    return [
        (path, mod)
        for path, mod in model.named_modules()
        if isinstance(mod, (nn.ModuleList, nn.Sequential)) and len(mod) > 0
    ]


def _classes(mod: nn.Module) -> list[str]:
    return sorted({type(m).__name__ for m in mod})


def _describe(lists: list[tuple[str, nn.Module]], limit: int = 12) -> str:
    if not lists:
        return "it has no nn.ModuleList or nn.Sequential at all"
    parts = [f"{path or '<model>'} ({len(mod)} x {'/'.join(_classes(mod))})" for path, mod in lists]
    more = f", ... ({len(parts) - limit} more)" if len(parts) > limit else ""
    return "lists seen: " + ", ".join(parts[:limit]) + more


def _as_blocks(path: str, mod: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(f"{path}.{i}" if path else str(i), m) for i, m in enumerate(mod)]


def _layer_counts(model: nn.Module) -> set[int]:
    """The layer counts the model's config declares (text config first; every known key)."""
    config = getattr(model, "config", None)
    if config is None:
        return set()
    configs = []
    get_text = getattr(config, "get_text_config", None)
    if callable(get_text):
        with contextlib.suppress(Exception):  # some composite configs raise when ambiguous
            configs.append(get_text())
    text_config = getattr(config, "text_config", None)
    if text_config is not None:
        configs.append(text_config)
    configs.append(config)
    counts: set[int] = set()
    for cfg in configs:
        for key in _LAYER_COUNT_KEYS:
            value = getattr(cfg, key, None)
            if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                counts.add(value)
        if counts:
            break  # the text config's count wins over a vision tower's
    return counts


def _is_block_like(mod: nn.Module) -> bool:
    """A block is a composite module with parameters, not an embedding/norm/dropout."""
    if _NOT_BLOCK.search(type(mod).__name__):
        return False
    children = list(mod.children())
    has_params = any(True for _ in mod.parameters())
    return len(children) >= 2 and has_params


def _nested(path: str, others: list[tuple[str, nn.Module]]) -> bool:
    """Is ``path`` inside an element of another list (e.g. experts inside a block)?"""
    return any(other and path.startswith(other + ".") and path != other for other, _ in others)


def _pick(candidates: list[tuple[str, nn.Module]], model: nn.Module) -> tuple[str, nn.Module]:
    no_split = set(getattr(model, "_no_split_modules", None) or [])
    known = {p: i for i, p in enumerate(KNOWN_BLOCK_PATHS)}

    def score(item: tuple[str, nn.Module]) -> tuple:
        path, mod = item
        classes = set(_classes(mod))
        last = path.rsplit(".", 1)[-1]
        return (
            bool(no_split) and classes <= no_split,
            not _nested(path, candidates),
            path in known,
            -known.get(path, len(known)),
            last in _PREFERRED_NAMES,
            all(_is_block_like(m) for m in mod),
            len(mod),
            -path.count("."),
        )

    return max(candidates, key=score)


def find_blocks(
    model: nn.Module, blocks: str | Sequence[str] | None = None
) -> list[tuple[str, nn.Module]]:
    """Return ``[(path, block), ...]`` for the model's transformer blocks, in order.

    ``blocks`` overrides the search: a dotted path to an ``nn.ModuleList``/``nn.Sequential``
    (``"model.layers"``), or a list of dotted paths of individual modules. Raises
    :class:`ModelError` for a non-module, a bad override, or a model whose blocks cannot be
    found (the message lists the lists it saw and shows the override).
    """
    model = _check_module(model)
    lists = _lists(model)
    if blocks is not None:
        return _override(model, blocks, lists)

    counts = _layer_counts(model)
    matched = [(p, m) for p, m in lists if len(m) in counts]
    if matched:
        return _as_blocks(*_pick(matched, model))

    modules = dict(model.named_modules())
    for path in KNOWN_BLOCK_PATHS:
        mod = modules.get(path)
        if isinstance(mod, (nn.ModuleList, nn.Sequential)) and len(mod) > 0:
            return _as_blocks(path, mod)

    generic = [(p, m) for p, m in lists if len(_classes(m)) == 1 and _is_block_like(m[0])]
    generic = [(p, m) for p, m in generic if not _nested(p, generic)]
    if generic:
        return _as_blocks(*_pick(generic, model))

    declared = f" (its config says {sorted(counts)} layers)" if counts else ""
    raise ModelError(
        f"could not find the transformer blocks of {type(model).__name__}{declared}: "
        f"{_describe(lists)}; name the list of blocks yourself, e.g. "
        f'hopaudit.audit(model, data, blocks="path.to.modulelist")'
    )


def _override(
    model: nn.Module, blocks: str | Sequence[str], lists: list[tuple[str, nn.Module]]
) -> list[tuple[str, nn.Module]]:
    modules = dict(model.named_modules())
    if isinstance(blocks, str):
        mod = modules.get(blocks)
        if mod is None:
            raise ModelError(
                f"blocks={blocks!r}: {type(model).__name__} has no module at that path; "
                f"{_describe(lists)}"
            )
        if not isinstance(mod, (nn.ModuleList, nn.Sequential)):
            raise ModelError(
                f"blocks={blocks!r} is a {type(mod).__name__}, not an nn.ModuleList or "
                f"nn.Sequential of blocks; {_describe(lists)}"
            )
        if len(mod) == 0:
            raise ModelError(f"blocks={blocks!r} is an empty {type(mod).__name__}")
        return _as_blocks(blocks, mod)
    paths = list(blocks)
    if not paths or not all(isinstance(p, str) for p in paths):
        raise ModelError(
            "blocks must be a dotted path to a ModuleList (e.g. 'model.layers') or a "
            f"non-empty list of module paths, got {blocks!r}"
        )
    missing = [p for p in paths if p not in modules]
    if missing:
        raise ModelError(
            f"blocks: {type(model).__name__} has no module at {missing[:5]}; {_describe(lists)}"
        )
    return [(p, modules[p]) for p in paths]


def _block_prefixes(block_paths: Sequence[Any]) -> list[str]:
    return [p[0] if isinstance(p, tuple) else str(p) for p in block_paths]


def _inside(path: str, prefixes: Sequence[str]) -> bool:
    return any(path == p or path.startswith(p + ".") for p in prefixes)


def _find_head(model: nn.Module, blocks: list[str]) -> nn.Module | None:
    """The LM head: ``get_output_embeddings()``, else a Linear named like one outside blocks."""
    get = getattr(model, "get_output_embeddings", None)
    if callable(get):
        try:
            head = get()
        except Exception:
            head = None
        if isinstance(head, nn.Module):
            return head
    for path, mod in model.named_modules():
        last = path.rsplit(".", 1)[-1]
        if isinstance(mod, nn.Linear) and last in _HEAD_NAMES and not _inside(path, blocks):
            return mod
    return None


def _is_norm(path: str, mod: nn.Module) -> bool:
    if isinstance(mod, (nn.LayerNorm, nn.GroupNorm, nn.RMSNorm)):
        return True
    return bool(
        _NORM_CLASS.search(type(mod).__name__) or _NORM_NAME.search(path.rsplit(".", 1)[-1])
    ) and not list(mod.children())


def _probe_head_input(
    model: nn.Module, head: nn.Module, blocks: list[str]
) -> tuple[str, nn.Module] | None:
    """Run 3 tokens through the model; return the module whose output the head reads.

    Hooks only modules outside the blocks that are neither ancestors of the blocks nor of the
    head. A module whose output *is* (or equals) the head's input matches; a norm wins among
    equal outputs (an eval-mode dropout after the norm returns the same values), else the last
    one run. None when the probe cannot run or nothing matches.
    """
    params = list(model.parameters())
    if not params or any(p.is_meta for p in params):
        return None
    device = params[0].device
    head_path = next((p for p, m in model.named_modules() if m is head), None)
    if head_path is None:
        return None
    ancestors = {head_path.rsplit(".", i)[0] for i in range(1, head_path.count(".") + 1)}
    for b in blocks:
        ancestors |= {b.rsplit(".", i)[0] for i in range(1, b.count(".") + 1)}
    ancestors.add("")
    watched = [
        (p, m)
        for p, m in model.named_modules()
        if p not in ancestors
        and p != head_path
        and not _inside(p, blocks)
        and not _inside(p, [head_path])
    ]
    seen: list[tuple[str, nn.Module, torch.Tensor]] = []
    head_in: list[torch.Tensor] = []

    def on_output(path: str, mod: nn.Module):
        def hook(_m, _args, out):
            if isinstance(out, torch.Tensor) and not head_in:
                seen.append((path, mod, out))

        return hook

    def on_head(_m, args, kwargs):
        x = args[0] if args else next(iter(kwargs.values()), None)
        if isinstance(x, torch.Tensor) and not head_in:
            head_in.append(x)

    handles = [m.register_forward_hook(on_output(p, m)) for p, m in watched]
    handles.append(head.register_forward_pre_hook(on_head, with_kwargs=True))
    ids = torch.tensor([[1, 2, 3]], dtype=torch.long, device=device)
    run = getattr(model, "_orig_mod", model)  # torch.compile wrapper: probe without compiling
    try:
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            try:
                run(input_ids=ids)
            except TypeError:
                run(ids)
    except Exception:
        return None
    finally:
        for h in handles:
            h.remove()
    if not head_in:
        return None
    x = head_in[0]
    matches = []
    for path, mod, out in seen:
        if out is x:
            matches.append((path, mod))
        elif out.shape[-1:] == x.shape[-1:] and out.dtype == x.dtype:
            flat = out.reshape(-1, out.shape[-1])
            want = x.reshape(-1, x.shape[-1])
            if flat.shape == want.shape and torch.equal(flat, want):
                matches.append((path, mod))
            elif flat.shape[0] > want.shape[0] and torch.equal(flat[-want.shape[0] :], want):
                matches.append((path, mod))  # the head reads the last positions only
    if not matches:
        return None
    norms = [(p, m) for p, m in matches if _is_norm(p, m)]
    return (norms or matches)[-1]


def _structural_norm(model: nn.Module, blocks: list[str]) -> tuple[str, nn.Module] | None:
    """The first norm registered after the blocks' list, a sibling of it or of its parent."""
    if not blocks:
        return None
    container = blocks[0].rsplit(".", 1)[0] if "." in blocks[0] else ""
    parent = container.rsplit(".", 1)[0] if "." in container else ""
    grandparent = parent.rsplit(".", 1)[0] if "." in parent else ""
    after = False
    for path, mod in model.named_modules():
        if path == container or _inside(path, blocks):
            after = True
            continue
        if not after or not _is_norm(path, mod):
            continue
        owner = path.rsplit(".", 1)[0] if "." in path else ""
        if owner in {parent, grandparent} and owner != container:
            return path, mod
    return None


def find_final_norm(model: nn.Module, block_paths: Sequence[Any]) -> tuple[str, nn.Module] | None:
    """Return ``(path, module)`` of the module whose output is the LM head's input, or None.

    With an LM head (``get_output_embeddings()`` or a Linear named ``lm_head``/``embed_out``/
    ...), a 3-token probe forward finds the module whose output the head reads: usually the
    final norm (``transformer.ln_f``, ``model.norm``, ``gpt_neox.final_layer_norm``,
    ``model.decoder.final_layer_norm``), but e.g. OPT-350m's ``project_out`` Linear, or the
    head transform's LayerNorm of a masked LM. Without a head, or when the probe cannot run
    or finds no module (the head reads a functional result), the first norm registered after
    the blocks and sitting next to their list is returned. None when there is no such norm,
    e.g. BERT-style encoders, whose last block's output is already the final representation.
    ``block_paths`` are the block paths (strings) or ``find_blocks``' (path, module) pairs.
    """
    model = _check_module(model)
    blocks = _block_prefixes(block_paths)
    head = _find_head(model, blocks)
    if head is not None:
        found = _probe_head_input(model, head, blocks)
        if found is not None:
            return found
    return _structural_norm(model, blocks)


def count_parameters(model: nn.Module, blocks: Sequence[Any]) -> tuple[int, int]:
    """Return ``(total, in_blocks)`` parameter counts, each shared (tied) tensor counted once.

    ``blocks`` are ``find_blocks``' (path, module) pairs, or modules. A tensor shared between
    a block and something outside it counts as in the blocks.
    """
    model = _check_module(model)
    seen: set[int] = set()
    total = 0
    for p in model.parameters():  # parameters() already skips duplicates
        if id(p) not in seen:
            seen.add(id(p))
            total += p.numel()
    in_blocks: set[int] = set()
    n_blocks = 0
    for item in blocks:
        mod = item[1] if isinstance(item, tuple) else item
        for p in mod.parameters():
            if id(p) not in in_blocks:
                in_blocks.add(id(p))
                n_blocks += p.numel()
    return total, n_blocks


def input_embedding(model: nn.Module) -> nn.Module | None:
    """The model's token embedding as transformers reports it (None when it does not say)."""
    get_emb = getattr(model, "get_input_embeddings", None)
    if not callable(get_emb):
        return None
    try:
        return get_emb()
    except (NotImplementedError, AttributeError):
        return None


def vocab_size(model: nn.Module) -> int | None:
    """Token vocabulary size: the input embedding's rows, else the (text) config's, else the
    first nn.Embedding of a plain module; None when none says."""
    emb = input_embedding(model)
    if isinstance(emb, nn.Embedding):
        return int(emb.num_embeddings)
    cfg = getattr(model, "config", None)
    if cfg is not None and hasattr(cfg, "get_text_config"):
        cfg = cfg.get_text_config()
    v = getattr(cfg, "vocab_size", None)
    if isinstance(v, int):
        return v
    if cfg is None:  # a plain module (nanoGPT style): its first embedding is the token one
        for m in model.modules():
            if isinstance(m, nn.Embedding):
                return int(m.num_embeddings)
    return None
