"""Export compressed RS Lab models: checkpoint, ONNX with integer weights, TorchScript, BOPs report.

Every export works on a CPU copy of the model in eval mode (the caller's model
is left as it was) and writes through `PendingOutputs`, so a failed export
leaves no file behind. An existing target is refused unless `overwrite=True`
(the UI asks first); all targets are checked before anything is written.

Outputs
-------
Models whose forward returns tuples or lists are exported as a flat tuple of
their tensor leaves, in order, with names: the model's `export_output_names`
attribute if it has one, else export_copy.OUTPUT_NAMES, else "output" / "output_<i>".
AR-CDNet returns (change logit, uncertainty logit, [aux logits]); the aux
list is empty in eval mode, which is the mode every export uses, so its
exports have exactly two outputs, "change_logit" and "uncertainty_logit"
(both B x 1 x H x W logits at the input size). Input names default to the
parameter names of the model's forward ("x" for the CIFAR ResNet, "before" and
"after" for AR-CDNet). The batch axis is dynamic in the ONNX graph; the
spatial size is the one of the example inputs.

ONNX files carry QCDQ per quantised layer (core/onnx_qcdq.py: how, and why by
hand); core/onnx_check.py measures how closely they agree with PyTorch.
"""
from __future__ import annotations

import dataclasses
import io
import json
import math
import os
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

from .checkpoint import ModelCard, save_checkpoint
from .errors import RSLabError
from .export_copy import default_input_names, default_output_names, eval_cpu_copy, flat_module, flatten_outputs, quiet_torch
from .job import JobMonitor
from .onnx_check import CHECK_SAMPLES, check_onnx, sample_inputs
from .onnx_qcdq import onnx_proto
from .outputs import PendingOutputs, check_name_length, write_bytes, write_json

FORMATS = ("checkpoint", "onnx", "torchscript", "report")
SUFFIXES = {"checkpoint": ".pt", "onnx": ".onnx", "torchscript": ".torchscript.pt", "report": ".report.json"}
REPORT_FORMAT = "rslab-compression-report"


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


def _write_onnx(model: Any, example_inputs: Tuple[Any, ...], target: str, input_names, output_names,
                opset: int) -> Dict[str, Any]:
    proto, info = onnx_proto(model, example_inputs, input_names, output_names, opset)
    write_bytes(target, proto.SerializeToString(), "could not write the ONNX file")  # what onnx.save_model writes
    return info


def export_onnx(model: Any, example_inputs: Tuple[Any, ...], path: str, overwrite: bool = False,
                input_names: Optional[Sequence[str]] = None, output_names: Optional[Sequence[str]] = None,
                opset: int = 17) -> Dict[str, Any]:
    """Write `model` (quantised or not) as ONNX with QCDQ per quantised layer (core/onnx_qcdq.py).

    Returns {"path", "inputs", "outputs", "opset", "dynamic_batch", "quantised_layers" (count),
    "unused_quantised_layers", "batch_norm_nodes"}.
    """
    _check_targets([path], overwrite)
    with PendingOutputs() as pending:
        info = _write_onnx(model, tuple(example_inputs), pending.temp(path), input_names, output_names, opset)
    return {"path": os.path.abspath(path), **info}


def _write_torchscript(model: Any, example_inputs: Tuple[Any, ...], target: str) -> None:
    import torch

    from .quantization import bit_plan

    twin = eval_cpu_copy(model)
    example_inputs = tuple(x.detach().cpu() for x in example_inputs)
    flat = flat_module(twin).eval()
    with torch.no_grad():
        count = len(flatten_outputs(twin(*example_inputs)))
    extra = {"rslab_bit_plan.json": json.dumps(bit_plan(twin)),
             "rslab_output_names.json": json.dumps(default_output_names(model, count)),
             "rslab_input_names.json": json.dumps(default_input_names(model, len(example_inputs)))}
    quiet_torch()
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


def _write_checkpoint(model: Any, card: ModelCard, target: str) -> ModelCard:
    from .quantization import compressed_state, is_quantised

    twin = eval_cpu_copy(model)
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


def bops_report(model: Any, example_inputs: Tuple[Any, ...], mode: str = "hawq",
                extra: Optional[Mapping[str, Any]] = None) -> Dict[str, Any]:
    """The report as a dict: count_bops(...).to_dict() plus bit plan, input shapes and `extra`."""
    from .bops import count_bops
    from .quantization import bit_plan

    twin = eval_cpu_copy(model)
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
