"""Bit operations (BOPs) per layer and in total (METHODS.md section 3).

HAWQ-V3 definition, the default: per conv or linear layer
BOPs = MACs * weight bits * activation bits, with
MACs = output positions * C_out * (C_in / groups) * kernel volume (linear: in * out per token),
and full-precision layers counted as 32 x 32.

Two compatibility modes reproduce the papers' own counters, so their figures
can be compared like for like; neither is the default:

- `pic_pq`: PIC-PQ's counter ignores groups (MACs use C_in, not C_in / groups);
- `ghost`: GHOST's counter takes a layer's activation bits to be the weight
  bits of the layer that ran before it (the first layer keeps its own).

MACs are counted for the example input given (batch size included): pass a
batch of one image (or one pixel token for the spectral models) for per-sample figures.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Sequence

from .errors import RSLabError

MODES = ("hawq", "pic_pq", "ghost")
FULL_PRECISION = 32
MIN_BITS, MAX_BITS = 2, 8  # the bits a quantised layer may have (core/quantization.py); torch-free, for the UI
BYTES_PER_MB = 1e6


@dataclass
class LayerCost:
    name: str
    kind: str
    in_channels: int
    out_channels: int
    macs: int
    weight_bits: int
    activation_bits: int
    bops: int
    params: int


@dataclass
class BopsReport:
    mode: str
    layers: List[LayerCost] = field(default_factory=list)
    total_macs: int = 0
    total_bops: int = 0
    params: int = 0
    size_mb: float = 0.0

    @property
    def gbops(self) -> float:
        return self.total_bops / 1e9

    def to_dict(self) -> Dict[str, Any]:
        return {"mode": self.mode, "total_bops": self.total_bops, "total_macs": self.total_macs,
                "gbops": round(self.gbops, 4), "params": self.params, "size_mb": round(self.size_mb, 4),
                "layers": [asdict(layer) for layer in self.layers]}


def _kernel_volume(module) -> int:
    volume = 1
    for k in module.kernel_size:
        volume *= int(k)
    return volume


def count_bops(model: Any, example_inputs: Sequence[Any], mode: str = "hawq") -> BopsReport:
    """Run `model(*example_inputs)` once and count MACs and BOPs of every conv and linear layer."""
    import torch
    from torch import nn

    from .quantization import quantisable_layers

    if mode not in MODES:
        raise RSLabError(f"unknown BOPs counting mode {mode!r}; choose one of {', '.join(MODES)}")
    layers = quantisable_layers(model)
    if not layers:
        raise RSLabError("the model has no conv or linear layers to count")
    seen: Dict[str, List[int]] = {}
    order: List[str] = []
    hooks = []
    for name, module in layers:
        def hook(mod, inputs, output, name=name):
            if name not in seen:
                order.append(name)
                seen[name] = [0]
            seen[name][0] += _macs(mod, output, mode)
        hooks.append(module.register_forward_hook(hook))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(*example_inputs)
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)

    report = BopsReport(mode=mode)
    by_name = dict(layers)
    previous_w_bits = None
    for name in order:
        module = by_name[name]
        w_bits = int(getattr(module, "w_bits", FULL_PRECISION))
        a_bits = int(getattr(module, "a_bits", FULL_PRECISION))
        if mode == "ghost" and previous_w_bits is not None:
            a_bits = previous_w_bits
        previous_w_bits = w_bits
        macs = seen[name][0]
        is_linear = isinstance(module, nn.Linear)
        report.layers.append(LayerCost(
            name=name, kind=type(module).__name__.replace("Quant", ""),
            in_channels=int(module.in_features if is_linear else module.in_channels),
            out_channels=int(module.out_features if is_linear else module.out_channels),
            macs=macs, weight_bits=w_bits, activation_bits=a_bits, bops=macs * w_bits * a_bits,
            params=sum(p.numel() for p in module.parameters(recurse=False)),
        ))
    report.total_macs = sum(layer.macs for layer in report.layers)
    report.total_bops = sum(layer.bops for layer in report.layers)
    report.params = sum(p.numel() for p in model.parameters())
    report.size_mb = model_size_bits(model) / 8 / BYTES_PER_MB
    return report


def _macs(module, output, mode: str) -> int:
    from torch import nn

    if isinstance(module, nn.Linear):
        tokens = output.numel() // module.out_features
        return tokens * module.in_features * module.out_features
    groups = 1 if mode == "pic_pq" else module.groups
    positions = output.numel() // module.out_channels  # batch x output positions
    return positions * module.out_channels * (module.in_channels // groups) * _kernel_volume(module)


def model_size_bits(model: Any) -> int:
    """Storage of all parameters and buffers: conv/linear weights at their bits, everything else at 32."""
    from .quantization import quantisable_layers

    weight_ids = {}
    for _, module in quantisable_layers(model):
        weight_ids[id(module.weight)] = int(getattr(module, "w_bits", FULL_PRECISION))
    total = 0
    for p in model.parameters():
        total += p.numel() * weight_ids.get(id(p), FULL_PRECISION)
    for name, b in model.named_buffers():
        if name.endswith(("a_alpha", "a_signed", "num_batches_tracked")):
            continue  # bookkeeping, not model storage
        total += b.numel() * FULL_PRECISION
    return total


def bops_ratio(before: BopsReport, after: BopsReport) -> float:
    """How many times fewer BOPs `after` needs than `before`."""
    return before.total_bops / after.total_bops if after.total_bops else float("inf")
