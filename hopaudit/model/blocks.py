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
import inspect
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from hopaudit.errors import ModelError

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


_NO_MATCH = ("no match",)  # the probe ran and the head reads a block's output (post-LN)


def _probe_head_input(
    model: nn.Module, head: nn.Module, blocks: list[str]
) -> tuple[str, nn.Module] | tuple[str] | None:
    """Run 3 tokens through the model; return the module whose output the head reads.

    Hooks only modules outside the blocks that are neither ancestors of the blocks nor of the
    head. A module whose output *is* (or equals) the head's input matches; a norm wins among
    equal outputs (an eval-mode dropout after the norm returns the same values), else the last
    one run. ``_NO_MATCH`` when the head reads the last block's output itself (a post-LN model
    such as BART: no final norm); None when the probe cannot run or nothing matches.
    """
    probe = probe_inputs(model)
    if probe is None:
        return None
    last_block = dict(model.named_modules()).get(blocks[-1]) if blocks else None
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

    last_out: list[torch.Tensor] = []

    def on_last(_m, _args, out):
        t = out if isinstance(out, torch.Tensor) else out[0] if isinstance(out, tuple) else None
        if isinstance(t, torch.Tensor) and not head_in:
            last_out[:] = [t]

    handles = []
    try:  # the hooks go, whatever happens (Ctrl-C included)
        handles = [m.register_forward_hook(on_output(p, m)) for p, m in watched]
        handles.append(head.register_forward_pre_hook(on_head, with_kwargs=True))
        if last_block is not None:
            handles.append(last_block.register_forward_hook(on_last))
        ran = _run_probe(model, probe)
    finally:
        for h in handles:
            h.remove()
    if not ran or not head_in:
        return None
    x = head_in[0]
    if last_out and _same_rows(last_out[0], x):
        return _NO_MATCH
    matches = [(path, mod) for path, mod, out in seen if _same_rows(out, x)]
    if not matches:
        return None
    norms = [(p, m) for p, m in matches if _is_norm(p, m)]
    return (norms or matches)[-1]


def _same_rows(out: torch.Tensor, x: torch.Tensor) -> bool:
    """Is ``x`` (the head's input) ``out``, or equal to it (or to its last positions)?"""
    if out is x:
        return True
    if out.shape[-1:] != x.shape[-1:] or out.dtype != x.dtype or out.device != x.device:
        return False
    flat = out.reshape(-1, out.shape[-1])
    want = x.reshape(-1, x.shape[-1])
    if flat.shape == want.shape:
        return torch.equal(flat, want)
    # the head reads the last positions only
    return flat.shape[0] > want.shape[0] and torch.equal(flat[-want.shape[0] :], want)


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
        if found == _NO_MATCH:
            return None  # the head reads the last block's output: no final norm
        if found is not None:
            return found  # type: ignore[return-value]
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


# ----------------------------------------------------------------------------- devices, probe
def _hook_device(module: nn.Module) -> torch.device | None:
    """The execution device accelerate's hook on ``module`` moves inputs to, if it has one."""
    hook = getattr(module, "_hf_hook", None)
    hooks = [hook, *(getattr(hook, "hooks", None) or [])]  # a SequentialHook holds several
    for h in hooks:
        dev = getattr(h, "execution_device", None)
        if dev is not None and str(dev) != "meta":
            return torch.device(f"cuda:{dev}" if isinstance(dev, int) else dev)
    return None


def is_dispatched(model: nn.Module) -> bool:
    """Has accelerate placed hooks on the model (dispatch_model, device_map, cpu_offload)?"""
    return any(hasattr(m, "_hf_hook") for m in model.modules())


def execution_device(model: nn.Module) -> torch.device:
    """Where inputs go: the execution device accelerate's hooks name for the first module that
    runs (the input embedding, else the model, else the first hooked module), else the input
    embedding's device, else the first non-meta parameter's, else the CPU. A meta device only
    for a model wholly on meta without hooks: under ``cpu_offload`` and disk offload the
    weights sit on meta between forwards, and the hooks name where they run."""
    emb = input_embedding(model)
    for mod in (emb, model):
        dev = _hook_device(mod) if isinstance(mod, nn.Module) else None
        if dev is not None:
            return dev
    for mod in model.modules():
        dev = _hook_device(mod)
        if dev is not None:
            return dev
    weight = getattr(emb, "weight", None)
    if isinstance(weight, torch.Tensor) and not weight.is_meta:
        return weight.device
    params = list(model.parameters())
    for p in params:
        if not p.is_meta:
            return p.device
    return params[0].device if params else torch.device("cpu")  # meta only: nothing can run


def _sub_config(model: nn.Module, *names: str) -> Any:
    cfg = getattr(model, "config", None)
    for n in names:
        sub = getattr(cfg, n, None)
        if sub is not None:
            return sub
    return cfg


def main_input_name(model: nn.Module) -> str:
    """The forward keyword that carries the data: ``input_ids``, ``pixel_values``,
    ``input_features`` or ``input_values`` (transformers' ``main_input_name``)."""
    name = getattr(model, "main_input_name", None)
    return name if isinstance(name, str) else "input_ids"


def is_encoder_decoder(model: nn.Module) -> bool:
    """Does the model run an encoder and a decoder (not just share such a config, as
    Whisper's encoder alone does)?"""
    if not getattr(getattr(model, "config", None), "is_encoder_decoder", False):
        return False
    return _encoder_and_decoder(model) is not None


def _encoder_and_decoder(model: nn.Module) -> tuple[nn.Module, nn.Module] | None:
    get_enc = getattr(model, "get_encoder", None)
    get_dec = getattr(model, "get_decoder", None)
    enc = dec = None
    with contextlib.suppress(Exception):
        enc = get_enc() if callable(get_enc) else getattr(model, "encoder", None)
    with contextlib.suppress(Exception):
        dec = get_dec() if callable(get_dec) else getattr(model, "decoder", None)
    ok = isinstance(enc, nn.Module) and isinstance(dec, nn.Module)
    if not ok or enc is dec or enc is model or dec is model:
        return None
    return enc, dec


def decoder_start_ids(model: nn.Module, labels: torch.Tensor) -> torch.Tensor:
    """decoder_input_ids for ``labels`` (-100 = no label): the model's own
    ``prepare_decoder_input_ids_from_labels`` (mBART's wrap-around included), else labels
    shifted right by one behind ``decoder_start_token_id`` with -100 replaced by the pad id."""
    prepare = getattr(model, "prepare_decoder_input_ids_from_labels", None)
    if callable(prepare):
        with contextlib.suppress(Exception):
            out = prepare(labels=labels)
            if isinstance(out, torch.Tensor) and out.shape == labels.shape:
                return out
    cfg = getattr(model, "config", None)
    dec_cfg = cfg.get_text_config(decoder=True) if hasattr(cfg, "get_text_config") else cfg
    start = getattr(cfg, "decoder_start_token_id", None)
    if start is None:
        start = getattr(dec_cfg, "decoder_start_token_id", None)
    if start is None:
        start = getattr(dec_cfg, "bos_token_id", None)
    if start is None:
        raise ModelError(
            f"{type(model).__name__}'s config has no decoder_start_token_id (nor bos_token_id): "
            "cannot build decoder inputs from the labels; set model.config.decoder_start_token_id"
        )
    pad = getattr(cfg, "pad_token_id", None)
    pad = 0 if pad is None else int(pad)
    out = labels.new_full(labels.shape, pad)
    out[:, 1:] = labels[:, :-1]
    out[:, 0] = int(start)
    return out.masked_fill(out == -100, pad)


def probe_inputs(model: nn.Module) -> dict[str, Any] | None:
    """A minimal forward's inputs (one sample, three tokens, or one small image or clip) on
    the execution device, for finding modules by running them; None when unknown."""
    device = execution_device(model)
    main = main_input_name(model)
    vocab = vocab_size(model) or 4
    ids = torch.tensor([[1, 2, 3]], dtype=torch.long, device=device) % max(vocab, 1)
    if main == "input_ids":
        kwargs = {"input_ids": ids}
    elif main == "pixel_values":
        cfg = _sub_config(model, "vision_config")
        size = getattr(cfg, "image_size", 32)
        size = size[0] if isinstance(size, (list, tuple)) else size
        if isinstance(size, dict):
            size = size.get("height", 32)
        chans = getattr(cfg, "num_channels", 3)
        kwargs = {"pixel_values": torch.zeros(1, chans, int(size), int(size), device=device)}
    elif main == "input_features":
        cfg = getattr(model, "config", None)
        bins = getattr(cfg, "num_mel_bins", 80)
        frames = 2 * getattr(cfg, "max_source_positions", 1500)
        kwargs = {"input_features": torch.zeros(1, bins, frames, device=device)}
    elif main == "input_values":
        kwargs = {"input_values": torch.zeros(1, 1600, device=device)}
    else:
        return None
    if is_encoder_decoder(model):
        kwargs["decoder_input_ids"] = ids
    try:
        params = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        params = {}
    if main == "input_ids" and "attention_mask" in params:
        kwargs["attention_mask"] = torch.ones_like(ids)
    if "use_cache" in params:  # T5 without an attention mask fails with a fresh cache
        kwargs["use_cache"] = False
    return kwargs


def _run_probe(model: nn.Module, kwargs: dict[str, Any]) -> bool:
    run = getattr(model, "_orig_mod", model)  # torch.compile wrapper: probe without compiling
    flags = [(m, m.training) for m in run.modules()]
    run.eval()  # as capture runs it: dropout off, so equal outputs are equal
    try:
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            try:
                run(**kwargs)
            except TypeError:
                tensors = [v for v in kwargs.values() if isinstance(v, torch.Tensor)]
                run(tensors[0])  # a plain module: forward(x)
    except Exception:
        return False
    finally:
        for m, f in flags:
            m.training = f
    return True


# ----------------------------------------------------------------------------------- stacks
ENCODER_FINAL = "encoder.final"
COMPILED_PREFIX = "_orig_mod."


@dataclass
class Stack:
    """One stack of blocks: ``name`` ("encoder", "decoder", or the single stack's role),
    ``blocks`` as (path, module) pairs, and the module whose output ends the stack
    (``final``, stored as layer ``final_name``: "final" for the LM head's input,
    "encoder.final" for the encoder's last norm), or None when the last block ends it."""

    name: str
    blocks: list[tuple[str, nn.Module]]
    final: tuple[str, nn.Module] | None
    final_name: str = "final"

    @property
    def layer_names(self) -> list[str]:
        return [p for p, _ in self.blocks] + ([self.final_name] if self.final else [])


def strip_compiled(path: str) -> str:
    """A module path without torch.compile's ``_orig_mod.`` wrapper prefix."""
    while path.startswith(COMPILED_PREFIX):
        path = path[len(COMPILED_PREFIX) :]
    return path


def _uncompiled(model: nn.Module) -> nn.Module:
    inner = getattr(model, "_orig_mod", None)
    return inner if isinstance(inner, nn.Module) else model


def _sub_path(model: nn.Module, sub: nn.Module) -> str | None:
    return next((p for p, m in model.named_modules() if m is sub), None)


def _stack_blocks(model: nn.Module, sub: nn.Module, path: str) -> list[tuple[str, nn.Module]]:
    """The blocks of one stack (``sub``, at ``path`` in ``model``): its longest list of
    one block class (T5's ``block``, BART's ``layers``)."""
    lists = [
        (p, m)
        for p, m in _lists(sub)
        if len(_classes(m)) == 1
        and not _NOT_BLOCK.search(type(m[0]).__name__)
        and any(True for _ in m[0].parameters())
    ]
    lists = [(p, m) for p, m in lists if not _nested(p, lists)]
    if not lists:
        raise ModelError(
            f"could not find the blocks of {type(model).__name__}'s {path or 'stack'}: "
            f"{_describe(_lists(sub))}; pass blocks='path.to.layers' to audit one stack"
        )
    best, mod = _pick(lists, sub)
    full = f"{path}.{best}" if path and best else path or best
    return _as_blocks(full, mod)


def _encoder_final(
    model: nn.Module, encoder: nn.Module, enc_path: str, blocks: list[str]
) -> tuple[str, nn.Module] | None:
    """The encoder's last norm (T5's ``encoder.final_layer_norm``, Whisper's
    ``model.encoder.layer_norm``): a norm registered after the blocks' list as a direct child
    of the encoder, checked by a probe when one can run (its output must be the encoder's
    output); None for post-LN encoders (BART, Marian) whose last block ends the stack."""
    container = blocks[0].rsplit(".", 1)[0]
    after = False
    found: list[tuple[str, nn.Module]] = []
    for path, mod in model.named_modules():
        if path == container:
            after = True
            continue
        if not after or _inside(path, blocks) or not _is_norm(path, mod):
            continue
        owner = path.rsplit(".", 1)[0] if "." in path else ""
        if owner == enc_path:
            found.append((path, mod))
    if not found:
        return None
    probe = probe_inputs(model)
    if probe is None:
        return found[-1]
    outs: dict[str, torch.Tensor] = {}
    enc_out: list[torch.Tensor] = []

    def keep(path: str):
        return lambda _m, _a, o: outs.setdefault(path, o)

    handles = [mod.register_forward_hook(keep(path)) for path, mod in found]
    handles.append(
        encoder.register_forward_hook(
            lambda _m, _a, o: enc_out.append(o if isinstance(o, torch.Tensor) else o[0])
        )
    )
    try:
        ran = _run_probe(model, probe)
    finally:
        for h in handles:
            h.remove()
    if not ran or not enc_out:
        return found[-1]
    # mBART registers layernorm_embedding (input side) and layer_norm (output) after its blocks
    good = [(p, m) for p, m in found if p in outs and _same_rows(outs[p], enc_out[0])]
    return good[-1] if good else None


def stack_role(model: nn.Module, final: tuple[str, nn.Module] | None) -> str:
    """The single stack's name: "decoder" for a model with a next-token head, else "encoder"."""
    cfg = getattr(model, "config", None)
    name = type(model).__name__
    if getattr(cfg, "is_decoder", False) or "CausalLM" in name or name.endswith("LMHeadModel"):
        return "decoder"
    if "MaskedLM" in name or main_input_name(model) != "input_ids":
        return "encoder"
    if cfg is None:  # a plain module: a decoder when it has an LM head
        return "decoder" if _find_head(model, []) is not None else "blocks"
    return "decoder" if _find_head(model, []) is not None else "encoder"


def find_stacks(model: nn.Module, blocks: str | Sequence[str] | None = None) -> list[Stack]:
    """The model's stacks of blocks, in the order they run.

    An encoder-decoder (``config.is_encoder_decoder``: T5, BART, mBART, Pegasus, Marian,
    Whisper) gives two: ``encoder`` (its blocks, then ``encoder.final``, its last norm, when
    it has one) and ``decoder`` (its blocks, then ``final``, the LM head's input, when a module
    other than the last block gives it). Any other model gives one stack of
    :func:`find_blocks`' blocks and :func:`find_final_norm`'s ``final``. ``blocks=`` overrides
    the search and gives one stack. Paths never carry torch.compile's ``_orig_mod.`` prefix.
    """
    model = _uncompiled(_check_module(model))
    if isinstance(blocks, str):
        blocks = strip_compiled(blocks)
    elif blocks is not None and not isinstance(blocks, str):
        blocks = [strip_compiled(b) if isinstance(b, str) else b for b in blocks]
    if blocks is None and is_encoder_decoder(model):
        stacks = _encoder_decoder_stacks(model)
        if stacks is not None:
            return stacks
    found = find_blocks(model, blocks)
    final = find_final_norm(model, [p for p, _ in found])
    if final is not None and not _same_shape_as_blocks(model, found[-1][1], final[1]):
        final = None  # e.g. CLIP vision's post_layernorm, which normalizes the pooled CLS only
    return [Stack(stack_role(model, final), found, final, "final")]


def _same_shape_as_blocks(model: nn.Module, last_block: nn.Module, final: nn.Module) -> bool:
    """Does ``final`` give one row per position, as the last block does (True when no probe
    can run)?"""
    probe = probe_inputs(model)
    if probe is None:
        return True
    shapes: dict[str, tuple] = {}

    def keep(key: str):
        def hook(_m, _a, out):
            t = out if isinstance(out, torch.Tensor) else out[0] if isinstance(out, tuple) else None
            if isinstance(t, torch.Tensor):
                shapes.setdefault(key, tuple(t.shape))

        return hook

    handles = [last_block.register_forward_hook(keep("block")), final.register_forward_hook(
        keep("final"))]  # fmt: skip
    try:
        ran = _run_probe(model, probe)
    finally:
        for h in handles:
            h.remove()
    if not ran or "block" not in shapes or "final" not in shapes:
        return True
    return shapes["final"] == shapes["block"]


def _encoder_decoder_stacks(model: nn.Module) -> list[Stack] | None:
    found = _encoder_and_decoder(model)
    if found is None:
        return None
    enc, dec = found
    enc_path, dec_path = _sub_path(model, enc), _sub_path(model, dec)
    if enc_path is None or dec_path is None:
        return None
    enc_blocks = _stack_blocks(model, enc, enc_path)
    dec_blocks = _stack_blocks(model, dec, dec_path)
    enc_final = _encoder_final(model, enc, enc_path, [p for p, _ in enc_blocks])
    dec_final = find_final_norm(model, [p for p, _ in dec_blocks])
    if dec_final is not None and not _inside(dec_final[0], [dec_path]):
        dec_final = None  # a norm outside the decoder is not the head's input
    return [
        Stack("encoder", enc_blocks, enc_final, ENCODER_FINAL),
        Stack("decoder", dec_blocks, dec_final, "final"),
    ]


# -------------------------------------------------------------------------------- attention
_ATTENTION = re.compile(r"attention|attn", re.IGNORECASE)
# Recurrent and state-space blocks whose time-mixing module is named "attention" (RWKV's).
_NOT_ATTENTION = re.compile(r"rwkv|mamba|ssm|retnet|hyena", re.IGNORECASE)


def has_attention(blocks: Sequence[Any]) -> bool:
    """Does any block hold an attention module (by class or by attribute name)?"""
    for item in blocks:
        mod = item[1] if isinstance(item, tuple) else item
        if _NOT_ATTENTION.search(type(mod).__name__):
            continue
        for path, sub in mod.named_modules():
            if isinstance(sub, nn.MultiheadAttention) or _ATTENTION.search(type(sub).__name__):
                return True
            if path and _ATTENTION.search(path.rsplit(".", 1)[-1]):
                return True
    return False


def architecture_note(blocks: Sequence[Any]) -> str | None:
    """One line for the summary when the blocks have no attention (Mamba, RWKV, an MLP stack):
    the theory concerns attention blocks. None for transformers."""
    if not blocks or has_attention(blocks):
        return None
    first = blocks[0][1] if isinstance(blocks[0], tuple) else blocks[0]
    return (
        f"not a transformer: its blocks ({type(first).__name__}) have no attention; the "
        "associative-memory theory (docs/theory.md) concerns attention blocks, so the "
        "geometry is measured but the loss floor is not the theory's prediction for this model"
    )


def is_masked_lm(model: nn.Module) -> bool:
    """A masked LM (BERT-style): its logits score the tokens it sees, not the next one."""
    name = type(model).__name__
    return "MaskedLM" in name or name.endswith("ForPreTraining")
