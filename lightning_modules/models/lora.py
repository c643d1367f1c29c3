"""Low-rank adapters (LoRA, Hu et al., 2022) on the linear layers of chosen parameter groups, through peft.

A backend with ``lora_rank > 0`` adds adapters to the ``nn.Linear`` layers whose weights belong to its chosen
parameter groups; its parameter groups then hold only the adapter weights of each group, so unlearning and attribution
select what to train by the same names. Saving merges the adapters into the weights for the duration of the save, so
the folder written is the family's native format with no trace of peft, loadable by the rest of the ecosystem.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from peft import LoraConfig, inject_adapter_in_model
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn

LORA_MARK = "lora_"


def add_lora(
    module: nn.Module,
    groups: dict[str, list[nn.Parameter]],
    names: Sequence[str],
    rank: int,
    alpha: float | None = None,
    dropout: float = 0.0,
) -> list[str]:
    """Add adapters to every ``nn.Linear`` of `module` whose weight is in one of the named `groups`.

    Args:
        module: the network to adapt in place (a UNet, a DiT, a decoder).
        groups: its parameter groups before adaptation, as the backend's ``parameter_groups`` gives them.
        names: the groups whose linear layers get adapters.
        rank: the adapters' rank.
        alpha: the adapters' scale numerator (the update is ``alpha / rank * B A``); default `rank`.
        dropout: dropout on the adapters' input.

    Returns:
        The names (in `module`) of the adapted layers.

    Raises:
        ValueError: an unknown group name, a rank below 1, or groups without a linear layer.
    """
    if rank < 1:
        raise ValueError(f"lora_rank={rank}: give a rank of at least 1 (or 0 to train the weights themselves).")
    unknown = [name for name in names if name not in groups]
    if unknown:
        raise ValueError(f"Unknown lora_groups {unknown}; known: {sorted(groups)}.")
    wanted = {id(param) for name in names for param in groups[name]}
    targets = [name for name, layer in module.named_modules()
               if isinstance(layer, nn.Linear) and id(layer.weight) in wanted]
    if not targets:
        raise ValueError(f"lora_groups {list(names)} hold no linear layer to adapt; choose groups with attention or "
                         "feed-forward projections.")
    config = LoraConfig(r=rank, lora_alpha=rank if alpha is None else alpha, lora_dropout=dropout,
                        target_modules=targets)
    inject_adapter_in_model(config, module)
    return targets


def adapter_groups(groups: dict[str, list[tuple[str, nn.Parameter]]]) -> dict[str, list[nn.Parameter]]:
    """Keep only the adapter weights of each group of ``(name, parameter)`` pairs (names as `named_parameters`
    gives them after `add_lora`)."""
    return {group: [param for name, param in named if LORA_MARK in name] for group, named in groups.items()}


def has_lora(module: nn.Module) -> bool:
    return any(isinstance(layer, BaseTunerLayer) for layer in module.modules())


@contextmanager
def merged_lora(module: nn.Module) -> Iterator[nn.Module]:
    """Within the block, `module` holds plain linear layers whose weights are the adapted ones (base + ``B A``), so
    its state dict is the native one; afterwards the adapted layers are back, untouched (nothing is merged in place,
    so training resumes on bit-identical weights)."""
    adapted = [(name, layer) for name, layer in module.named_modules() if isinstance(layer, BaseTunerLayer)]
    for name, layer in adapted:
        _replace(module, name, _merged_copy(layer))
    try:
        yield module
    finally:
        for name, layer in adapted:
            _replace(module, name, layer)


def _merged_copy(layer: BaseTunerLayer) -> nn.Linear:
    base = layer.get_base_layer()
    if not isinstance(base, nn.Linear):
        raise TypeError(f"Only adapters on nn.Linear layers can be merged, got {type(base).__name__}.")
    weight = base.weight.detach().clone()
    for adapter in layer.active_adapters:
        weight += layer.get_delta_weight(adapter).to(weight.dtype)
    merged = nn.Linear(base.in_features, base.out_features, bias=base.bias is not None, device="meta")
    merged.weight = nn.Parameter(weight, requires_grad=False)
    if base.bias is not None:
        merged.bias = base.bias
    return merged


def _replace(root: nn.Module, name: str, layer: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(root.get_submodule(parent_name) if parent_name else root, child, layer)
