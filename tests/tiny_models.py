"""Tiny random models of many architectures, and a real tokenizer, built offline for tests.

``tiny_model(arch)`` builds a seeded, randomly initialised model from a transformers config
(2-3 blocks, hidden 32-64, vocab 512) or a plain ``nn.Module`` nanoGPT-style model, and returns
it with a :class:`TinyInfo` saying where its blocks and final norm are, so tests can check the
code that finds them against what the architecture is known to have. ``tiny_tokenizer()``
trains a byte-level BPE ``PreTrainedTokenizerFast`` on a short embedded text (no hub needed).

Nothing here downloads anything: every model comes from ``from_config`` with small sizes.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

VOCAB_SIZE = 512  # every tiny model's vocabulary: larger than the tiny tokenizer's


@dataclass(frozen=True)
class TinyInfo:
    """What a tiny model is known to look like (the test oracle, written by hand per arch)."""

    arch: str
    block_prefix: str  # dotted path of the ModuleList of blocks, e.g. "transformer.h"
    num_blocks: int
    has_lm_head: bool  # True for causal LMs (the final norm feeds the LM head)
    final_norm: str | None  # dotted path of the norm whose output is the LM head's input
    hidden_size: int
    vocab_size: int
    is_decoder: bool

    @property
    def block_paths(self) -> list[str]:
        return [f"{self.block_prefix}.{i}" for i in range(self.num_blocks)]


# arch -> (model_type for AutoConfig, config kwargs, block prefix, final norm, loader kind)
# Loader kinds: "causal" (AutoModelForCausalLM), "base" (AutoModel), "masked" (...ForMaskedLM).
_H = 32  # hidden size of most tiny models
_SPECS: dict[str, tuple[str, dict[str, Any], str, str | None, str]] = {
    "gpt2": (
        "gpt2",
        dict(n_embd=_H, n_layer=3, n_head=4, n_positions=128),
        "transformer.h",
        "transformer.ln_f",
        "causal",
    ),
    "gpt_neo": (
        "gpt_neo",
        dict(
            hidden_size=_H,
            num_layers=3,
            num_heads=4,
            max_position_embeddings=128,
            attention_types=[[["global", "local"], 1], [["global"], 1]],
            window_size=16,
        ),
        "transformer.h",
        "transformer.ln_f",
        "causal",
    ),
    "gpt_neox": (
        "gpt_neox",
        dict(
            hidden_size=_H,
            num_hidden_layers=3,
            num_attention_heads=4,
            intermediate_size=64,
            max_position_embeddings=128,
        ),
        "gpt_neox.layers",
        "gpt_neox.final_layer_norm",
        "causal",
    ),
    "gptj": (
        "gptj",
        dict(n_embd=_H, n_layer=3, n_head=4, rotary_dim=4, n_positions=128),
        "transformer.h",
        "transformer.ln_f",
        "causal",
    ),
    "opt": (
        "opt",
        dict(
            hidden_size=_H,
            num_hidden_layers=3,
            num_attention_heads=4,
            ffn_dim=64,
            word_embed_proj_dim=_H,
            max_position_embeddings=128,
        ),
        "model.decoder.layers",
        "model.decoder.final_layer_norm",
        "causal",
    ),
    "bloom": (
        "bloom",
        dict(hidden_size=_H, n_layer=3, n_head=4),
        "transformer.h",
        "transformer.ln_f",
        "causal",
    ),
    "falcon": (
        "falcon",
        dict(
            hidden_size=_H,
            num_hidden_layers=3,
            num_attention_heads=4,
            new_decoder_architecture=False,
            alibi=False,
        ),
        "transformer.h",
        "transformer.ln_f",
        "causal",
    ),
    "llama": (
        "llama",
        dict(
            hidden_size=_H,
            num_hidden_layers=3,
            num_attention_heads=4,
            num_key_value_heads=2,
            intermediate_size=64,
            max_position_embeddings=128,
        ),
        "model.layers",
        "model.norm",
        "causal",
    ),
    "mistral": (
        "mistral",
        dict(
            hidden_size=_H,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            intermediate_size=64,
            max_position_embeddings=128,
        ),
        "model.layers",
        "model.norm",
        "causal",
    ),
    "qwen2": (
        "qwen2",
        dict(
            hidden_size=_H,
            num_hidden_layers=3,
            num_attention_heads=4,
            num_key_value_heads=2,
            intermediate_size=64,
            max_position_embeddings=128,
        ),
        "model.layers",
        "model.norm",
        "causal",
    ),
    "gemma": (
        "gemma",
        dict(
            hidden_size=_H,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=1,
            head_dim=8,
            intermediate_size=64,
            max_position_embeddings=128,
        ),
        "model.layers",
        "model.norm",
        "causal",
    ),
    "phi": (
        "phi",
        dict(
            hidden_size=_H,
            num_hidden_layers=3,
            num_attention_heads=4,
            intermediate_size=64,
            max_position_embeddings=128,
        ),
        "model.layers",
        "model.final_layernorm",
        "causal",
    ),
    "bert": (
        "bert",
        dict(
            hidden_size=_H,
            num_hidden_layers=3,
            num_attention_heads=4,
            intermediate_size=64,
            max_position_embeddings=128,
        ),
        "encoder.layer",
        None,
        "base",
    ),
    "roberta": (
        "roberta",
        dict(
            hidden_size=_H,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=64,
            max_position_embeddings=130,
            pad_token_id=1,
        ),
        "encoder.layer",
        None,
        "base",
    ),
    "distilbert": (
        "distilbert",
        dict(dim=_H, n_layers=3, n_heads=4, hidden_dim=64, max_position_embeddings=128),
        "transformer.layer",
        None,
        "base",
    ),
}

ARCHS: list[str] = [*_SPECS, "nanogpt"]
DECODER_ARCHS: list[str] = [a for a in ARCHS if a not in ("bert", "roberta", "distilbert")]
ENCODER_ARCHS: list[str] = ["bert", "roberta", "distilbert"]

# Where the blocks sit when an encoder is loaded with its masked-LM head (kind="masked").
_MASKED_PREFIX = {"bert": "bert.", "roberta": "roberta.", "distilbert": "distilbert."}


class NanoBlock(nn.Module):
    """A pre-norm transformer block: causal self-attention and an MLP, each residual."""

    def __init__(self, d: int, n_head: int) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(d)
        self.attn = nn.MultiheadAttention(d, n_head, batch_first=True)
        self.ln_2 = nn.LayerNorm(d)
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = x.shape[1]
        causal = torch.triu(torch.ones(t, t, dtype=torch.bool, device=x.device), diagonal=1)
        h = self.ln_1(x)
        x = x + self.attn(h, h, h, attn_mask=causal, need_weights=False)[0]
        return x + self.mlp(self.ln_2(x))


class NanoGPT(nn.Module):
    """A plain nanoGPT-style LM with no transformers config: forward(input_ids) -> logits."""

    def __init__(self, vocab_size: int = VOCAB_SIZE, d: int = _H, n_layer: int = 3,
                 n_head: int = 4, max_len: int = 128) -> None:  # fmt: skip
        super().__init__()
        self.wte = nn.Embedding(vocab_size, d)
        self.wpe = nn.Embedding(max_len, d)
        self.blocks = nn.ModuleList(NanoBlock(d, n_head) for _ in range(n_layer))
        self.ln_f = nn.LayerNorm(d)
        self.lm_head = nn.Linear(d, vocab_size, bias=False)
        self.lm_head.weight = self.wte.weight  # tied, like GPT-2

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None):
        pos = torch.arange(input_ids.shape[1], device=input_ids.device)
        x = self.wte(input_ids) + self.wpe(pos)[None]
        for block in self.blocks:
            x = block(x)
        return self.lm_head(self.ln_f(x))


def tiny_model(arch: str, *, seed: int = 0, kind: str | None = None, **overrides: Any):
    """Build a tiny seeded random model of ``arch`` and return ``(model, info)``.

    ``overrides`` go into the transformers config (e.g. ``num_hidden_layers=4``); ``kind``
    picks the loader: "causal" (default for decoders), "base" (default for encoders: what a
    user would audit, e.g. ``BertModel``) or "masked" (``...ForMaskedLM``). The model is in
    eval mode, float32, on the CPU. The global RNG state is left untouched.
    """
    if arch == "nanogpt":
        n_layer = int(overrides.pop("n_layer", 3))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = NanoGPT(n_layer=n_layer, **overrides).eval()
        info = TinyInfo("nanogpt", "blocks", n_layer, True, "ln_f", model.ln_f.normalized_shape[0],
                        model.wte.num_embeddings, True)  # fmt: skip
        return model, info
    if arch not in _SPECS:
        raise KeyError(f"unknown tiny arch {arch!r}; choose from {ARCHS}")
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoModelForMaskedLM

    model_type, kwargs, prefix, final_norm, default_kind = _SPECS[arch]
    kind = kind or default_kind
    # Special ids inside the tiny vocabulary (the defaults, e.g. GPT-2's 50256, are not).
    special = (
        {"pad_token_id": 0, "eos_token_id": 1, "bos_token_id": 2}
        if default_kind == "causal"
        else {}
    )
    cfg_kwargs = {"vocab_size": VOCAB_SIZE, **special, **kwargs, **overrides}
    config = AutoConfig.for_model(model_type, **cfg_kwargs)
    loader = {"causal": AutoModelForCausalLM, "base": AutoModel, "masked": AutoModelForMaskedLM}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = loader[kind].from_config(config).float().eval()
    if kind == "masked":
        prefix = _MASKED_PREFIX[arch] + prefix
    text_cfg = config.get_text_config() if hasattr(config, "get_text_config") else config
    info = TinyInfo(
        arch=arch,
        block_prefix=prefix,
        num_blocks=int(text_cfg.num_hidden_layers),
        has_lm_head=kind == "causal",
        final_norm=final_norm,
        hidden_size=int(text_cfg.hidden_size),
        vocab_size=int(text_cfg.vocab_size),
        is_decoder=arch in DECODER_ARCHS,
    )
    return model, info


TOKENIZER_TEXT = """\
The quick brown fox jumps over the lazy dog. A memory stores patterns; a query falls into the
basin of the nearest one. Transformers keep what they have seen in the geometry of their layers.
Every block adds a little to the residual stream, and the last norm feeds the language model head.
Numbers like 1, 2, 3 and 42 appear too, as do names: Ada, Alan, Grace and Claude.
"""


@functools.lru_cache(maxsize=4)
def _trained_tokenizer_json(vocab_size: int) -> str:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<pad>", "<eos>", "<bos>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([TOKENIZER_TEXT] * 3, trainer=trainer)
    return tok.to_str()


def tiny_tokenizer(
    vocab_size: int = 320,
    *,
    pad: bool = True,
    eos: bool = True,
    bos: bool = True,
    template: str | None = None,
):
    """A real byte-level BPE ``PreTrainedTokenizerFast`` trained offline on a short text.

    Special tokens: ``<pad>`` (id 0), ``<eos>`` (id 1), ``<bos>`` (id 2); each can be left out
    of the tokenizer's roles with ``pad=False`` etc. (the ids stay in the vocabulary). Any text
    can be encoded (byte-level), and ``decode(encode(text)) == text``. ``template`` sets what
    ``add_special_tokens=True`` adds: None (nothing, like GPT-2), ``"bos"`` (``<bos>`` first,
    like Llama) or ``"cls_sep"`` (``<bos> ... <eos>`` around the text, like BERT's CLS/SEP).
    """
    from tokenizers import Tokenizer, processors
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer.from_str(_trained_tokenizer_json(vocab_size))
    specials = [("<bos>", 2), ("<eos>", 1)]
    if template == "bos":
        backend.post_processor = processors.TemplateProcessing(
            single="<bos> $A", pair="<bos> $A $B", special_tokens=specials
        )
    elif template == "cls_sep":
        backend.post_processor = processors.TemplateProcessing(
            single="<bos> $A <eos>", pair="<bos> $A <eos> $B <eos>", special_tokens=specials
        )
    elif template is not None:
        raise ValueError(f"template must be None, 'bos' or 'cls_sep', got {template!r}")
    roles: dict[str, str] = {}
    if pad:
        roles["pad_token"] = "<pad>"
    if eos:
        roles["eos_token"] = "<eos>"
    if bos:
        roles["bos_token"] = "<bos>"
    return PreTrainedTokenizerFast(tokenizer_object=backend, **roles)


# ------------------------------------------------------------------ encoder-decoders, encoders
# Seq2seq configs: 2 encoder and 2 decoder blocks, d_model 32, vocab 512 (the tiny tokenizer's
# ids fit). Pre-LN families (T5, mBART, Pegasus, Whisper) have a final norm per stack; BART and
# Marian are post-LN: their last blocks end the stacks.
_S2S = dict(
    d_model=_H,
    encoder_layers=2,
    decoder_layers=2,
    encoder_attention_heads=4,
    decoder_attention_heads=4,
    encoder_ffn_dim=64,
    decoder_ffn_dim=64,
    vocab_size=VOCAB_SIZE,
    pad_token_id=0,
    eos_token_id=1,
    bos_token_id=2,
)
SEQ2SEQ_SPECS: dict[str, tuple[str, dict[str, Any]]] = {
    "t5": (
        "t5",
        dict(
            d_model=_H,
            d_ff=64,
            num_layers=2,
            num_decoder_layers=2,
            num_heads=4,
            d_kv=8,
            vocab_size=VOCAB_SIZE,
            pad_token_id=0,
            eos_token_id=1,
            decoder_start_token_id=0,
        ),
    ),
    "bart": (
        "bart",
        dict(_S2S, max_position_embeddings=128, decoder_start_token_id=1, forced_eos_token_id=None),
    ),
    "mbart": ("mbart", dict(_S2S, max_position_embeddings=128)),
    "pegasus": ("pegasus", dict(_S2S, max_position_embeddings=128, decoder_start_token_id=0)),
    "marian": ("marian", dict(_S2S, max_position_embeddings=128, decoder_start_token_id=0)),
    "whisper": (
        "whisper",
        dict(
            _S2S,
            num_mel_bins=16,
            max_source_positions=16,
            max_target_positions=64,
            decoder_start_token_id=2,
            suppress_tokens=None,
            begin_suppress_tokens=None,
        ),
    ),
}
SEQ2SEQ_ARCHS: list[str] = list(SEQ2SEQ_SPECS)

#: A small wav2vec2-style speech encoder (wav2vec2 and HuBERT share it): two blocks over a
#: two-layer convolutional feature extractor.
_SPEECH = dict(
    hidden_size=_H,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=64,
    conv_dim=(16, 16),
    conv_stride=(5, 2),
    conv_kernel=(10, 3),
    num_conv_pos_embeddings=16,
    num_conv_pos_embedding_groups=4,
    feat_extract_norm="layer",
    do_stable_layer_norm=True,
)


# Non-text encoders: model_type, config kwargs, where the blocks are, main input.
ENCODER_SPECS: dict[str, tuple[str, dict[str, Any], str]] = {
    "vit": (
        "vit",
        dict(
            hidden_size=_H,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=64,
            image_size=32,
            patch_size=8,
        ),
        "encoder.layer",
    ),
    "clip_vision": (
        "clip_vision_model",
        dict(
            hidden_size=_H,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=64,
            image_size=32,
            patch_size=8,
        ),
        "vision_model.encoder.layers",
    ),
    "dinov2": (
        "dinov2",
        dict(
            hidden_size=_H,
            num_hidden_layers=2,
            num_attention_heads=4,
            mlp_ratio=2,
            image_size=32,
            patch_size=8,
        ),
        "encoder.layer",
    ),
    "wav2vec2": (
        "wav2vec2",
        _SPEECH,
        "encoder.layers",
    ),
    "hubert": (
        "hubert",
        _SPEECH,
        "encoder.layers",
    ),
    "whisper_encoder": ("whisper", SEQ2SEQ_SPECS["whisper"][1], "layers"),
}


def tiny_seq2seq(arch: str, *, seed: int = 0):
    """A tiny seeded random encoder-decoder with its LM head (``...ForConditionalGeneration``,
    ``MarianMTModel``), float32, eval mode, on the CPU."""
    from transformers import AutoConfig, AutoModelForSeq2SeqLM, WhisperForConditionalGeneration

    model_type, kwargs = SEQ2SEQ_SPECS[arch]
    config = AutoConfig.for_model(model_type, **kwargs)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if arch == "whisper":
            model = WhisperForConditionalGeneration(config)
        else:
            model = AutoModelForSeq2SeqLM.from_config(config)
    return model.float().eval()


def tiny_encoder(arch: str, *, seed: int = 0):
    """A tiny seeded random image or audio encoder (``AutoModel``; the Whisper encoder alone),
    float32, eval mode, on the CPU, and the dotted path of its blocks."""
    from transformers import AutoConfig, AutoModel, WhisperConfig
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

    model_type, kwargs, prefix = ENCODER_SPECS[arch]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if arch == "whisper_encoder":
            model = WhisperEncoder(WhisperConfig(**kwargs))
        else:
            model = AutoModel.from_config(AutoConfig.for_model(model_type, **kwargs))
    return model.float().eval(), prefix


def tiny_mamba(*, seed: int = 0):
    """A tiny seeded random Mamba LM (no attention: a state-space model), on the CPU."""
    from transformers import MambaConfig, MambaForCausalLM

    config = MambaConfig(
        vocab_size=VOCAB_SIZE,
        hidden_size=_H,
        state_size=4,
        num_hidden_layers=2,
        expand=2,
        conv_kernel=4,
        use_mambapy=False,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=2,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = MambaForCausalLM(config)
    return model.float().eval()


def random_texts(n: int, *, words: int = 30, seed: int = 0) -> list[str]:
    """``n`` texts of ``words`` words drawn (seeded) from the tiny tokenizer's vocabulary: the
    data of most audits in the tests."""
    import random

    rng = random.Random(seed)
    vocab = TOKENIZER_TEXT.split()
    return [" ".join(rng.choice(vocab) for _ in range(words)) for _ in range(n)]
