"""The model as every exporter sees it: a CPU eval copy, outputs flattened to a tuple of tensors, named inputs
and outputs.

Models whose forward returns tuples or lists are exported as a flat tuple of
their tensor leaves, in order, with names: the model's `export_output_names`
attribute if it has one, else OUTPUT_NAMES, else "output" / "output_<i>".
Input names default to the parameter names of the model's forward.
"""
from __future__ import annotations

import copy
import inspect
import warnings
from typing import Any, List, Optional, Sequence, Tuple

from .bops import FULL_PRECISION
from .errors import RSLabError

# Output names of models that return several maps, by class name (a model can
# instead carry an `export_output_names` attribute).
OUTPUT_NAMES = {"ArcdNet": ("change_logit", "uncertainty_logit")}


def flatten_outputs(outputs: Any) -> List[Any]:
    """The tensor leaves of a model output (tensor, or nested tuples/lists of them), in order."""
    import torch

    if isinstance(outputs, torch.Tensor):
        return [outputs]
    if isinstance(outputs, (tuple, list)):
        return [leaf for item in outputs for leaf in flatten_outputs(item)]
    if isinstance(outputs, dict):
        return [leaf for key in outputs for leaf in flatten_outputs(outputs[key])]
    return []  # None, numbers: not exported


_TORCH_QUIET = False
# Deprecation notices of the exporters this module uses on purpose (the TorchScript-based ONNX exporter, as
# dynamo=False asks: the dynamo exporter takes no fake-quant graph; torch.jit.trace/save for the TorchScript
# file): in QGIS each one reached the Log Messages panel with its traceback, about five per export.
_TORCH_DEPRECATIONS = (
    r"You are using the legacy TorchScript-based ONNX export",
    r"The feature will be removed",
    r"`torch\.jit\.",
)


def quiet_torch() -> None:
    """Filter torch's tracer warnings (Python-level tests on shapes and flags) and the exporters' deprecation
    notices once for the process: a warnings.catch_warnings() block in an export thread swapped the
    process-wide filter list under other threads (it could leave every warning ignored)."""
    global _TORCH_QUIET
    if not _TORCH_QUIET:
        import torch

        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        for message in _TORCH_DEPRECATIONS:
            warnings.filterwarnings("ignore", message=message, category=DeprecationWarning)
        _TORCH_QUIET = True


def flat_module(model: Any) -> Any:
    """An nn.Module running `model` and returning the flat tuple of its tensor outputs."""
    from torch import nn

    class FlatOutputs(nn.Module):
        def __init__(self, inner: nn.Module) -> None:
            super().__init__()
            self.model = inner

        def forward(self, *inputs):
            return tuple(flatten_outputs(self.model(*inputs)))

    return FlatOutputs(model)


def default_input_names(model: Any, count: int) -> List[str]:
    """The parameter names of `model.forward`, or input / input_<i>."""
    try:
        params = [p.name for p in inspect.signature(model.forward).parameters.values()
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    except (TypeError, ValueError):
        params = []
    if len(params) >= count:
        return params[:count]
    return ["input"] if count == 1 else [f"input_{i}" for i in range(count)]


def default_output_names(model: Any, count: int) -> List[str]:
    """`model.export_output_names`, or the names in OUTPUT_NAMES, or output / output_<i>."""
    names = getattr(model, "export_output_names", None) or OUTPUT_NAMES.get(type(model).__name__)
    if names and len(names) == count:
        return list(names)
    return ["output"] if count == 1 else [f"output_{i}" for i in range(count)]


def check_names(given: Optional[Sequence[str]], default: List[str], what: str) -> List[str]:
    """`given` names (the default when None), checked: one per tensor, none twice."""
    if given is None:
        return default
    given = list(given)
    if len(given) != len(default):
        raise RSLabError(f"{len(given)} {what} names given for {len(default)} {what}s")
    if len(set(given)) != len(given):
        raise RSLabError(f"the {what} names are not unique: {given}")
    return given


def eval_cpu_copy(model: Any) -> Any:
    """A deep copy of `model` on the CPU in eval mode (the caller's model is left as it was)."""
    return copy.deepcopy(model).cpu().eval()


def quantised_layers(model: Any) -> List[Tuple[str, Any]]:
    """(name, layer) of the layers that quantise their weight or their input below 32 bits."""
    from .quantization import QuantMixin, quantisable_layers

    return [(n, m) for n, m in quantisable_layers(model)
            if isinstance(m, QuantMixin) and (m.w_bits < FULL_PRECISION or m.a_bits < FULL_PRECISION)]
