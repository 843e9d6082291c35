"""Small layers shared by the architectures."""
from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F


def repeated_input_linear(values: Tensor, weight: Tensor, bias: Tensor, repeats: int) -> Tensor:
    """`F.linear(values.repeat_interleave(repeats, 1), weight, bias)`, without building the repeated input.

    Each of the k input values meets `repeats` weight columns, so the columns can
    be summed first: k multiply-adds per output instead of k x repeats. Exact up to
    float rounding, gradients included. While exporting to ONNX the literal form is
    traced instead, so the exported graph holds the layer's own weight in a Gemm
    (where a quantised export puts its integer weights and input quantiser). The
    ONNX flag is process-wide, the tracing state is the thread's own: with the
    flag alone, a BSDM run beside an export in another thread took the literal
    form too, and a seeded run's scores moved by up to 536.
    """
    if torch.onnx.is_in_onnx_export() and torch.jit.is_tracing():
        return F.linear(values.repeat_interleave(repeats, dim=1), weight, bias)
    out_features = weight.shape[0]
    summed = weight.reshape(out_features, values.shape[1], repeats).sum(dim=2)  # (out, k)
    return torch.addmm(bias, values, summed.t())  # one fused op


def _sigmoid_tanh(x: Tensor) -> Tensor:
    """tanh(x) as 2 sigmoid(2x) - 1, with one new tensor (like torch.tanh)."""
    return x.mul(2).sigmoid_().mul_(2).sub_(1)


class _SigmoidTanhFunction(torch.autograd.Function):
    """tanh with `_sigmoid_tanh` as its forward and torch's own tanh backward, grad (1 - y^2)."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:  # type: ignore[override]
        y = _sigmoid_tanh(x)
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:  # type: ignore[override]
        (y,) = ctx.saved_tensors
        return torch.ops.aten.tanh_backward(grad, y)


class Float32Tanh(nn.Tanh):
    """nn.Tanh whose float32 forward is computed as 2 sigmoid(2x) - 1, which is faster here.

    On the 2-core AMD EPYC test machine (torch 2.13) torch.tanh takes 2.3-2.5 ms
    on a 4096 x 512 float32 tensor and this form 0.8-1.0 ms. For BSDM that makes
    the ten suppression rounds 15-25 % faster (10,000 random 205-band pixels:
    0.67-0.79 -> 0.55-0.61 s; the 1000 x 1000 x 200 bench cube: 68.5 -> 56.7 s)
    and float32 training 10-17 % faster (100 full-batch iterations on airport-1:
    13.4-14.5 -> 11.3-12.4 s; float32 is what CPUs without native bfloat16 train
    in; the whole 500-iteration airport-1 run in float32: 69.2 -> 65.2 s).
    It differs from torch.tanh by at most 1.8e-7 (absolute; float32's spacing
    at 1 is 1.2e-7): airport-1's RX scores after suppression correlate
    0.9999996 with those through torch.tanh, AUC(D,F) 4e-6 apart. bfloat16
    (where this form would lose the precision of small values, and is not
    faster) and tracing for export (the graph keeps one Tanh node) use torch.tanh.
    """

    def forward(self, x: Tensor) -> Tensor:
        if x.dtype != torch.float32 or torch.jit.is_tracing():
            return torch.tanh(x)
        if torch.is_grad_enabled() and x.requires_grad:
            return _SigmoidTanhFunction.apply(x)
        return _sigmoid_tanh(x)


class RepeatedInputLinear(nn.Linear):
    """Linear(values x repeats -> out) applied to k values each repeated `repeats` times; takes the (N, k) values.

    A plain `nn.Linear` to everything that walks layers (its weight has the full
    `in_features = values x repeats` columns, so BOPs count the layer as the
    architecture defines it, and quantisation quantises that weight); only the
    arithmetic is cheaper (`repeated_input_linear`).
    """

    def __init__(self, values: int, repeats: int, out_features: int) -> None:
        super().__init__(values * repeats, out_features)
        self.repeats = repeats

    def forward(self, values: Tensor) -> Tensor:
        return repeated_input_linear(values, self.weight, self.bias, self.repeats)

    def repeated(self, values: Tensor) -> Tensor:
        """The (N, in_features) input the weight multiplies: what an exported graph feeds this layer."""
        return values.repeat_interleave(self.repeats, dim=1)
