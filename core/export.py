"""Export compressed RS Lab models: checkpoint, ONNX with integer weights, TorchScript, BOPs report.

Every export works on a CPU copy of the model in eval mode (the caller's model
is left as it was) and writes through `PendingOutputs`, so a failed export
leaves no file behind. An existing target is refused unless `overwrite=True`
(the UI asks first); all targets are checked before anything is written.

Outputs
-------
Models whose forward returns tuples or lists are exported as a flat tuple of
their tensor leaves, in order, with names: the model's `export_output_names`
attribute if it has one, else the names below, else "output" / "output_<i>".
AR-CDNet returns (change logit, uncertainty logit, [aux logits]); the aux
list is empty in eval mode, which is the mode every export uses, so its
exports have exactly two outputs, "change_logit" and "uncertainty_logit"
(both B x 1 x H x W logits at the input size). Input names default to the
parameter names of the model's forward ("x" for the CIFAR ResNet, "before" and
"after" for AR-CDNet). The batch axis is dynamic in the ONNX graph; the
spatial size is the one of the example inputs.

ONNX: QCDQ by hand
------------------
No exporter handles sub-8-bit fake quantisation, so the float graph is
exported by `torch.onnx.export(dynamo=False)` from a copy whose quantised
layers hold their quantised weights (levels x scale) and no activation
quantisers, with batch norm kept as BatchNormalization nodes (eval model,
`TrainingMode.PRESERVE`, no constant folding), and then rewritten with the
`onnx` package. For each quantised layer (weight or activation bits < 32):

- weights: the initialiser keeps the parameter name (e.g. "layer.0.conv1.weight")
  but becomes int8 holding the layer's integer levels (`integer_weight()`, the
  levels a packed checkpoint stores), within
  +-(2^(b-1) - 1); a DequantizeLinear(levels, scale, 0) feeds the Conv/Gemm;
- input activation: QuantizeLinear(x, alpha / L, 0) -> Clip to the b-bit
  range -> DequantizeLinear, where L = 2^b - 1 and the range is [0, L] in
  uint8 for an unsigned input, L = 2^(b-1) - 1 and [-L, L] in int8 for a
  signed one. The Clip's integer bounds are the bit width.

The bits are also in the node names ("<layer>/input_uint4/Clip",
"<layer>/weight_int6/DequantizeLinear"), in each node's doc_string, and in the
model's metadata_props: "rslab.bit_plan" (every conv/linear layer) and
"rslab.quantised_layers" (bits, signedness, scales, node names per quantised
layer). A quantised layer whose weight stays at 32 bits keeps its float
weight; one whose activation stays at 32 bits gets no QCDQ on its input.
`adaptive_avg_pool2d` to sizes that do not divide the input (AR-CDNet's
pyramid pooling) has no ONNX export in PyTorch; during the export it is
written as two MatMuls with the exact averaging matrices instead.

Agreement with PyTorch (`check_onnx`)
-------------------------------------
"The ONNX export agrees with PyTorch to within one quantisation step on
every output" is defined and measured on sample inputs as follows.

- One quantisation step of an output is the step of the integer accumulator
  of the last quantised layer feeding it: weight scale x activation scale,
  s_w * alpha / L. (For the CIFAR ResNet that is the classifier, for
  AR-CDNet the 1x1 convs of the final and uncertainty heads; only a bias
  and a bilinear resize follow them, neither widens a difference.)
- The integer codes at every quantised layer's input are compared between
  the runtimes (onnxruntime: the Clip outputs; PyTorch: round(clamp(x / alpha) L)
  in a forward hook).
- Forced comparison: onnxruntime's activation DequantizeLinear nodes are fed
  PyTorch's codes, so every stretch of the graph between two quantisers is
  checked from the same quantised inputs. The export agrees within one step
  when every output differs by at most one output step and every code by at
  most one level. Measured: outputs within 0.002 steps, codes differing in
  about 1 in 10^6 places, by one level, where a float sits on a level boundary.
- Biases of quantised Conv/Gemm layers are separate Adds after them: left
  beside the DequantizeLinear inputs, onnxruntime's default optimisation
  folds them into int32 biases of scale s_x * s_w, a coarse rounding at low
  bits that PyTorch does not make (a small 2..8-bit CNN: up to 0.12 off; 0.0
  with the Adds).
- Free running (ordinary inference) is reported too, but it is not bounded by
  one step: the two runtimes round floats differently in the last bit, a code
  on a level boundary flips by one level, and everything after the flip
  follows it (a flipped 4-bit code moves the codes of a following 8-bit layer
  by several levels). PyTorch drifts as far from itself between float32 and
  float64 (`check_onnx(..., baseline=True)`): on ResNet-20 with 4..8 bits and
  real CIFAR images, 0.4 % of the codes differ between onnxruntime and
  PyTorch and 0.2 % between PyTorch float32 and float64; the logits by up to
  0.57 and 0.34 (a few hundred output steps).
"""
from __future__ import annotations

import copy
import dataclasses
import inspect
import io
import json
import math
import os
import threading
import warnings
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from .checkpoint import ModelCard, save_checkpoint
from .errors import JobCancelled, RSLabError
from .bops import FULL_PRECISION
from .job import JobMonitor
from .outputs import PendingOutputs, check_name_length, write_bytes, write_json

FORMATS = ("checkpoint", "onnx", "torchscript", "report")
SUFFIXES = {"checkpoint": ".pt", "onnx": ".onnx", "torchscript": ".torchscript.pt", "report": ".report.json"}
MIN_OPSET = 13
REPORT_FORMAT = "rslab-compression-report"

# Output names of models that return several maps, by class name (a model can
# instead carry an `export_output_names` attribute).
OUTPUT_NAMES = {"ArcdNet": ("change_logit", "uncertainty_logit")}


# --- naming and flattening ---------------------------------------------------------------


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


_ONNX_EXPORT = threading.Lock()  # torch's ONNX exporter (dynamo=False) runs one export per process at a time
_TORCH_QUIET = False
# Deprecation notices of the exporters this module uses on purpose (the TorchScript-based ONNX exporter, as
# dynamo=False asks: the dynamo exporter takes no fake-quant graph; torch.jit.trace/save for the TorchScript
# file): in QGIS each one reached the Log Messages panel with its traceback, about five per export.
_TORCH_DEPRECATIONS = (
    r"You are using the legacy TorchScript-based ONNX export",
    r"The feature will be removed",
    r"`torch\.jit\.",
)


def _quiet_torch() -> None:
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


def _flat_module(model: Any) -> Any:
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


def _names(given: Optional[Sequence[str]], default: List[str], what: str) -> List[str]:
    if given is None:
        return default
    given = list(given)
    if len(given) != len(default):
        raise RSLabError(f"{len(given)} {what} names given for {len(default)} {what}s")
    if len(set(given)) != len(given):
        raise RSLabError(f"the {what} names are not unique: {given}")
    return given


# --- targets -------------------------------------------------------------------------------


def existing_targets(paths: Sequence[str]) -> List[str]:
    """The paths among `paths` that exist already (for the UI to ask before overwriting)."""
    return [p for p in paths if p and os.path.exists(p)]


def _check_targets(paths: Sequence[str], overwrite: bool) -> None:
    """RSLabError if a target is a folder, or exists and `overwrite` is False; checks all before any write."""
    for path in paths:
        if not path:
            raise RSLabError("no output file name given")
        check_name_length(path)
        if os.path.isdir(path):
            raise RSLabError(f"{path} is a folder; give a file name")
    existing = existing_targets(paths)
    if existing and not overwrite:
        verb = "exists" if len(existing) == 1 else "exist"
        raise RSLabError(f"{', '.join(existing)} {verb} already; choose another name or allow overwriting")


# --- the export copy -----------------------------------------------------------------------


@dataclasses.dataclass
class _LayerQuant:
    name: str
    weight_bits: int
    activation_bits: int
    signed: bool
    alpha: float
    levels: Any = None  # int tensor of weight levels (weight_bits < 32)
    weight_scale: float = float("nan")

    @property
    def activation_max(self) -> int:
        from .quantization import activation_levels

        return activation_levels(self.activation_bits, self.signed)

    @property
    def activation_scale(self) -> float:
        return float(np.float32(self.alpha) / np.float32(self.activation_max))


def _quantised_layers(model: Any) -> List[Tuple[str, Any]]:
    from .quantization import QuantMixin, quantisable_layers

    return [(n, m) for n, m in quantisable_layers(model)
            if isinstance(m, QuantMixin) and (m.w_bits < FULL_PRECISION or m.a_bits < FULL_PRECISION)]


def _eval_cpu_copy(model: Any) -> Any:
    return copy.deepcopy(model).cpu().eval()


def _float_export_copy(model: Any) -> Tuple[Any, Dict[str, _LayerQuant]]:
    """A CPU eval copy with quantised weights substituted and plain layers; plus each quantised layer's data."""
    import torch

    from .quantization import FLOAT_CLASSES

    twin = _eval_cpu_copy(model)
    layers: Dict[str, _LayerQuant] = {}
    for name, module in _quantised_layers(twin):
        info = _LayerQuant(name=name, weight_bits=int(module.w_bits), activation_bits=int(module.a_bits),
                           signed=bool(module.a_signed), alpha=float(module.a_alpha))
        if info.activation_bits < FULL_PRECISION and not (info.alpha > 0 and math.isfinite(info.alpha)):
            raise RSLabError(f"layer {name} has no valid activation range (alpha = {info.alpha}); calibrate it first")
        with torch.no_grad():
            if info.weight_bits < FULL_PRECISION:
                levels, scale = module.integer_weight()  # (frozen weights from a packed checkpoint included)
                levels, scale = levels.float(), scale.float()
                info.levels = levels.to(torch.int8)
                info.weight_scale = float(scale)
                module.weight.copy_(levels * scale)  # what DequantizeLinear computes, float32 levels x scale
        module.__class__ = FLOAT_CLASSES[type(module)]
        for buffer in ("a_alpha", "a_signed"):
            module._buffers.pop(buffer, None)
        module.__dict__.pop("w_bits", None)
        module.__dict__.pop("a_bits", None)
        layers[name] = info
    return twin, layers


# --- adaptive average pooling for the exporter -----------------------------------------------


def _averaging_matrix(size: int, out: int) -> Any:
    """(out, size) matrix of adaptive average pooling along one axis (PyTorch's start/end rule)."""
    import torch

    matrix = torch.zeros(out, size)
    for i in range(out):
        start, end = (i * size) // out, -((-(i + 1) * size) // out)
        matrix[i, start:end] = 1.0 / (end - start)
    return matrix


def _adaptive_avg_pool2d_symbolic(g, input, output_size):  # noqa: A002 (exporter's signature)
    from torch.onnx import symbolic_helper

    out = symbolic_helper._parse_arg(output_size, "is")
    if out == [1, 1]:
        return g.op("GlobalAveragePool", input)
    sizes = symbolic_helper._get_tensor_sizes(input)
    if not sizes or len(sizes) < 4 or sizes[-2] is None or sizes[-1] is None:
        return symbolic_helper._unimplemented("adaptive_avg_pool2d", "input size not known at export", input)
    height, width = int(sizes[-2]), int(sizes[-1])
    if height % out[0] == 0 and width % out[1] == 0:
        kernel = [height // out[0], width // out[1]]
        return g.op("AveragePool", input, kernel_shape_i=kernel, strides_i=kernel)
    rows = g.op("Constant", value_t=_averaging_matrix(height, out[0]))
    cols = g.op("Constant", value_t=_averaging_matrix(width, out[1]).t().contiguous())
    return g.op("MatMul", g.op("MatMul", rows, input), cols)


class _AdaptivePoolSymbolic:
    """Registers the adaptive-pool symbolic above for the duration of one export."""

    NAME = "aten::adaptive_avg_pool2d"

    def __init__(self, opset: int) -> None:
        self.opset = opset

    def __enter__(self) -> "_AdaptivePoolSymbolic":
        import torch

        torch.onnx.register_custom_op_symbolic(self.NAME, _adaptive_avg_pool2d_symbolic, self.opset)
        return self

    def __exit__(self, *exc: Any) -> None:
        import torch

        torch.onnx.unregister_custom_op_symbolic(self.NAME, self.opset)


# --- ONNX ----------------------------------------------------------------------------------


def _float_onnx(twin: Any, example_inputs: Tuple[Any, ...], input_names: List[str],
                output_names: List[str], opset: int) -> Any:
    import onnx
    import torch

    flat = _flat_module(twin).eval()
    buffer = io.BytesIO()
    # Batch axes are dynamic; a 0-dim input (BSDM's diffusion step) has none.
    batched = [name for name, x in zip(input_names, example_inputs) if getattr(x, "ndim", 0) > 0]
    axes = {name: {0: "batch"} for name in batched + output_names}
    _quiet_torch()
    # one export at a time: torch's TorchScript-based exporter keeps process-wide state (a second export
    # beside the first failed with 'GLOBALS.in_onnx_export must be False'), as does the pooling symbolic
    with _ONNX_EXPORT, _AdaptivePoolSymbolic(opset):
        try:
            torch.onnx.export(flat, tuple(example_inputs), buffer, dynamo=False, opset_version=opset,
                              training=torch.onnx.TrainingMode.PRESERVE, do_constant_folding=False,
                              input_names=input_names, output_names=output_names, dynamic_axes=axes)
        except Exception as exc:  # the exporter raises many kinds; the user needs the message
            raise RSLabError(f"the ONNX export failed: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from exc
    proto = onnx.load_from_string(buffer.getvalue())
    # The wrapper adds "model." to every parameter name; take it off again.
    state_names = set(twin.state_dict().keys())
    renames = {f"model.{k}": k for k in state_names}
    _rename_tensors(proto.graph, renames)
    return proto


def _rename_tensors(graph: Any, renames: Mapping[str, str]) -> None:
    for init in graph.initializer:
        init.name = renames.get(init.name, init.name)
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name in renames:
                node.input[i] = renames[name]
        for i, name in enumerate(node.output):
            if name in renames:
                node.output[i] = renames[name]
    for value in list(graph.input) + list(graph.output) + list(graph.value_info):
        value.name = renames.get(value.name, value.name)


def _compute_nodes(graph: Any, weight: str) -> List[Tuple[Any, int]]:
    """(node, activation input index) of every Conv/Gemm/MatMul that uses `weight`."""
    consumers: Dict[str, List[Any]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    found = []
    for node in consumers.get(weight, []):
        if node.op_type in ("Conv", "Gemm") and len(node.input) > 1 and node.input[1] == weight:
            found.append((node, 0))
        elif node.op_type == "MatMul" and node.input[1] == weight:
            found.append((node, 0))
        elif node.op_type == "Transpose":  # linear layers on N-D inputs: x @ W^T
            for user in consumers.get(node.output[0], []):
                if user.op_type == "MatMul":
                    found.append((user, 0 if user.input[1] == node.output[0] else 1))
    return found


def _unalias_initialisers(graph: Any, names: Sequence[str]) -> None:
    """Turn weights the exporter deduplicated (Identity of another initialiser) back into initialisers."""
    from onnx import numpy_helper

    wanted = set(names)
    inits = {i.name: i for i in graph.initializer}
    keep = []
    for node in graph.node:
        if node.op_type == "Identity" and node.output[0] in wanted and node.input[0] in inits:
            array = numpy_helper.to_array(inits[node.input[0]])
            graph.initializer.append(numpy_helper.from_array(array.copy(), node.output[0]))
            continue
        keep.append(node)
    if len(keep) != len(graph.node):
        del graph.node[:]
        graph.node.extend(keep)


def _bias_as_add(node: Any, inits: Mapping[str, Any], new_inits: List[Any], rank: int) -> Optional[Any]:
    """Move a quantised Conv's or Gemm's float bias into an Add after it; the Add node, or None.

    onnxruntime's default graph optimisation folds a float bias beside DequantizeLinear inputs into an
    int32 bias of scale s_x * s_w: at 4 bits that step is coarse, the rounded bias flips the next layer's
    codes, and a small CNN's output moved by about 20 output steps (0.0 with the bias in an Add, which it
    leaves alone). PyTorch adds the float bias, as the Add does.
    """
    from onnx import helper, numpy_helper

    if node.op_type not in ("Conv", "Gemm") or len(node.input) < 3 or node.input[2] not in inits:
        return None
    bias = numpy_helper.to_array(inits[node.input[2]]).astype(np.float32)
    if node.op_type == "Gemm":
        bias = bias * next((a.f for a in node.attribute if a.name == "beta"), 1.0)
    else:  # (C,) onto (N, C, spatial...)
        bias = bias.reshape((1, -1) + (1,) * (rank - 2))
    name = f"{node.name}/bias"
    new_inits.append(numpy_helper.from_array(bias, name))
    out = node.output[0]
    node.output[0] = f"{out}.before_bias"
    del node.input[2]
    return helper.make_node("Add", [node.output[0], name], [out], name=f"{node.name}/bias_add",
                            doc_string="rslab: the float bias, added after the quantised product as PyTorch does")


def _qcdq(model_proto: Any, layers: Mapping[str, _LayerQuant]) -> Dict[str, Dict[str, Any]]:
    """Rewrite the float graph in place: int8 weights + DequantizeLinear, Q -> Clip -> DQ on inputs; biases of
    quantised layers as Adds after them (_bias_as_add)."""
    from onnx import TensorProto, helper, numpy_helper

    graph = model_proto.graph
    _unalias_initialisers(graph, [f"{n}.weight" for n in layers])
    inits = {i.name: i for i in graph.initializer}
    if len({n.name for n in graph.node}) != len(graph.node):
        raise RSLabError("the exported ONNX graph has nodes without unique names; cannot place the quantisers")
    before: Dict[str, List[Any]] = {}  # compute node name -> nodes to insert right before it
    after: Dict[str, Any] = {}  # compute node name -> its bias Add
    head: List[Any] = []  # weight DequantizeLinear nodes, at the top of the graph
    new_inits: List[Any] = []
    meta: Dict[str, Dict[str, Any]] = {}
    for name, info in layers.items():
        weight = f"{name}.weight"
        uses = _compute_nodes(graph, weight)
        if weight not in inits or not uses:
            continue  # the layer is not used by this forward
        entry: Dict[str, Any] = {"weight_bits": info.weight_bits, "activation_bits": info.activation_bits,
                                 "signed": info.signed, "alpha": info.alpha, "nodes": [n.name for n, _ in uses]}
        if info.weight_bits < FULL_PRECISION:
            levels = info.levels.numpy().astype(np.int8)
            float_init = inits[weight]
            graph.initializer.remove(float_init)
            new_inits += [numpy_helper.from_array(levels, weight),
                          numpy_helper.from_array(np.array(info.weight_scale, np.float32), f"{name}.weight_scale"),
                          numpy_helper.from_array(np.array(0, np.int8), f"{name}.weight_zero_point")]
            dequantised = f"{name}.weight_dequantized"
            head.append(helper.make_node(
                "DequantizeLinear", [weight, f"{name}.weight_scale", f"{name}.weight_zero_point"], [dequantised],
                name=f"{name}/weight_int{info.weight_bits}/DequantizeLinear",
                doc_string=f"rslab: {name} weight, {info.weight_bits} bits (levels within "
                           f"+-{2 ** (info.weight_bits - 1) - 1})"))
            for node in graph.node:
                for i, inp in enumerate(node.input):
                    if inp == weight:
                        node.input[i] = dequantised
            for node, _ in uses:
                add = _bias_as_add(node, inits, new_inits, levels.ndim)
                if add is not None:
                    after[node.name] = add
            entry["weight_scale"] = info.weight_scale
        if info.activation_bits < FULL_PRECISION:
            top = info.activation_max
            kind = "int" if info.signed else "uint"
            dtype, elem = (np.int8, TensorProto.INT8) if info.signed else (np.uint8, TensorProto.UINT8)
            low = -top if info.signed else 0
            new_inits += [numpy_helper.from_array(np.array(info.activation_scale, np.float32), f"{name}.input_scale"),
                          numpy_helper.from_array(np.array(0, dtype), f"{name}.input_zero_point"),
                          numpy_helper.from_array(np.array(low, dtype), f"{name}.input_min"),
                          numpy_helper.from_array(np.array(top, dtype), f"{name}.input_max")]
            codes = []
            for k, (node, index) in enumerate(uses):
                suffix = "" if k == 0 else f".{k}"
                x = node.input[index]
                q, c, d = (f"{name}.input_quantized{suffix}", f"{name}.input_codes{suffix}",
                           f"{name}.input_dequantized{suffix}")
                tag = f"{name}/input_{kind}{info.activation_bits}{suffix}"
                doc = (f"rslab: {name} input, {info.activation_bits} bits "
                       f"{'signed' if info.signed else 'unsigned'}, codes {low}..{top}, alpha {info.alpha:.6g}")
                before.setdefault(node.name, []).extend([
                    helper.make_node("QuantizeLinear", [x, f"{name}.input_scale", f"{name}.input_zero_point"], [q],
                                     name=f"{tag}/QuantizeLinear", doc_string=doc),
                    helper.make_node("Clip", [q, f"{name}.input_min", f"{name}.input_max"], [c],
                                     name=f"{tag}/Clip", doc_string=doc),
                    helper.make_node("DequantizeLinear", [c, f"{name}.input_scale", f"{name}.input_zero_point"], [d],
                                     name=f"{tag}/DequantizeLinear", doc_string=doc),
                ])
                node.input[index] = d
                codes.append(c)
            entry.update(activation_scale=info.activation_scale, activation_range=[low, top], codes=codes)
        for node, _ in uses:
            node.doc_string = (f"rslab: layer {name}, weight {info.weight_bits} bits, "
                               f"activation {info.activation_bits} bits")
        meta[name] = entry
    nodes = list(head)
    for node in graph.node:
        nodes.extend(before.get(node.name, []))
        nodes.append(node)
        if node.name in after:
            nodes.append(after[node.name])
    del graph.node[:]
    graph.node.extend(nodes)
    used = {name for node in nodes for name in node.input}
    for init in [i for i in graph.initializer if i.name not in used]:  # biases now held by the Adds
        graph.initializer.remove(init)
    graph.initializer.extend(new_inits)
    return meta


def _onnx_proto(model: Any, example_inputs: Tuple[Any, ...], input_names: Optional[Sequence[str]],
                output_names: Optional[Sequence[str]], opset: int) -> Tuple[Any, Dict[str, Any]]:
    import onnx
    import torch

    from .quantization import bit_plan

    if opset < MIN_OPSET:
        raise RSLabError(f"the ONNX export needs opset {MIN_OPSET} or newer (integer Clip, QuantizeLinear); got {opset}")
    example_inputs = tuple(x.detach().cpu() for x in example_inputs)
    twin, layers = _float_export_copy(model)
    with torch.no_grad():
        count = len(flatten_outputs(twin(*example_inputs)))
    if count == 0:
        raise RSLabError("the model returns no tensors to export")
    inputs = _names(input_names, default_input_names(model, len(example_inputs)), "input")
    outputs = _names(output_names, default_output_names(model, count), "output")
    proto = _float_onnx(twin, example_inputs, inputs, outputs, opset)
    meta = _qcdq(proto, layers)
    proto.producer_name = "rslab"
    plan = bit_plan(model)
    for key, value in (("rslab.bit_plan", plan), ("rslab.quantised_layers", meta),
                       ("rslab.input_names", inputs), ("rslab.output_names", outputs)):
        onnx.helper.set_model_props(proto, {**{p.key: p.value for p in proto.metadata_props}, key: json.dumps(value)})
    try:
        onnx.checker.check_model(proto, full_check=True)
    except onnx.checker.ValidationError as exc:
        raise RSLabError(f"the exported ONNX graph is not valid: {str(exc).splitlines()[0]}") from exc
    info = {"inputs": inputs, "outputs": outputs, "opset": opset, "dynamic_batch": True,
            "quantised_layers": len(meta), "unused_quantised_layers": sorted(set(layers) - set(meta)),
            "batch_norm_nodes": sum(1 for n in proto.graph.node if n.op_type == "BatchNormalization")}
    return proto, info


def _write_onnx(model: Any, example_inputs: Tuple[Any, ...], target: str, input_names, output_names,
                opset: int) -> Dict[str, Any]:
    proto, info = _onnx_proto(model, example_inputs, input_names, output_names, opset)
    write_bytes(target, proto.SerializeToString(), "could not write the ONNX file")  # what onnx.save_model writes
    return info


def export_onnx(model: Any, example_inputs: Tuple[Any, ...], path: str, overwrite: bool = False,
                input_names: Optional[Sequence[str]] = None, output_names: Optional[Sequence[str]] = None,
                opset: int = 17) -> Dict[str, Any]:
    """Write `model` (quantised or not) as ONNX with QCDQ per quantised layer (see the module docstring).

    Returns {"path", "inputs", "outputs", "opset", "dynamic_batch", "quantised_layers" (count),
    "unused_quantised_layers", "batch_norm_nodes"}.
    """
    _check_targets([path], overwrite)
    with PendingOutputs() as pending:
        info = _write_onnx(model, tuple(example_inputs), pending.temp(path), input_names, output_names, opset)
    return {"path": os.path.abspath(path), **info}


def _feeding_layers(graph: Any, output: str, compute: Mapping[str, str]) -> List[str]:
    """The quantised layers nearest to `output` going backwards (not looking past them)."""
    producer = {o: n for n in graph.node for o in n.output}
    seen, stack, found = set(), [output], []
    while stack:
        name = stack.pop()
        node = producer.get(name)
        if node is None or node.name in seen:
            continue
        seen.add(node.name)
        if node.name in compute:
            found.append(compute[node.name])
            continue
        stack.extend(node.input)
    return sorted(set(found))


def _forced_proto(proto: Any, meta: Mapping[str, Mapping[str, Any]]) -> Any:
    """A copy whose activation DequantizeLinear nodes read the codes from graph inputs "<codes>.forced".

    The QuantizeLinear -> Clip branches stay, as graph outputs, so onnxruntime still
    computes its own codes from its own float values, one quantised layer at a time.
    """
    from onnx import TensorProto, helper

    forced = copy.deepcopy(proto)
    codes = {c: m["signed"] for m in meta.values() for c in m.get("codes", [])}
    for node in forced.graph.node:
        if node.op_type == "DequantizeLinear" and node.input[0] in codes:
            node.input[0] = f"{node.input[0]}.forced"
    for c, signed in codes.items():
        elem = TensorProto.INT8 if signed else TensorProto.UINT8
        forced.graph.input.append(helper.make_tensor_value_info(f"{c}.forced", elem, None))
    return forced


def _codes_recorder(reference: Any, meta: Mapping[str, Mapping[str, Any]], recorded: Dict[str, List[Any]]) -> List[Any]:
    """Forward pre-hooks storing PyTorch's integer input codes of each quantised layer, per call."""
    import torch

    from ..models.layers import RepeatedInputLinear
    from .quantization import QuantMixin, activation_levels

    modules = dict(reference.named_modules())
    hooks = []
    for layer, m in meta.items():
        module = modules.get(layer)
        if not m.get("codes"):
            continue
        if not isinstance(module, QuantMixin) or module.a_bits >= FULL_PRECISION:
            raise RSLabError(f"the ONNX file quantises the input of {layer}, which this model does not")

        def hook(mod, inputs, layer=layer):
            top = activation_levels(mod.a_bits, bool(mod.a_signed))
            low = -1.0 if bool(mod.a_signed) else 0.0
            x = mod.repeated(inputs[0]) if isinstance(mod, RepeatedInputLinear) else inputs[0]  # as in the graph
            codes = torch.round(torch.clamp(x / mod.a_alpha, low, 1.0) * top)
            recorded.setdefault(layer, []).append(codes.detach().numpy().astype(np.int32))

        hooks.append(module.register_forward_pre_hook(hook))
    return hooks


class _Tally:
    """Running comparison of outputs and codes between onnxruntime and PyTorch."""

    def __init__(self, outputs: Sequence[str], steps: Mapping[str, float]) -> None:
        self.steps = steps
        self.max_diff = {o: 0.0 for o in outputs}
        self.within = {o: 0 for o in outputs}
        self.elements = {o: 0 for o in outputs}
        self.codes = self.differing = self.beyond = self.code_max = 0

    def output(self, name: str, got: Any, ref: Any) -> None:
        if got.shape != ref.shape:
            raise RSLabError(f"output {name}: onnxruntime gives shape {got.shape}, PyTorch {ref.shape}")
        diff = np.abs(got.astype(np.float64) - ref.astype(np.float64))
        self.max_diff[name] = max(self.max_diff[name], float(diff.max()) if diff.size else 0.0)
        step = self.steps[name]
        if not math.isnan(step):
            self.within[name] += int((diff <= step).sum())
        self.elements[name] += diff.size

    def code(self, got: Any, ref: Any) -> None:
        diff = np.abs(got.astype(np.int32) - ref)
        self.codes += diff.size
        self.differing += int((diff > 0).sum())
        self.beyond += int((diff > 1).sum())
        self.code_max = max(self.code_max, int(diff.max()) if diff.size else 0)

    def result(self, prefix: str) -> Dict[str, float]:
        out: Dict[str, float] = {}
        ratios = []
        for name, diff in self.max_diff.items():
            step = self.steps[name]
            ratio = diff / step if step and not math.isnan(step) else float("nan")
            out[f"{prefix}{name}.max_abs_diff"] = diff
            out[f"{prefix}{name}.step"] = step
            out[f"{prefix}{name}.steps"] = ratio
            out[f"{prefix}{name}.fraction_within_one_step"] = (
                self.within[name] / self.elements[name] if self.elements[name] and not math.isnan(step) else float("nan"))
            if not math.isnan(ratio):
                ratios.append(ratio)
        out[f"{prefix}max_steps"] = max(ratios) if ratios else float("nan")
        out[f"{prefix}codes.count"] = float(self.codes)
        out[f"{prefix}codes.fraction_differing"] = self.differing / self.codes if self.codes else 0.0
        out[f"{prefix}codes.fraction_beyond_one_step"] = self.beyond / self.codes if self.codes else 0.0
        out[f"{prefix}codes.max_diff"] = float(self.code_max)
        return out


def _float64_twin(model: Any) -> Any:
    """A float64 CPU copy computing the same quantised model: float32 quantised weights, activation quantisers."""
    import torch

    twin = _eval_cpu_copy(model)
    with torch.no_grad():
        for _, module in _quantised_layers(twin):
            if module.w_bits < FULL_PRECISION:
                module.weight.copy_(module.quant_weight())
                module.w_bits = FULL_PRECISION
    return twin.double()


CHECK_SAMPLES = 4  # inputs the ONNX checks run on (the dialog's button and export_all's report)


def sample_inputs(example: Tuple[Any, ...], count: int = CHECK_SAMPLES, seed: int = 0) -> List[Tuple[Any, ...]]:
    """`count` input tuples shaped like `example`: float tensors drawn at random (seeded), others kept.

    For the ONNX checks: the example inputs of a task are zeros (two identical dates for a change
    detector), on which both runtimes agree whatever the export gets wrong.
    """
    import torch

    generator = torch.Generator().manual_seed(seed)
    samples = []
    for _ in range(count):
        samples.append(tuple(torch.randn(x.shape, generator=generator) if x.is_floating_point() and x.dim() >= 2
                             else x.clone() for x in example))
    return samples


def check_onnx(model: Any, example_inputs_list: Sequence[Tuple[Any, ...]], onnx_path: str,
               baseline: bool = False, cancelled: Optional[Callable[[], bool]] = None) -> Dict[str, float]:
    """Run onnxruntime and PyTorch (the model in eval mode, on CPU) on the same inputs and compare.

    One quantisation step of an output is the accumulator step of the last quantised
    layer feeding it: weight scale x activation scale, s_w * alpha / L (the largest if
    several layers feed it; nan if that layer does not quantise both weight and input).
    The integer codes at the input of every quantised layer are compared too.

    Two comparisons, each over all samples:

    - free running (keys without prefix): ordinary inference, what a user gets. The
      two runtimes round floats differently in the last bit; where a value sits on a
      level boundary its code flips by one level, and a flip changes everything after
      it (a 4-bit flip can move the codes of a following 8-bit layer by several
      levels). These figures say how far that drift goes; they are not bounded by one step.
    - forced (prefix "forced."): onnxruntime's activation DequantizeLinear nodes are fed
      PyTorch's codes, so each stretch of the graph between quantisers is checked
      against PyTorch from the same quantised inputs. The export agrees with PyTorch to
      within one quantisation step when, here, every output differs by at most one
      output step (`forced.max_steps <= 1`) and every code by at most one level
      (`forced.codes.max_diff <= 1`); `agrees_within_one_step` is 1.0 exactly then (nan for
      a model without a quantised layer: no step to agree within; `o.max_abs_diff` says it).

    Keys, for each output `o` (with and without "forced."): `o.max_abs_diff`, `o.step`,
    `o.steps` (max_abs_diff / step), `o.fraction_within_one_step` (of output elements);
    and `max_steps` (largest `o.steps`), `codes.count`, `codes.fraction_differing`,
    `codes.fraction_beyond_one_step`, `codes.max_diff` (in levels); plus `samples` and
    `agrees_within_one_step`.

    With `baseline`, the same keys with prefix "float64." compare PyTorch in float32
    with PyTorch in float64 (same quantised weights and ranges): how far the model
    drifts from its own float32 rounding, the yardstick for the free-running figures.
    """
    import onnx
    import onnxruntime as ort
    import torch
    from onnx import TensorProto

    if not example_inputs_list:
        raise RSLabError("check_onnx needs at least one input sample")
    proto = onnx.load(onnx_path)
    props = {p.key: p.value for p in proto.metadata_props}
    meta = json.loads(props.get("rslab.quantised_layers", "{}"))
    input_names = [i.name for i in proto.graph.input]
    output_names = [o.name for o in proto.graph.output]
    codes = [(c, layer, k, TensorProto.INT8 if m["signed"] else TensorProto.UINT8)
             for layer, m in meta.items() for k, c in enumerate(m.get("codes", []))]
    compute = {node: layer for layer, m in meta.items() for node in m["nodes"]}
    steps = {}
    for out in output_names:
        values = [meta[layer].get("weight_scale", float("nan")) * meta[layer].get("activation_scale", float("nan"))
                  for layer in _feeding_layers(proto.graph, out, compute)]
        steps[out] = max(values) if values and not any(math.isnan(v) for v in values) else float("nan")

    def session(graph_proto: Any) -> Any:
        for c, _, _, elem in codes:
            graph_proto.graph.output.append(onnx.helper.make_tensor_value_info(c, elem, None))
        return ort.InferenceSession(graph_proto.SerializeToString(), providers=["CPUExecutionProvider"])

    forced_proto = _forced_proto(proto, meta)
    free, forced = session(proto), session(forced_proto)
    fetch = output_names + [c for c, _, _, _ in codes]

    reference = model if next(model.parameters()).device.type == "cpu" else _eval_cpu_copy(model)
    was_training = reference.training
    reference.eval()
    recorded: Dict[str, List[Any]] = {}
    hooks = _codes_recorder(reference, meta, recorded)
    tallies = {"": _Tally(output_names, steps), "forced.": _Tally(output_names, steps)}
    recorded64: Dict[str, List[Any]] = {}
    if baseline:
        twin64 = _float64_twin(reference)
        hooks += _codes_recorder(twin64, meta, recorded64)
        tallies["float64."] = _Tally(output_names, steps)
    try:
        for inputs in example_inputs_list:
            if cancelled is not None and cancelled():  # checked per sample (a dialog closed mid-check ran on)
                raise JobCancelled()
            inputs = tuple(x.detach().cpu() for x in inputs)
            if len(inputs) != len(input_names):
                raise RSLabError(f"the ONNX model takes {len(input_names)} inputs; a sample has {len(inputs)}")
            recorded.clear()
            with torch.no_grad():
                ref = [t.numpy() for t in flatten_outputs(reference(*inputs))]
            if len(ref) != len(output_names):
                raise RSLabError(f"the model returns {len(ref)} tensors; the ONNX file has {len(output_names)} outputs")
            torch_codes = []
            for _, layer, k, _ in codes:
                calls = recorded.get(layer, [])
                if k >= len(calls):
                    raise RSLabError(f"layer {layer} ran {len(calls)} times in PyTorch but the ONNX graph uses it more often")
                torch_codes.append(calls[k])
            feeds = {name: x.numpy() for name, x in zip(input_names, inputs)}
            forced_feeds = dict(feeds)
            for (c, _, _, elem), value in zip(codes, torch_codes):
                forced_feeds[f"{c}.forced"] = value.astype(np.int8 if elem == TensorProto.INT8 else np.uint8)
            for prefix, sess, feed in (("", free, feeds), ("forced.", forced, forced_feeds)):
                got = sess.run(fetch, feed)
                for name, a, b in zip(output_names, got, ref):
                    tallies[prefix].output(name, a, b)
                for a, b in zip(got[len(output_names):], torch_codes):
                    tallies[prefix].code(a, b)
            if baseline:
                recorded64.clear()
                with torch.no_grad():
                    ref64 = [t.numpy() for t in flatten_outputs(twin64(*(x.double() for x in inputs)))]
                for name, a, b in zip(output_names, ref, ref64):
                    tallies["float64."].output(name, a, b)
                for (_, layer, k, _), a in zip(codes, torch_codes):
                    tallies["float64."].code(a, recorded64[layer][k])
    finally:
        for h in hooks:
            h.remove()
        reference.train(was_training)
    result: Dict[str, float] = {"samples": float(len(example_inputs_list))}
    for prefix, tally in tallies.items():
        result.update(tally.result(prefix))
    if math.isnan(result["forced.max_steps"]):
        # no quantised layer: no step to agree within (nan, null in reports); the max_abs_diff figures say it
        result["agrees_within_one_step"] = float("nan")
        return result
    agrees = result["forced.max_steps"] <= 1.0 and result["forced.codes.max_diff"] <= 1.0
    result["agrees_within_one_step"] = 1.0 if agrees else 0.0
    return result


# --- TorchScript ---------------------------------------------------------------------------


def _write_torchscript(model: Any, example_inputs: Tuple[Any, ...], target: str) -> None:
    import torch

    from .quantization import bit_plan

    twin = _eval_cpu_copy(model)
    example_inputs = tuple(x.detach().cpu() for x in example_inputs)
    flat = _flat_module(twin).eval()
    with torch.no_grad():
        count = len(flatten_outputs(twin(*example_inputs)))
    extra = {"rslab_bit_plan.json": json.dumps(bit_plan(twin)),
             "rslab_output_names.json": json.dumps(default_output_names(model, count)),
             "rslab_input_names.json": json.dumps(default_input_names(model, len(example_inputs)))}
    _quiet_torch()
    try:
        traced = torch.jit.trace(flat, example_inputs, check_trace=False)
    except Exception as exc:
        raise RSLabError(f"the TorchScript export failed: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from exc
    buffer = io.BytesIO()  # torch.jit.save straight to a full disk aborted the process (a C++ error at close)
    torch.jit.save(traced, buffer, _extra_files=extra)  # (deprecated in favour of torch.export, still supported)
    write_bytes(target, buffer.getvalue(), "could not write the TorchScript file")


def export_torchscript(model: Any, example_inputs: Tuple[Any, ...], path: str, overwrite: bool = False) -> str:
    """Trace `model` (eval, CPU, outputs flattened to a tuple of tensors) and save it; returns the path.

    The traced module keeps the fake quantisers, so it computes exactly what the
    PyTorch model does. Load with torch.jit.load(path); the bit plan and input and
    output names are in its extra files rslab_bit_plan.json, rslab_input_names.json,
    rslab_output_names.json.
    """
    _check_targets([path], overwrite)
    with PendingOutputs() as pending:
        _write_torchscript(model, tuple(example_inputs), pending.temp(path))
    return os.path.abspath(path)


# --- checkpoint ----------------------------------------------------------------------------


def _write_checkpoint(model: Any, card: ModelCard, target: str) -> ModelCard:
    from .quantization import compressed_state, is_quantised

    twin = _eval_cpu_copy(model)
    plan, state = compressed_state(twin)
    # A card with bit widths marks a compressed model (compression refuses it): a float model gets none.
    exported = dataclasses.replace(card, bit_widths=plan if is_quantised(twin) else None, created="")
    save_checkpoint(target, state, exported)
    return exported


def export_checkpoint(model: Any, card: ModelCard, path: str, overwrite: bool = False) -> str:
    """Write an RS Lab checkpoint of `model` with card.bit_widths set to its bit plan (None if it is not quantised).

    `build_model(load_checkpoint(path))` rebuilds it (pruned shapes, quantisers and
    activation ranges included). The caller's card is not changed.
    """
    _check_targets([path], overwrite)
    with PendingOutputs() as pending:
        _write_checkpoint(model, card, pending.temp(path))
    return os.path.abspath(path)


# --- report --------------------------------------------------------------------------------


def bops_report(model: Any, example_inputs: Tuple[Any, ...], mode: str = "hawq",
                extra: Optional[Mapping[str, Any]] = None) -> Dict[str, Any]:
    """The report as a dict: count_bops(...).to_dict() plus bit plan, input shapes and `extra`."""
    from .bops import count_bops
    from .quantization import bit_plan

    twin = _eval_cpu_copy(model)
    example_inputs = tuple(x.detach().cpu() for x in example_inputs)
    report: Dict[str, Any] = {"format": REPORT_FORMAT, "version": 1, "model": type(model).__name__}
    report.update(count_bops(twin, example_inputs, mode).to_dict())
    report["bit_plan"] = bit_plan(twin)
    report["input_shapes"] = [list(x.shape) for x in example_inputs]
    for key, value in (extra or {}).items():
        if key in report:
            raise RSLabError(f"the report already has a field {key!r}; give the extra value another name")
        report[key] = value
    try:
        json.dumps(report, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise RSLabError(f"the report holds a value that is not JSON: {exc}") from exc
    return report


def _write_report(report: Mapping[str, Any], target: str) -> None:
    write_json(target, report, indent=1, allow_nan=False)


def export_bops_report(model: Any, example_inputs: Tuple[Any, ...], path: str, overwrite: bool = False,
                       mode: str = "hawq", extra: Optional[Mapping[str, Any]] = None) -> Dict[str, Any]:
    """Write the BOPs report as JSON and return it.

    Fields: format, version, model, mode, total_bops, total_macs, gbops, params, size_mb,
    layers (per layer: name, kind, in/out channels, macs, weight_bits, activation_bits,
    bops, params), bit_plan, input_shapes, and the keys of `extra` (which may not
    reuse those names).
    """
    _check_targets([path], overwrite)
    report = bops_report(model, tuple(example_inputs), mode, extra)
    with PendingOutputs() as pending:
        _write_report(report, pending.temp(path))
    return report


# --- everything at once --------------------------------------------------------------------


def export_paths(folder: str, stem: str, formats: Sequence[str] = FORMATS) -> Dict[str, str]:
    """{format: path} that `export_all` writes: <stem>.pt, .onnx, .torchscript.pt, .report.json."""
    unknown = [f for f in formats if f not in FORMATS]
    if unknown:
        raise RSLabError(f"unknown export format(s) {', '.join(unknown)}; choose from {', '.join(FORMATS)}")
    if not stem or os.sep in stem or (os.altsep and os.altsep in stem):
        raise RSLabError(f"the file name stem {stem!r} must be a plain name")
    return {f: os.path.join(folder, stem + SUFFIXES[f]) for f in FORMATS if f in formats}


def export_all(model: Any, card: Optional[ModelCard], example_inputs: Tuple[Any, ...], folder: str, stem: str,
               formats: Sequence[str] = FORMATS, overwrite: bool = False,
               progress: Optional[Callable[[float, str], None]] = None,
               cancelled: Optional[Callable[[], bool]] = None, mode: str = "hawq",
               extra: Optional[Mapping[str, Any]] = None, check: bool = True) -> Dict[str, str]:
    """Write the chosen formats to `folder` as <stem>.pt / .onnx / .torchscript.pt / .report.json.

    All or nothing: every target is checked first (RSLabError if one exists and
    `overwrite` is False), and if any step fails or is cancelled no file is left.
    With `check` (and onnxruntime installed) the ONNX file is compared with
    PyTorch on `example_inputs` and the result goes into the report as "onnx_check".
    Returns {format: path}.
    """
    if not formats:
        raise RSLabError("choose at least one export format")
    paths = export_paths(folder, stem, formats)
    if "checkpoint" in paths and card is None:
        raise RSLabError("a checkpoint export needs the model card")
    _check_targets(list(paths.values()), overwrite)
    example_inputs = tuple(example_inputs)
    monitor = JobMonitor(progress, cancelled)
    steps = len(paths)
    report_extra: Dict[str, Any] = dict(extra or {})
    with PendingOutputs() as pending:
        for i, (fmt, path) in enumerate(paths.items()):
            monitor.step(i / steps, f"writing {os.path.basename(path)}")
            target = pending.temp(path)
            if fmt == "checkpoint":
                _write_checkpoint(model, card, target)
            elif fmt == "onnx":
                info = _write_onnx(model, example_inputs, target, None, None, 17)
                report_extra.setdefault("onnx", {k: v for k, v in info.items() if k != "path"})
                if check and _has_onnxruntime():
                    checked = check_onnx(model, sample_inputs(example_inputs), target, cancelled=cancelled)
                    report_extra.setdefault("onnx_check", dict(
                        {k: (None if math.isnan(v) else v) for k, v in checked.items()},
                        inputs=f"{CHECK_SAMPLES} random inputs shaped like the example (seed 0)"))
            elif fmt == "torchscript":
                _write_torchscript(model, example_inputs, target)
            else:
                _write_report(bops_report(model, example_inputs, mode, report_extra), target)
        monitor.step(1.0, "export done")
    return {fmt: os.path.abspath(path) for fmt, path in paths.items()}


def _has_onnxruntime() -> bool:
    import importlib.util

    return importlib.util.find_spec("onnxruntime") is not None
