"""The compression job: checkpoint in, compressed checkpoint and a before/after report out.

    result = compress_checkpoint(model_path, data_path, output_path, CompressParams(method="pic_pq"))

It loads any RS Lab checkpoint, builds the task adapter that reads `data_path`
(core/compression_tasks.py), scores and counts the float model, runs PIC-PQ
(core/pic_pq.py) or GHOST (core/ghost.py), scores and counts the result, and
writes an RS Lab checkpoint whose model card carries the bit widths and a
`compression` record (method, settings, BOPs, size and scores before and
after). The task docks load it like any other checkpoint.

Training budgets are given in epochs, the unit users know: an epoch is one
pass over the training images for classification, and 100 iterations for the
tile-sampled tasks (the change detector's training uses the same unit).
"""
from __future__ import annotations

import copy
import math
import datetime as _dt
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Dict, List, Optional, Tuple

from .bops import FULL_PRECISION, MAX_BITS, MIN_BITS, MODES, bops_ratio, count_bops
from .checkpoint import build_model, load_checkpoint
from .device import describe_device, load_optimisers, select_device
from .pic_pq import MAX_PENALTY, MAX_REDUCTION
from .errors import RSLabError
from .job import CancelledFn, JobMonitor, JobResult, ProgressFn
from .outputs import PendingOutputs, check_output_paths, write_json

METHODS = ("pic_pq", "ghost")
METHOD_LABELS = {"pic_pq": "PIC-PQ (pruning + mixed precision)", "ghost": "GHOST (hybrid quantisation + self-distillation)"}
StepFn = Callable[[Dict[str, float]], None]


@dataclass(frozen=True)
class CompressParams:
    method: str = "pic_pq"
    flops_reduction: float = 0.5  # PIC-PQ: fraction of MACs pruned away (0 = quantise only)
    max_bits: Tuple[int, ...] = (8, 6, 4)  # PIC-PQ: maximum bits per stage; GHOST: the largest is its ceiling
    penalty: float = 1 / 6  # PIC-PQ: lambda
    epochs: float = 1.0  # fine-tuning / distillation budget
    ghost_threshold: float = 0.1  # GHOST: k-means distortion threshold
    distillation_weight: float = 400.0  # GHOST
    generations: int = 20  # PIC-PQ evolution
    batch_size: int = 32
    lr: float = 0.01  # SGD learning rate of fine-tuning and QAT (METHODS.md: 0.01; lower keeps a model closer)
    bops_mode: str = "hawq"
    seed: int = 0

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise RSLabError(f"unknown compression method {self.method!r}; choose one of {', '.join(METHODS)}")
        if not 0.0 <= self.flops_reduction <= MAX_REDUCTION:
            raise RSLabError(f"the FLOPs reduction must be between 0 and {MAX_REDUCTION:g}, got {self.flops_reduction}")
        self._check_max_bits()
        if not 0.0 <= self.penalty <= MAX_PENALTY:
            raise RSLabError(f"the penalty factor must be between 0 and {MAX_PENALTY:g}, got {self.penalty}")
        if not 0.0 < self.epochs <= 1000:
            raise RSLabError(f"epochs must be positive (at most 1000), got {self.epochs}")
        if not (math.isfinite(self.ghost_threshold) and self.ghost_threshold > 0):  # NaN too (as GhostParams)
            raise RSLabError(f"the GHOST threshold must be positive, got {self.ghost_threshold}")
        if not (math.isfinite(self.distillation_weight) and self.distillation_weight >= 0):
            raise RSLabError(f"the distillation weight cannot be negative, got {self.distillation_weight}")
        if not 0.0 < self.lr <= 1.0:
            raise RSLabError(f"the learning rate must be in (0, 1], got {self.lr}")
        if self.bops_mode not in MODES:
            raise RSLabError(f"unknown BOPs mode {self.bops_mode!r}; choose one of {', '.join(MODES)}")

    def _check_max_bits(self) -> None:
        """Both methods take ceilings of 2..8 bits only, checked here before any work.

        Full precision (32) is no ceiling for either: PIC-PQ keeps a model's stage-0
        layers (the CIFAR ResNet's first conv and classifier) at 32 bits by itself and
        quantises every other layer, and GHOST's k-means search runs n = 2..ceiling.
        """
        bits = list(self.max_bits)
        if bits and all(int(b) == b and MIN_BITS <= b <= MAX_BITS for b in bits):
            return
        allowed = f"whole numbers {MIN_BITS}..{MAX_BITS}"
        if self.method == "ghost":
            raise RSLabError(f"GHOST's maximum bits must be {allowed} (the largest is its bit ceiling; "
                             f"{FULL_PRECISION}, full precision, is not one); got {bits}")
        raise RSLabError(f"PIC-PQ's maximum bits per stage must be {allowed} ({FULL_PRECISION}, full precision, is "
                         "not a stage ceiling: the layers PIC-PQ keeps at full precision, such as the CIFAR "
                         f"ResNet's first conv and classifier, stay there by themselves); got {bits}")


@dataclass
class CompressResult(JobResult):
    checkpoint: str = ""
    method: str = ""
    metric: str = ""
    before: Dict[str, Any] = field(default_factory=dict)  # BopsReport.to_dict() of the float model
    after: Dict[str, Any] = field(default_factory=dict)
    bops_ratio: float = 0.0
    scores_before: Dict[str, float] = field(default_factory=dict)
    scores_after: Dict[str, float] = field(default_factory=dict)
    details: Dict[str, Any] = field(default_factory=dict)
    history: List[Dict[str, float]] = field(default_factory=list)
    notes: List[str] = field(default_factory=list)  # how the data was used, when a user should know

    def report(self) -> Dict[str, Any]:
        """JSON-ready summary (the export dialog and Processing write it)."""
        return {
            "checkpoint": self.checkpoint, "method": self.method, "metric": self.metric,
            "bops_ratio": round(self.bops_ratio, 3),
            "before": self.before, "after": self.after,
            "scores_before": self.scores_before, "scores_after": self.scores_after,
            "drop": round(self.scores_before.get(self.metric, 0.0) - self.scores_after.get(self.metric, 0.0), 3),
            "details": self.details, "device": self.device,
            "timings": {k: round(v, 2) for k, v in self.timings.items()}, "notes": self.notes,
        }


def epoch_steps(task: Any, batch_size: int) -> int:
    """Iterations in one epoch of `task` (see the module docstring)."""
    if hasattr(task, "x_train"):
        return max(1, -(-len(task.x_train) // batch_size))
    return 100


def compress_model(model: Any, task: Any, params: CompressParams, monitor: JobMonitor,
                   on_step: Optional[StepFn] = None) -> Tuple[Any, Dict[str, Any]]:
    """Run the chosen method on a float model (modified in place or replaced); returns (model, details)."""
    steps = max(1, int(round(params.epochs * epoch_steps(task, params.batch_size))))
    if params.method == "pic_pq":
        from .pic_pq import PicPqParams, compress_pic_pq

        method_params = PicPqParams(
            flops_reduction=params.flops_reduction, max_bits=tuple(params.max_bits), penalty=params.penalty,
            generations=params.generations, finetune_steps=steps, qat_steps=steps,
            batch_size=params.batch_size, seed=params.seed, lr=params.lr,
        )
        return compress_pic_pq(model, task, method_params, monitor, on_step)
    from .ghost import GhostParams, compress_ghost

    method_params = GhostParams(
        threshold=params.ghost_threshold, distillation_weight=params.distillation_weight,
        steps=2 * steps, batch_size=params.batch_size, seed=params.seed, lr=params.lr, max_bits=max(params.max_bits),
    )
    return compress_ghost(model, task, method_params, monitor, on_step)


def parse_max_bits(text: str, name: str = "the maximum bits per stage") -> Tuple[int, ...]:
    """'8, 6, 4' -> (8, 6, 4), or RSLabError saying what is expected (`name`: what the text is to the user)."""
    try:
        bits = tuple(int(part) for part in str(text).replace(" ", "").split(",") if part)
    except ValueError:
        raise RSLabError(f"{name} must be whole numbers separated by commas, such as 8,6,4; got {text!r}") from None
    if not bits:
        raise RSLabError(f"{name} is empty; give the maximum bits per stage, such as 8,6,4")
    return bits


def check_compression_outputs(model_path: str, output_path: str, report_path: Optional[str] = None,
                              data_path: Optional[str] = None) -> None:
    """RSLabError, before any work, if an output names the checkpoint being compressed, the data (or a file of
    a data folder) or the other output (links and spellings resolved), or cannot be written where it is
    asked for."""
    check_output_paths({"compressed checkpoint": output_path, "report": report_path},
                       {"checkpoint being compressed": model_path, "data": data_path})


def compress_checkpoint(
    model_path: str,
    data_path: str,
    output_path: str,
    params: CompressParams = CompressParams(),
    progress: Optional[ProgressFn] = None,
    cancelled: Optional[CancelledFn] = None,
    on_step: Optional[StepFn] = None,
    task_options: Optional[Dict[str, Any]] = None,
    report_path: Optional[str] = None,
) -> CompressResult:
    """Compress the checkpoint at `model_path` with `params.method`; write the result to `output_path`, and
    `result.report()` as JSON to `report_path` when given (both or neither: one commit)."""
    from .compression_tasks import task_for
    from .export import export_checkpoint

    check_compression_outputs(model_path, output_path, report_path, data_path)
    monitor = JobMonitor(progress, cancelled)
    monitor.step(0.0, "reading the checkpoint and the data")
    checkpoint = load_checkpoint(model_path)
    if checkpoint.card.compressed:
        raise RSLabError(f"{checkpoint.path} is already compressed; start from a full-precision checkpoint")
    model = build_model(checkpoint)  # its weights are the checkpoint's: nothing random
    task = task_for(checkpoint, data_path, params.seed, **(task_options or {}))
    example = task.example_inputs()
    # on the CPU even beside a GPU: the tasks build their data and models there (threads: RSLAB_THREADS)
    result = CompressResult(method=params.method, metric=task.metric, device=describe_device(select_device("cpu")),
                            timings=monitor.timings)
    result.notes = list(task.notes)

    with monitor.timed("evaluate"):
        monitor.step(0.01, "scoring the full-precision model")
        result.scores_before = task.evaluate(model)
        before = count_bops(model, example, params.bops_mode)
    result.before = before.to_dict()
    load_optimisers(monitor)  # Fine-tuning's optimiser imports torch._dynamo on first use.

    def record(entry: Dict[str, float]) -> None:
        result.history.append(dict(entry))
        if on_step is not None:
            on_step(entry)

    with monitor.timed("compress"):
        compressed, details = compress_model(copy.deepcopy(model), task, params, monitor.sub(0.03, 0.95), record)
    with monitor.timed("evaluate"):
        # Both methods score the model they return as their last step; not scored again here.
        result.scores_after = dict(details["final_scores"])
        after = count_bops(compressed, example, params.bops_mode)
    result.after = after.to_dict()
    result.bops_ratio = bops_ratio(before, after)
    result.details = details

    card = copy.deepcopy(checkpoint.card)
    card.created = ""
    card.description = f"{checkpoint.card.description} - compressed with {METHOD_LABELS[params.method]}".strip(" -")
    card.metrics = {**checkpoint.card.metrics, f"compressed_{task.metric}": round(result.scores_after[task.metric], 3)}
    card.training = {
        **checkpoint.card.training,
        "compression": {
            "method": params.method, "metric": task.metric, "params": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(params).items()},
            "source": checkpoint.path, "data": data_path,
            "gbops_before": round(before.gbops, 4), "gbops_after": round(after.gbops, 4),
            "bops_ratio": round(result.bops_ratio, 3),
            "size_mb_before": round(before.size_mb, 4), "size_mb_after": round(after.size_mb, 4),
            "params_before": before.params, "params_after": after.params,
            "scores_before": result.scores_before, "scores_after": result.scores_after,
            "date": _dt.date.today().isoformat(),
        },
    }
    monitor.check()
    result.checkpoint = output_path
    with PendingOutputs() as pending:
        export_checkpoint(compressed, card, pending.temp(output_path), overwrite=True)
        if report_path:
            write_json(pending.temp(report_path), result.report(), indent=1, default=str)
    monitor.done(f"{result.bops_ratio:.1f}x fewer BOPs; {task.metric} "
                 f"{result.scores_before[task.metric]:.2f} -> {result.scores_after[task.metric]:.2f}")
    return result


def model_bops_report(model_path: str, mode: str = "hawq", input_size: Optional[int] = None) -> Dict[str, Any]:
    """BOPs, MACs, size and per-layer figures of any checkpoint (float or compressed), as JSON-ready data."""
    from .compression_tasks import DEFAULT_INPUT_SIZE, example_inputs_for

    checkpoint = load_checkpoint(model_path)
    model = build_model(checkpoint)
    report = count_bops(model, example_inputs_for(checkpoint.card, input_size), mode).to_dict()
    report.update({"model": model_path, "task": checkpoint.card.task, "architecture": checkpoint.card.architecture,
                   "compressed": checkpoint.card.compressed,
                   "input": "one pixel token" if checkpoint.card.task == "anomaly_detection"
                   else f"{input_size or DEFAULT_INPUT_SIZE[checkpoint.card.task]} pixels square, batch of one"})
    return report
