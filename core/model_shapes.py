"""Rebuild pruned models: resize a freshly built model's layers to the shapes in a state dict.

A pruned checkpoint stores the architecture's constructor arguments (as any
checkpoint does) plus weights whose channel counts are smaller. Loading builds
the full architecture and then shrinks each conv, linear and norm layer to the
stored shapes before the weights go in. This works for models whose forward
follows tensor shapes instead of hard-coding channel counts, which is what
Torch-Pruning's physical pruning needs anyway.
"""
from __future__ import annotations

from typing import Any, Mapping, Tuple

from .errors import RSLabError


def conform_to_state_dict(model: Any, state: Mapping[str, Any]) -> Any:
    """Resize (in place) every conv, linear and batch/layer norm whose stored shapes differ."""
    from torch import nn

    for name, module in model.named_modules():
        prefix = f"{name}." if name else ""
        weight = state.get(prefix + "weight")
        if weight is None:
            continue
        if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            if tuple(weight.shape) == tuple(module.weight.shape):
                continue
            out_c, in_per_group = int(weight.shape[0]), int(weight.shape[1])
            depthwise = module.groups > 1 and module.groups == module.in_channels == module.out_channels
            module.groups = out_c if depthwise else module.groups
            module.out_channels = out_c
            module.in_channels = in_per_group * module.groups
            _resize(module, prefix, state, ("weight", "bias"))
        elif isinstance(module, nn.Linear):
            if tuple(weight.shape) == tuple(module.weight.shape):
                continue
            module.out_features, module.in_features = int(weight.shape[0]), int(weight.shape[1])
            _resize(module, prefix, state, ("weight", "bias"))
        elif isinstance(module, nn.modules.batchnorm._BatchNorm):
            if tuple(weight.shape) == tuple(module.weight.shape):
                continue
            module.num_features = int(weight.shape[0])
            _resize(module, prefix, state, ("weight", "bias", "running_mean", "running_var"))
        elif isinstance(module, nn.LayerNorm):
            if tuple(weight.shape) == tuple(module.weight.shape):
                continue
            module.normalized_shape = tuple(int(s) for s in weight.shape)
            _resize(module, prefix, state, ("weight", "bias"))
    return model


def _resize(module: Any, prefix: str, state: Mapping[str, Any], names: Tuple[str, ...]) -> None:
    import torch
    from torch import nn

    for attr in names:
        current = getattr(module, attr, None)
        stored = state.get(prefix + attr)
        if current is None or stored is None:
            continue
        if tuple(stored.shape) == tuple(current.shape):
            continue
        if any(s > c for s, c in zip(stored.shape, current.shape)) or len(stored.shape) != len(current.shape):
            raise RSLabError(f"{prefix}{attr} is larger in the checkpoint than the architecture allows")
        fresh = torch.zeros(stored.shape, dtype=current.dtype, device=current.device)
        if isinstance(current, nn.Parameter):
            setattr(module, attr, nn.Parameter(fresh, requires_grad=current.requires_grad))
        else:
            setattr(module, attr, fresh)  # a registered buffer is replaced in _buffers
