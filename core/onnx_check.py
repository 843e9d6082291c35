"""Does an ONNX export compute what the PyTorch model does? onnxruntime and PyTorch run on the same inputs.

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
import json
import math
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from .bops import FULL_PRECISION
from .errors import JobCancelled, RSLabError
from .export_copy import eval_cpu_copy, flatten_outputs, quantised_layers


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

    twin = eval_cpu_copy(model)
    with torch.no_grad():
        for _, module in quantised_layers(twin):
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

    reference = model if next(model.parameters()).device.type == "cpu" else eval_cpu_copy(model)
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
