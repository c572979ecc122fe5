"""What the capture hooks and how: the blocks' modules by layer name, and forward hooks on them
for the length of a ``with`` block (baukit's ``TraceDict``), always removed."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from hopaudit.errors import ModelError
from hopaudit.model.blocks import ENCODER_FINAL, Stack

__all__ = ["FINAL", "TraceBlocks", "block_output_tensor", "hooked_modules"]

#: The layer name of a stack's final norm (an encoder-decoder's encoder: ``ENCODER_FINAL``).
FINAL = "final"


def block_output_tensor(output: Any, name: str = "?") -> torch.Tensor:
    """The hidden-state tensor of a block's output: the tensor itself, or the first element of a
    tuple, list, dict or ``ModelOutput``."""
    seen = output
    for _ in range(4):
        if isinstance(output, torch.Tensor):
            return output
        if isinstance(output, dict):  # ModelOutput is an OrderedDict
            output = next(iter(output.values()), None)
        elif isinstance(output, (tuple, list)) and output:
            output = output[0]
        else:
            break
    raise ModelError(
        f"module {name!r} returned {type(seen).__name__}, not a tensor or a tuple starting with "
        "one; it is not a transformer block: pass blocks='path.to.layers'"
    )


class TraceBlocks:
    """Forward hooks on named modules for the duration of a ``with`` block (baukit TraceDict
    style): ``callback(name, output_tensor)`` runs after each module's forward.

    Every hook is removed in ``finally``, also when the body or the forward raises
    (``KeyboardInterrupt`` included); exceptions are never swallowed.
    """

    def __init__(self, modules: dict[str, nn.Module], callback: Callable[[str, torch.Tensor], Any]):
        self.modules = dict(modules)
        self.callback = callback
        self.handles: list[torch.utils.hooks.RemovableHandle] = []

    def _hook(self, name: str) -> Callable[..., None]:
        def hook(module: nn.Module, inputs: Any, output: Any) -> None:
            self.callback(name, block_output_tensor(output, name))

        return hook

    def __enter__(self) -> TraceBlocks:
        try:
            for name, module in self.modules.items():
                self.handles.append(module.register_forward_hook(self._hook(name)))
        except BaseException:
            self.remove()
            raise
        return self

    def remove(self) -> None:
        """Remove every hook this tracer registered (idempotent)."""
        handles, self.handles = self.handles, []
        for h in handles:
            h.remove()

    def __exit__(self, *exc: Any) -> bool:
        self.remove()
        return False


def hooked_modules(
    model: nn.Module, blocks: Sequence[Any], final: tuple[str, nn.Module] | None
) -> tuple[dict[str, nn.Module], dict[str, str]]:
    """(layer name -> module, layer name -> stack) for (path, module) pairs plus ``final``, or
    for a list of :class:`~hopaudit.blocks.Stack` (then ``final`` must be None)."""
    if blocks and all(isinstance(b, Stack) for b in blocks):
        if final is not None:
            raise ModelError("pass final=None with stacks: each Stack carries its own final")
        modules: dict[str, nn.Module] = {}
        stack_of: dict[str, str] = {}
        for st in blocks:
            if st.final is not None and st.final_name not in (FINAL, ENCODER_FINAL):
                raise ModelError(f"a stack's final layer is 'final' or 'encoder.final', got "
                                 f"{st.final_name!r}")  # fmt: skip
            part = _check_blocks(st.blocks, None)
            if st.final is not None:
                part[st.final_name] = st.final[1]
            clash = set(part) & set(modules)
            if clash:
                raise ModelError(f"layers {sorted(clash)} appear in two stacks")
            modules.update(part)
            stack_of.update(dict.fromkeys(part, st.name))
        return modules, stack_of
    from hopaudit.model.blocks import stack_role

    modules = _check_blocks(blocks, final)
    role = stack_role(model, final)
    return modules, dict.fromkeys(modules, role)


def _check_blocks(
    blocks: Sequence[tuple[str, nn.Module]], final: tuple[str, nn.Module] | None
) -> dict[str, nn.Module]:
    modules: dict[str, nn.Module] = {}
    for item in blocks:
        if not (isinstance(item, (tuple, list)) and len(item) == 2):
            raise ModelError(
                f"blocks must be a list of (path, module) pairs (from find_blocks), got {item!r}"
            )
        name, module = str(item[0]), item[1]
        if not isinstance(module, nn.Module):
            raise ModelError(f"block {name!r} is a {type(module).__name__}, not a torch module")
        if name in modules or name in (FINAL, ENCODER_FINAL):
            raise ModelError(
                f"block name {name!r} is repeated or reserved ('final', 'encoder.final')"
            )
        modules[name] = module
    if not modules:
        raise ModelError("no blocks to hook: pass blocks=find_blocks(model)")
    if final is not None:
        if not (isinstance(final, (tuple, list)) and len(final) == 2) or not isinstance(
            final[1], nn.Module
        ):
            raise ModelError(f"final must be a (path, module) pair or None, got {final!r}")
        modules[FINAL] = final[1]
    return modules
