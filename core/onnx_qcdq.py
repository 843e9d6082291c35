"""ONNX with integer weights: the float graph exported by torch, then rewritten as QCDQ with the `onnx` package.

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
"""
from __future__ import annotations

import dataclasses
import io
import json
import math
import threading
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from .bops import FULL_PRECISION
from .errors import RSLabError
from .export_copy import (check_names, default_input_names, default_output_names, eval_cpu_copy, flat_module,
                          flatten_outputs, quantised_layers, quiet_torch)

MIN_OPSET = 13
ONNX_EXPORT = threading.Lock()  # torch's ONNX exporter (dynamo=False) runs one export per process at a time


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


def _float_export_copy(model: Any) -> Tuple[Any, Dict[str, _LayerQuant]]:
    """A CPU eval copy with quantised weights substituted and plain layers; plus each quantised layer's data."""
    import torch

    from .quantization import FLOAT_CLASSES

    twin = eval_cpu_copy(model)
    layers: Dict[str, _LayerQuant] = {}
    for name, module in quantised_layers(twin):
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


def _float_onnx(twin: Any, example_inputs: Tuple[Any, ...], input_names: List[str],
                output_names: List[str], opset: int) -> Any:
    import onnx
    import torch

    flat = flat_module(twin).eval()
    buffer = io.BytesIO()
    # Batch axes are dynamic; a 0-dim input (BSDM's diffusion step) has none.
    batched = [name for name, x in zip(input_names, example_inputs) if getattr(x, "ndim", 0) > 0]
    axes = {name: {0: "batch"} for name in batched + output_names}
    quiet_torch()
    # one export at a time: torch's TorchScript-based exporter keeps process-wide state (a second export
    # beside the first failed with 'GLOBALS.in_onnx_export must be False'), as does the pooling symbolic
    with ONNX_EXPORT, _AdaptivePoolSymbolic(opset):
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


def onnx_proto(model: Any, example_inputs: Tuple[Any, ...], input_names: Optional[Sequence[str]],
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
    inputs = check_names(input_names, default_input_names(model, len(example_inputs)), "input")
    outputs = check_names(output_names, default_output_names(model, count), "output")
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
