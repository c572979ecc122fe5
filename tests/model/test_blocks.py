"""find_blocks / find_final_norm / count_parameters on tiny models of every architecture.

The oracle is written by hand per architecture in tiny_models.py (block path prefix, count,
final norm); the final norm is also checked by behaviour: its output must equal what the LM
head receives, seen by a forward pre-hook the test puts on the head itself.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import ClassVar

import pytest
import torch
from tiny_models import ARCHS, DECODER_ARCHS, ENCODER_ARCHS, NanoGPT, tiny_model
from torch import nn

from hopaudit.errors import ModelError
from hopaudit.model.blocks import count_parameters, find_blocks, find_final_norm


def _head(model: nn.Module) -> nn.Module:
    """The LM head, found by the test independently of blocks.py."""
    get = getattr(model, "get_output_embeddings", None)
    head = get() if callable(get) else None
    return head if head is not None else model.lm_head


def _head_input_and_output(model, head, module, ids):
    """Run ids; return (what the head received, what ``module`` returned)."""
    got: dict[str, torch.Tensor] = {}
    h1 = head.register_forward_pre_hook(lambda _m, args: got.setdefault("head_in", args[0]))
    h2 = module.register_forward_hook(lambda _m, _a, out: got.setdefault("norm_out", out))
    try:
        with torch.no_grad():
            model(ids)
    finally:
        h1.remove()
        h2.remove()
    return got["head_in"], got["norm_out"]


def _no_hooks_left(model: nn.Module) -> bool:
    return all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


@pytest.mark.parametrize("arch", ARCHS)
def test_blocks_found_for_every_arch(arch):
    model, info = tiny_model(arch)
    found = find_blocks(model)
    assert [p for p, _ in found] == info.block_paths
    container = model.get_submodule(info.block_prefix)
    assert len(found) == info.num_blocks == len(container)
    for i, (_, mod) in enumerate(found):
        assert mod is container[i]


@pytest.mark.parametrize("arch", DECODER_ARCHS)
def test_final_norm_feeds_the_lm_head(arch):
    model, info = tiny_model(arch)
    blocks = find_blocks(model)
    final = find_final_norm(model, [p for p, _ in blocks])
    assert final is not None
    path, module = final
    assert path == info.final_norm
    assert module is model.get_submodule(info.final_norm)
    ids = torch.randint(3, info.vocab_size, (2, 7), generator=torch.Generator().manual_seed(1))
    head_in, norm_out = _head_input_and_output(model, _head(model), module, ids)
    assert head_in.shape == (2, 7, info.hidden_size)
    assert torch.equal(head_in, norm_out)
    assert _no_hooks_left(model)


@pytest.mark.parametrize("arch", ENCODER_ARCHS)
def test_encoders_have_no_final_norm(arch):
    model, _ = tiny_model(arch)
    assert find_final_norm(model, find_blocks(model)) is None


@pytest.mark.parametrize("arch", ENCODER_ARCHS)
def test_masked_lm_final_is_the_head_input(arch):
    model, info = tiny_model(arch, kind="masked")
    blocks = find_blocks(model)
    assert [p for p, _ in blocks] == info.block_paths
    assert info.block_prefix.startswith(arch + ".")
    path, module = find_final_norm(model, blocks)
    assert "norm" in path.lower()
    assert not path.startswith(info.block_prefix)
    ids = torch.randint(3, info.vocab_size, (2, 6), generator=torch.Generator().manual_seed(2))
    head_in, out = _head_input_and_output(model, _head(model), module, ids)
    assert torch.equal(head_in, out)


@pytest.mark.parametrize("layer_norm_before", [True, False])
def test_opt_project_out_is_the_head_input(layer_norm_before):
    # OPT-350m: word_embed_proj_dim != hidden_size adds project_out after the (optional) norm.
    model, _ = tiny_model("opt", word_embed_proj_dim=16, do_layer_norm_before=layer_norm_before)
    decoder = model.model.decoder
    assert decoder.project_out is not None
    assert (decoder.final_layer_norm is not None) == layer_norm_before
    path, module = find_final_norm(model, find_blocks(model))
    assert path == "model.decoder.project_out"
    ids = torch.randint(3, 500, (1, 5), generator=torch.Generator().manual_seed(3))
    head_in, out = _head_input_and_output(model, _head(model), module, ids)
    assert head_in.shape[-1] == 16
    assert torch.equal(head_in, out)


def test_base_decoder_without_head_uses_the_norm_after_the_blocks():
    model, _ = tiny_model("llama", kind="base")  # LlamaModel: no LM head
    blocks = find_blocks(model)
    assert [p for p, _ in blocks] == ["layers.0", "layers.1", "layers.2"]
    path, module = find_final_norm(model, blocks)
    assert path == "norm" and module is model.norm


def test_structural_fallback_when_the_probe_cannot_run():
    class NeedsTwoInputs(NanoGPT):
        def forward(self, input_ids, positions):  # the 3-token probe cannot call this
            return super().forward(input_ids)

    model = NeedsTwoInputs()
    path, module = find_final_norm(model, find_blocks(model))
    assert path == "ln_f" and module is model.ln_f
    assert _no_hooks_left(model)


def test_probe_keeps_rng_and_mode():
    model, _ = tiny_model("gpt2")
    model.train()  # dropout active: the probe must not consume the user's random stream
    state = torch.get_rng_state()
    find_final_norm(model, find_blocks(model))
    assert torch.equal(state, torch.get_rng_state())
    assert model.training
    assert _no_hooks_left(model)


def test_config_count_mismatch_falls_back_to_known_path():
    model, _ = tiny_model("gpt2")
    model.config.n_layer = 99  # e.g. pruned blocks, stale config
    assert [p for p, _ in find_blocks(model)] == [f"transformer.h.{i}" for i in range(3)]


def test_no_split_modules_decides_between_lists_of_the_config_length():
    class Adapter(nn.Module):
        def __init__(self):
            super().__init__()
            self.down, self.up = nn.Linear(8, 2), nn.Linear(2, 8)

    class MyBlock(Adapter):
        pass

    class Model(nn.Module):
        _no_split_modules: ClassVar[list[str]] = ["MyBlock"]

        def __init__(self):
            super().__init__()
            self.config = SimpleNamespace(num_hidden_layers=3)
            self.stack_a = nn.ModuleList(Adapter() for _ in range(3))
            self.stack_b = nn.ModuleList(MyBlock() for _ in range(3))

    model = Model()
    assert [p for p, _ in find_blocks(model)] == ["stack_b.0", "stack_b.1", "stack_b.2"]
    Model._no_split_modules = ["Adapter"]
    assert next(p for p, _ in find_blocks(model)) == "stack_a.0"


def test_plain_model_generic_search_prefers_top_level_blocks():
    class Expert(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1, self.fc2 = nn.Linear(8, 16), nn.Linear(16, 8)

    class MoEBlock(nn.Module):
        def __init__(self):
            super().__init__()
            self.norm = nn.LayerNorm(8)
            self.experts = nn.ModuleList(Expert() for _ in range(6))

    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(10, 8)
            self.stack = nn.ModuleList(MoEBlock() for _ in range(2))  # fewer than experts
            self.norms = nn.ModuleList(nn.LayerNorm(8) for _ in range(5))
            self.out = nn.Linear(8, 10)

    found = find_blocks(Model())
    assert [p for p, _ in found] == ["stack.0", "stack.1"]


def test_plain_model_with_a_sequential_of_blocks():
    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.blocks = nn.Sequential(*NanoGPT(n_layer=4).blocks)
            self.head_mlp = nn.Sequential(nn.Linear(32, 32), nn.Linear(32, 32))

    found = find_blocks(Model())
    assert [p for p, _ in found] == [f"blocks.{i}" for i in range(4)]


def test_override_by_path_and_by_list():
    model, _ = tiny_model("llama")
    found = find_blocks(model, "model.layers")
    assert [p for p, _ in found] == [f"model.layers.{i}" for i in range(3)]
    some = find_blocks(model, ["model.layers.0", "model.layers.2.mlp"])
    assert [p for p, _ in some] == ["model.layers.0", "model.layers.2.mlp"]
    assert some[1][1] is model.model.layers[2].mlp


def test_bad_overrides_error_with_what_is_there():
    model, _ = tiny_model("gpt2")
    with pytest.raises(
        ModelError, match=r"no module at that path.*transformer\.h \(3 x GPT2Block\)"
    ):
        find_blocks(model, "transformer.blocks")
    with pytest.raises(ModelError, match=r"is a Linear, not an nn\.ModuleList"):
        find_blocks(model, "lm_head")
    with pytest.raises(ModelError, match="no module at"):
        find_blocks(model, ["transformer.h.0", "transformer.h.7"])
    with pytest.raises(ModelError, match="dotted path"):
        find_blocks(model, [])


def test_models_without_blocks_list_the_candidates():
    with pytest.raises(ModelError, match=r'no nn.ModuleList.*blocks="path.to.modulelist"'):
        find_blocks(nn.Linear(4, 4))
    seq = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 4))
    with pytest.raises(ModelError, match=r"<model> \(3 x Linear\).*audit\(model, data, blocks="):
        find_blocks(seq)


def test_non_models_error():
    with pytest.raises(ModelError, match=r"got str.*from_pretrained\('gpt2'\)"):
        find_blocks("gpt2")
    with pytest.raises(ModelError, match="got dict"):
        find_blocks({"layers": []})
    with pytest.raises(ModelError, match="got int"):
        find_final_norm(3, [])
    with pytest.raises(ModelError, match="got NoneType"):
        count_parameters(None, [])


def _gpt2_hand_count(d, n_layer, vocab, n_pos, tied):
    block = (2 * d) + (d * 3 * d + 3 * d) + (d * d + d) + (2 * d) + (d * 4 * d + 4 * d)
    block += 4 * d * d + d
    total = vocab * d + n_pos * d + n_layer * block + 2 * d + (0 if tied else vocab * d)
    return total, n_layer * block


@pytest.mark.parametrize("tied", [True, False])
def test_parameter_counts_gpt2_by_hand(tied):
    model, _ = tiny_model("gpt2", tie_word_embeddings=tied)
    assert (model.lm_head.weight is model.transformer.wte.weight) == tied
    total, in_blocks = count_parameters(model, find_blocks(model))
    assert (total, in_blocks) == _gpt2_hand_count(32, 3, 512, 128, tied)


def test_parameter_counts_nanogpt_by_hand():
    model, info = tiny_model("nanogpt")
    d, v, n_layer, n_pos = 32, info.vocab_size, 3, 128
    attn = (3 * d * d + 3 * d) + (d * d + d)
    mlp = (d * 4 * d + 4 * d) + (4 * d * d + d)
    block = 2 * d + attn + 2 * d + mlp
    expect_total = v * d + n_pos * d + n_layer * block + 2 * d  # lm_head tied to wte
    total, in_blocks = count_parameters(model, find_blocks(model))
    assert (total, in_blocks) == (expect_total, n_layer * block)
    # a tensor shared by two blocks counts once
    model.blocks[1].ln_1.weight = model.blocks[0].ln_1.weight
    total2, in_blocks2 = count_parameters(model, find_blocks(model))
    assert (total2, in_blocks2) == (expect_total - d, n_layer * block - d)


def test_compiled_model_is_found_and_probed_without_compiling():
    model, info = tiny_model("llama")
    compiled = torch.compile(model)  # compiles lazily: a forward through it would compile
    found = find_blocks(compiled)
    assert [p for p, _ in found] == ["_orig_mod." + p for p in info.block_paths]
    path, module = find_final_norm(compiled, found)
    assert path == "_orig_mod.model.norm" and module is model.model.norm


def _llama_hand_count(c) -> tuple[int, int]:
    d, f, v = c.hidden_size, c.intermediate_size, c.vocab_size
    kv = c.num_key_value_heads * (d // c.num_attention_heads)
    block = d * d + 2 * d * kv + d * d + 3 * d * f + 2 * d
    tied = c.tie_word_embeddings
    return v * d + c.num_hidden_layers * block + d + (0 if tied else v * d), (
        c.num_hidden_layers * block
    )


@pytest.mark.slow
def test_real_smollm2_blocks_final_norm_and_size(smollm2_shared):
    model, tok = smollm2_shared
    found = find_blocks(model)
    assert [p for p, _ in found] == [f"model.layers.{i}" for i in range(30)]
    path, module = find_final_norm(model, found)
    assert path == "model.norm"
    ids = tok("The quick brown fox jumps over the lazy dog.", return_tensors="pt").input_ids
    head_in, out = _head_input_and_output(model, model.lm_head, module, ids)
    assert torch.equal(head_in, out)
    total, in_blocks = count_parameters(model, found)
    assert (total, in_blocks) == _llama_hand_count(model.config)
    assert total == 134_515_008  # SmolLM2-135M, embeddings tied


@pytest.mark.slow
def test_real_minilm_blocks_and_no_final_norm(minilm_shared):
    model, _ = minilm_shared
    found = find_blocks(model)
    assert [p for p, _ in found] == [f"encoder.layer.{i}" for i in range(6)]
    assert find_final_norm(model, found) is None
    c = model.config
    d, f = c.hidden_size, c.intermediate_size
    block = 4 * (d * d + d) + 2 * d + (d * f + f) + (f * d + d) + 2 * d
    emb = (c.vocab_size + c.max_position_embeddings + c.type_vocab_size) * d + 2 * d
    pooler = d * d + d
    assert count_parameters(model, found) == (emb + 6 * block + pooler, 6 * block)


def test_torch_compile_prefix_is_removed_from_names():
    from hopaudit.model.blocks import find_stacks

    model, _ = tiny_model("gpt2")
    compiled = torch.compile(model)  # wrapping only: nothing is compiled until it runs
    assert any(n.startswith("_orig_mod.") for n, _ in compiled.named_modules())
    stacks = find_stacks(compiled)
    assert [p for p, _ in stacks[0].blocks] == [
        "transformer.h.0",
        "transformer.h.1",
        "transformer.h.2",
    ]
    assert stacks[0].final[0] == "transformer.ln_f"
    assert next(p for p, _ in find_stacks(compiled, "_orig_mod.transformer.h")[0].blocks) == (
        "transformer.h.0"
    )


def test_a_post_ln_decoder_has_no_final_norm_not_its_input_side_norm():
    """The issue's BART bug: ``final`` was ``model.decoder.layernorm_embedding``, the norm on
    the decoder's input side; BART's head reads the last decoder block's output itself."""
    from tiny_models import tiny_seq2seq

    model = tiny_seq2seq("bart")
    decoder_blocks = [f"model.decoder.layers.{i}" for i in range(2)]
    assert find_final_norm(model, decoder_blocks) is None


@pytest.mark.parametrize(("arch", "role"), [("llama", "decoder"), ("bert", "encoder")])
def test_a_single_stack_is_named_for_its_role(arch, role):
    from hopaudit.model.blocks import find_stacks

    model, _ = tiny_model(arch)
    assert [s.name for s in find_stacks(model)] == [role]
