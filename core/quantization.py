"""DoReFa quantisation with per-layer bit widths (METHODS.md sections 4 and 5).

Every conv (1-D, 2-D, 3-D) and linear layer of a model can be given its own
weight and activation bit width, from 2 to 8 bits, or 32 for full precision.
A quantised layer stays the same module (its class is swapped for a
quantising subclass, so its parameter names and shapes do not change) and
gains two buffers: the activation range `a_alpha` and whether its input is
signed (`a_signed`). The plan of bit widths lives in the model card
(`ModelCard.bit_widths`, {layer name: {"weight": b, "activation": b}}), the
ranges in the state dict, so a quantised checkpoint rebuilds exactly.

Quantisers (straight-through rounding: the gradient of round() is taken as 1):

- weights: w = tanh(W) / max|tanh(W)|, q = round(w (2^(b-1) - 1)) / (2^(b-1) - 1),
  i.e. b - 1 bits plus a sign, as METHODS.md gives it;
- activations: round(clamp(x / alpha, 0, 1) (2^b - 1)) / (2^b - 1) * alpha,
  or for signed inputs round(clamp(x / alpha, -1, 1) (2^(b-1) - 1)) / (2^(b-1) - 1) * alpha.

Departures from plain DoReFa, and why:

- The quantised weight is rescaled by max|W| (a per-tensor scale). DoReFa's
  weights live in [-1, 1], which only works where a batch norm follows and the
  net is retrained; our task models end in convs and linears without one.
  The integer levels are unchanged, so the bit count and BOPs are too.
- The activation range alpha is calibrated from data (`calibrate_activations`:
  the largest input magnitude seen) instead of DoReFa's fixed 1. With
  alpha = 1 the quantiser is exactly DoReFa's. Inputs that go negative (an
  image normalised to zero mean, a layer after batch norm without ReLU, SiLU)
  get a signed range, which is also GHOST's fix of its public code's slip.
"""
from __future__ import annotations

from typing import Dict, Iterable, List, Mapping, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..models.layers import RepeatedInputLinear, repeated_input_linear
from .bops import FULL_PRECISION, MAX_BITS, MIN_BITS
from .errors import RSLabError

PERCENTILE = 0.9999
SAMPLE = 250_000  # inputs looked at per layer and batch for the percentile
LayerBits = Dict[str, int]  # {"weight": b, "activation": b}
BitPlan = Dict[str, LayerBits]


def check_bits(bits: int, what: str = "bit width") -> int:
    """`bits` if it is 2..8 or 32, else RSLabError."""
    bits = int(bits)
    if bits != FULL_PRECISION and not MIN_BITS <= bits <= MAX_BITS:
        raise RSLabError(f"the {what} must be {MIN_BITS} to {MAX_BITS} bits, or {FULL_PRECISION} (full precision); got {bits}")
    return bits


def round_ste(x: Tensor) -> Tensor:
    """round(x) forward, identity gradient backward (straight-through estimator)."""
    return x + (torch.round(x) - x).detach()


def weight_levels(bits: int) -> int:
    """Largest integer level of a signed b-bit weight: 2^(b-1) - 1."""
    return 2 ** (bits - 1) - 1


def activation_levels(bits: int, signed: bool) -> int:
    """Largest integer level of a b-bit activation: 2^b - 1, or 2^(b-1) - 1 when signed."""
    return 2 ** (bits - 1) - 1 if signed else 2 ** bits - 1


def weight_integers(weight: Tensor, bits: int) -> Tuple[Tensor, Tensor]:
    """(integer levels in [-(2^(b-1)-1), 2^(b-1)-1], scale) with weight_q = levels * scale.

    The export writes the levels as int8 initialisers and the scale into DequantizeLinear.
    """
    levels = weight_levels(bits)
    t = torch.tanh(weight)
    peak = t.abs().max().clamp_min(1e-12)
    n = torch.round(t / peak * levels)
    scale = weight.abs().max().clamp_min(1e-12) / levels
    return n, scale


def quantize_weight(weight: Tensor, bits: int) -> Tensor:
    """DoReFa weight quantiser (b - 1 bits plus sign), rescaled by max|W|; identity at 32 bits."""
    if bits >= FULL_PRECISION:
        return weight
    levels = weight_levels(bits)
    t = torch.tanh(weight)
    w = t / t.abs().max().clamp_min(1e-12)
    scale = weight.abs().max().detach().clamp_min(1e-12) / levels
    return round_ste(w * levels) * scale  # levels x scale, as weight_integers and packed checkpoints store it


def quantize_activation(x: Tensor, bits: int, alpha: Tensor, signed: bool) -> Tensor:
    """DoReFa activation quantiser on [0, alpha] (or [-alpha, alpha] when signed); identity at 32 bits."""
    if bits >= FULL_PRECISION:
        return x
    levels = activation_levels(bits, signed)
    low = -1.0 if signed else 0.0
    y = torch.clamp(x / alpha, low, 1.0)
    return round_ste(y * levels) / levels * alpha


class QuantMixin:
    """Shared state and quantisers of the quantising layer classes."""

    w_bits: int = FULL_PRECISION
    a_bits: int = FULL_PRECISION

    def init_quant(self, w_bits: int, a_bits: int) -> None:
        self.w_bits = check_bits(w_bits, "weight bit width")
        self.a_bits = check_bits(a_bits, "activation bit width")
        if not hasattr(self, "a_alpha"):
            self.register_buffer("a_alpha", torch.ones((), device=self.weight.device))
            self.register_buffer("a_signed", torch.zeros((), dtype=torch.bool, device=self.weight.device))

    def quant_weight(self) -> Tensor:
        if getattr(self, "w_frozen", False):  # already on the integer grid (read from a packed checkpoint)
            return self.weight
        return quantize_weight(self.weight, self.w_bits)

    def integer_weight(self) -> Tuple[Tensor, Tensor]:
        """(integer levels, scale) of this layer's quantised weight: quant_weight() == levels * scale."""
        if getattr(self, "w_frozen", False):
            levels = weight_levels(self.w_bits)
            scale = self.weight.detach().abs().max().clamp_min(1e-12) / levels
            return torch.round(self.weight.detach() / scale), scale
        return weight_integers(self.weight.detach(), self.w_bits)

    def quant_input(self, x: Tensor) -> Tensor:
        return quantize_activation(x, self.a_bits, self.a_alpha, bool(self.a_signed))


class QuantConv1d(QuantMixin, nn.Conv1d):
    def forward(self, x: Tensor) -> Tensor:
        return self._conv_forward(self.quant_input(x), self.quant_weight(), self.bias)


class QuantConv2d(QuantMixin, nn.Conv2d):
    def forward(self, x: Tensor) -> Tensor:
        return self._conv_forward(self.quant_input(x), self.quant_weight(), self.bias)


class QuantConv3d(QuantMixin, nn.Conv3d):
    def forward(self, x: Tensor) -> Tensor:
        return self._conv_forward(self.quant_input(x), self.quant_weight(), self.bias)


class QuantLinear(QuantMixin, nn.Linear):
    def forward(self, x: Tensor) -> Tensor:
        return F.linear(self.quant_input(x), self.quant_weight(), self.bias)


class QuantRepeatedInputLinear(QuantMixin, RepeatedInputLinear):
    """Quantising the k values equals quantising their repeats (the quantiser is element-wise), and the
    quantised weight's columns are summed as in the float layer: the same output as a QuantLinear on the
    repeated input."""

    def forward(self, values: Tensor) -> Tensor:
        return repeated_input_linear(self.quant_input(values), self.quant_weight(), self.bias, self.repeats)


QUANT_CLASSES = {nn.Conv1d: QuantConv1d, nn.Conv2d: QuantConv2d, nn.Conv3d: QuantConv3d, nn.Linear: QuantLinear,
                 RepeatedInputLinear: QuantRepeatedInputLinear}
FLOAT_CLASSES = {v: k for k, v in QUANT_CLASSES.items()}
QUANTISABLE = tuple(QUANT_CLASSES) + tuple(FLOAT_CLASSES)


def quantisable_layers(model: nn.Module) -> List[Tuple[str, nn.Module]]:
    """(name, module) of every conv and linear layer, in definition order."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, QUANTISABLE)]


def apply_bit_plan(model: nn.Module, plan: Mapping[str, Mapping[str, int]]) -> nn.Module:
    """Give the layers named in `plan` their weight/activation bits (in place); others stay as they are."""
    layers = dict(quantisable_layers(model))
    unknown = sorted(set(plan) - set(layers))
    if unknown:
        raise RSLabError(f"the bit plan names layers this model does not have: {', '.join(unknown[:5])}")
    for name, bits in plan.items():
        module = layers[name]
        base = FLOAT_CLASSES.get(type(module), type(module))
        w_bits = check_bits(bits.get("weight", FULL_PRECISION), "weight bit width")
        a_bits = check_bits(bits.get("activation", FULL_PRECISION), "activation bit width")
        if w_bits == a_bits == FULL_PRECISION:  # full precision: a plain layer again, without range buffers
            module.__class__ = base
            for buffer in ("a_alpha", "a_signed"):
                module._buffers.pop(buffer, None)
            module.__dict__.pop("w_bits", None)
            module.__dict__.pop("a_bits", None)
            module.__dict__.pop("w_frozen", None)
            continue
        module.__class__ = QUANT_CLASSES[base]
        module.init_quant(w_bits, a_bits)
    return model


def compressed_state(model: nn.Module, pack: bool = True) -> Tuple[BitPlan, Dict[str, Tensor]]:
    """(bit plan for the model card, state dict) of a compressed model, in the form `build_model` reloads.

    Full-precision layers are turned back into plain layers first, so the state dict
    holds range buffers exactly for the layers the plan quantises. With `pack`, the
    weights of quantised layers are stored as what inference uses: int8 integer
    levels `<layer>.weight_levels` and a scale `<layer>.weight_scale` (1 byte per
    weight instead of 4), which is what makes a compressed checkpoint small.
    """
    plan = bit_plan(model)
    apply_bit_plan(model, plan)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    if pack:
        for name, module in quantisable_layers(model):
            if isinstance(module, QuantMixin) and module.w_bits < FULL_PRECISION:
                levels, scale = module.integer_weight()
                del state[f"{name}.weight"]
                state[f"{name}.weight_levels"] = levels.to(torch.int8).cpu()
                state[f"{name}.weight_scale"] = scale.reshape(()).float().cpu()
    return plan, state


def unpack_state(model: nn.Module, state: Mapping[str, Tensor]) -> Dict[str, Tensor]:
    """The loadable state dict of a packed checkpoint; marks its quantised layers' weights as frozen on the grid.

    Call after `apply_bit_plan`. A state dict without packed weights comes back unchanged.
    """
    out = dict(state)
    layers = dict(quantisable_layers(model))
    for key in [k for k in state if k.endswith(".weight_levels")]:
        name = key[: -len(".weight_levels")]
        if name not in layers or not isinstance(layers[name], QuantMixin):
            raise RSLabError(f"packed weights for {name}, which the bit plan does not quantise")
        out[f"{name}.weight"] = state[key].float() * state[f"{name}.weight_scale"].float()
        del out[key], out[f"{name}.weight_scale"]
        layers[name].w_frozen = True
    return out


def bit_plan(model: nn.Module) -> BitPlan:
    """The bits of every conv and linear layer ({name: {"weight", "activation"}}; 32 where not quantised)."""
    return {name: {"weight": int(getattr(m, "w_bits", FULL_PRECISION)),
                   "activation": int(getattr(m, "a_bits", FULL_PRECISION))}
            for name, m in quantisable_layers(model)}


def is_quantised(model: nn.Module) -> bool:
    return any(isinstance(m, QuantMixin) and (m.w_bits < FULL_PRECISION or m.a_bits < FULL_PRECISION)
               for _, m in quantisable_layers(model))


@torch.no_grad()
def calibrate_activations(model: nn.Module, batches: Iterable[Tuple[Tensor, ...]],
                          forward: Optional[callable] = None) -> Dict[str, Tuple[float, bool]]:
    """Set each quantised layer's activation range from data, signed if any input is negative.

    alpha is the 99.99th percentile of |input| (the largest over the batches): the
    maximum itself is set by a few outliers and wastes most levels at 4 bits or less.

    `batches` yields tuples of model inputs; `forward(model, batch)` runs one (default: model(*batch)).
    Returns {layer: (alpha, signed)}.
    """
    layers = [(n, m) for n, m in quantisable_layers(model) if isinstance(m, QuantMixin)]
    peak = {n: 0.0 for n, _ in layers}
    low = {n: 0.0 for n, _ in layers}
    saved = {}
    hooks = []
    for name, module in layers:
        saved[name] = module.a_bits
        module.a_bits = FULL_PRECISION  # observe the float inputs

        def hook(mod, inputs, name=name):
            x = inputs[0].detach().reshape(-1)
            if x.numel() > SAMPLE:  # a fixed stride keeps calibration deterministic
                x = x[:: x.numel() // SAMPLE]
            k = max(1, int(round(PERCENTILE * x.numel())))
            peak[name] = max(peak[name], float(x.abs().float().kthvalue(k).values))
            low[name] = min(low[name], float(x.min()))

        hooks.append(module.register_forward_pre_hook(hook))
    was_training = model.training
    model.eval()
    try:
        for batch in batches:
            forward(model, batch) if forward is not None else model(*batch)
    finally:
        for h in hooks:
            h.remove()
        for name, module in layers:
            module.a_bits = saved[name]
        model.train(was_training)
    ranges = {}
    for name, module in layers:
        alpha = peak[name] if peak[name] > 0 else 1.0
        module.a_alpha.fill_(alpha)
        module.a_signed.fill_(low[name] < 0)
        ranges[name] = (alpha, low[name] < 0)
    return ranges
