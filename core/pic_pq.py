"""PIC-PQ: joint structured pruning and mixed-precision quantisation (METHODS.md section 4).

The pipeline, for any CNN behind a `CompressionTask`:

1. Filter property FP_i^l: the average matrix rank of filter i's output
   feature map in conv layer l over a few training batches (`filter_property`).
2. Physics-inspired importance (Hooke's law): I_i^l = a_l * FP_i^l + b_l, a
   deformation scale a_l and a shift b_l per layer, so that importances compare
   across layers. Channels tied together (residual sums, concatenated or
   multiplied maps) form one Torch-Pruning group and share the sum of their
   layers' importances.
3. (a, b) are learned by regularised (aging) evolution: tournament selection,
   mutation of 10 % of the layers per child (a <- a exp(N(0, step)),
   step = 1 - g / (1.25 G); b <- b + N(0, std(FP_l))), fitness = validation
   loss after a short fine-tune of the pruned net.
4. Global pruning, lowest importance first, until the conv/linear MACs target
   is met, keeping at least 10 % and at least 2 filters per group; channels are
   removed physically with Torch-Pruning's DependencyGraph.
5. Bits from the L1 ratio s_l = sum|W_l after pruning| / sum|W_l before|:
   b_l = Bmax_l - ceil(lambda / s_l) if s_l < 1 else Bmax_l, Bmax per stage,
   clamped at 2 bits (the public code forgets the clamp), the same bits for a
   layer's weights and activations (`assign_bits`).
6. Fine-tune the pruned float net, then quantisation-aware training: first
   activations only, then weights and activations (DoReFa, core/quantization.py).

Departures from the paper's method, and why:

- Which channels can be pruned: only the Torch-Pruning groups that pass the
  checks of core/channel_pruning.py (option-A shortcut pads and broadcast
  masks couple channels of different widths, which Torch-Pruning 1.6.1 would
  cut wrongly). On ResNetCifar this leaves the inner channels of every block
  (conv1's outputs, conv2's inputs), as in HRank's and most option-A ResNet-56
  pruning; the residual channels keep their width. The paper prunes residual
  channels too (with summed importance), which option-A shortcuts do not allow
  without changing which channels the pads line up.
- FP is the rank of the conv output itself (before norm and activation), so it
  works for any conv without knowing what follows it. Conv3d maps (AR-CDNet's
  temporal difference) are ranked per depth slice and averaged; a Conv1d map is
  a 1 x L matrix (rank 0 or 1). Linear layers have no feature map: they are
  never scored and only follow the groups they belong to (e.g. a
  squeeze-excitation output tied to a conv's channels).
- Fitness is the task loss on fixed training batches drawn once (with their
  own seed), not on a held-out split: the task adapters expose only their
  evaluation data, and selecting on it would leak test data into the result.
  Every candidate is fine-tuned on the same fixed batches, so a candidate
  that prunes exactly the same channels as an earlier one reuses its fitness.
- The initial population is the identity (a = 1, b = 0) plus mutations of it
  at step 1; the paper does not say how it is initialised (LeGR, whose
  evolution PIC-PQ follows, starts from the identity too).
- Gradients are clipped to norm 10 in every training step. Quantised
  activations can make the input of a batch norm almost constant on a small
  batch (a 1 x 1 pooled map, 2-bit levels), and batch norm's 1 / sqrt(var)
  then blows the gradient up by orders of magnitude: AR-CDNet at batch 2 went
  from gradient norms of ~5 to 34,000 on its first QAT step and to NaN weights.
  Healthy steps (norm well under 10) are not changed.
- Activation ranges are calibrated once, before the activations-only QAT
  phase; the weights-and-activations phase keeps those ranges (calibration
  costs more than a training step and the ranges barely move).
- Defaults are CPU-sized (`PicPqParams`): population 16, tournament 4,
  20 generations, 2 x 32 images for FP, instead of 64 / 16 / 400 / 6 x 128.
"""
from __future__ import annotations

import copy
import dataclasses
import math
import time
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from .bops import FULL_PRECISION, MAX_BITS, MIN_BITS
from .channel_pruning import (MIN_KEEP_FRACTION, PruneAnalysis, analyse_pruning, group_importance, layer_channels,
                              max_reduction, prune_channels, select_channels)
from .compression_tasks import fixed_batches
from .errors import RSLabError
from .job import JobMonitor

if TYPE_CHECKING:  # torch is imported lazily: the UI builds PicPqParams without it
    import torch
    from torch import nn

    from .compression_tasks import CompressionTask

MAX_REDUCTION = 0.95  # largest FLOPs reduction PIC-PQ takes (the dock, Processing and CompressParams use it)
MAX_PENALTY = 8.0  # largest bit penalty lambda: from 6 on, any pruned layer under an 8-bit ceiling gets MIN_BITS
MUTATE_FRACTION = 0.10
VAL_BATCHES = 2  # fixed batches the fitness loss is measured on
FITNESS_SEED = 4242  # seed of the fixed fitness batches (its own stream: the task's stays as it was)
MOMENTUM, WEIGHT_DECAY = 0.9, 5e-4
GRAD_CLIP = 10.0  # largest gradient norm a training step applies (see the module docstring)
LOG_EVERY = 10  # training steps between on_step reports

StepFn = Callable[[Dict[str, float]], None]


@dataclass(frozen=True)
class PicPqParams:
    """Settings of one PIC-PQ run; CPU-sized defaults (the paper: population 64, sample 16, 400 generations)."""

    flops_reduction: float = 0.5  # fraction of conv/linear MACs to remove (0 = quantise only, no pruning)
    max_bits: Tuple[int, ...] = (8, 6, 4)  # Bmax of stages 1, 2, 3...; stage 0 stays 32
    penalty: float = 1 / 6
    generations: int = 20
    population: int = 16
    sample: int = 4
    fitness_steps: int = 5
    rank_batches: int = 2
    rank_batch_size: int = 32
    finetune_steps: int = 200
    qat_steps: int = 200
    batch_size: int = 32
    lr: float = 0.01
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0.0 <= float(self.flops_reduction) <= MAX_REDUCTION:
            raise RSLabError(f"the FLOPs reduction must be between 0 and {MAX_REDUCTION}; got {self.flops_reduction}")
        bits = tuple(self.max_bits)
        if not bits:
            raise RSLabError("give at least one maximum bit width (for stage 1)")
        for b in bits:
            if int(b) != b or not MIN_BITS <= int(b) <= MAX_BITS:
                raise RSLabError(f"maximum bit widths must be whole numbers from {MIN_BITS} to {MAX_BITS}; got {b}")
        object.__setattr__(self, "max_bits", tuple(int(b) for b in bits))
        if not 0.0 <= float(self.penalty) <= MAX_PENALTY:
            raise RSLabError(f"the bit penalty lambda must be between 0 and {MAX_PENALTY:g}; got {self.penalty}")
        for name, low in (("generations", 0), ("population", 1), ("sample", 1), ("fitness_steps", 0),
                          ("rank_batches", 1), ("rank_batch_size", 1), ("finetune_steps", 0),
                          ("qat_steps", 0), ("batch_size", 1)):
            value = getattr(self, name)
            if int(value) != value or value < low:
                raise RSLabError(f"{name.replace('_', ' ')} must be a whole number of at least {low}; got {value}")
        if self.sample > self.population:
            raise RSLabError(f"the tournament sample ({self.sample}) cannot be larger than the population "
                             f"({self.population})")
        if not 0.0 < float(self.lr) <= 1.0:
            raise RSLabError(f"the learning rate must be in (0, 1]; got {self.lr}")


# --- bit widths ---------------------------------------------------------------------------


def bits_for_ratio(ratio: float, max_bits: int, penalty: float) -> int:
    """PIC-PQ's rule b = Bmax - ceil(lambda / s) for s < 1, else Bmax; clamped to 2..Bmax."""
    if ratio >= 1.0:
        return int(max_bits)
    if ratio <= 0.0:
        return MIN_BITS
    # the 1e-9 keeps float noise (lambda / s = 1.0000000002) from costing a whole bit
    return int(min(max_bits, max(MIN_BITS, max_bits - math.ceil(penalty / ratio - 1e-9))))


def stage_max_bits(stage: int, max_bits: Sequence[int]) -> int:
    """Bmax of a stage: 32 for stage 0, max_bits[stage - 1] (the last entry for deeper stages)."""
    if stage <= 0:
        return FULL_PRECISION
    return int(max_bits[min(stage, len(max_bits)) - 1])


def assign_bits(l1_before: Mapping[str, float], l1_after: Mapping[str, float], stages: Mapping[str, int],
                max_bits: Sequence[int], penalty: float) -> Tuple[Dict[str, int], Dict[str, float]]:
    """({layer: bits}, {layer: s_l}) from the layers' L1 weight mass before and after pruning.

    s_l = l1_after / l1_before; stage-0 layers (first conv, classifier) stay at 32 bits.
    Layers missing from `l1_after` count as unpruned (s_l = 1).
    """
    bits: Dict[str, int] = {}
    ratios: Dict[str, float] = {}
    for name, before in l1_before.items():
        after = l1_after.get(name, before)
        ratio = float(after) / float(before) if before > 0 else 1.0
        ratios[name] = ratio
        bmax = stage_max_bits(int(stages.get(name, 1)), max_bits)
        bits[name] = FULL_PRECISION if bmax == FULL_PRECISION else bits_for_ratio(ratio, bmax, penalty)
    return bits, ratios


def layer_stages(model: "nn.Module") -> Dict[str, int]:
    """{conv/linear layer: stage} from the model's `stage_of`, or 1 for every layer of models without one."""
    from .quantization import quantisable_layers

    stage_of = getattr(model, "stage_of", None)
    return {name: int(stage_of(name)) if callable(stage_of) else 1 for name, _ in quantisable_layers(model)}


def l1_masses(model: "nn.Module") -> Dict[str, float]:
    """{conv/linear layer: sum |W|} (float64 sums, so an untouched layer gives exactly the same value)."""
    from .quantization import quantisable_layers

    return {name: float(m.weight.detach().double().abs().sum()) for name, m in quantisable_layers(model)}


# --- filter property ----------------------------------------------------------------------


def filter_property(model: "nn.Module", task: "CompressionTask", layers: Sequence[str], batches: int,
                    batch_size: int, monitor: Optional[JobMonitor] = None) -> Dict[str, "torch.Tensor"]:
    """{conv layer: FP vector (one value per output channel)}: the mean matrix rank of each channel's map.

    The rank is taken over the last two dimensions of the conv output (H x W;
    per depth slice for Conv3d, 1 x L for Conv1d) and averaged over the
    samples of `batches` training batches and over repeated calls of a layer.
    Values lie in [0, min(H, W)]. `monitor` reports each batch and checks for a cancel at every layer: one
    batch of AR-CDNet's maps took 30 s, and a cancel waited for all of them.
    """
    import torch

    monitor = monitor or JobMonitor()

    modules = dict(model.named_modules())
    unknown = [n for n in layers if n not in modules]
    if unknown:
        raise RSLabError(f"the model has no layers named {', '.join(unknown[:5])}")
    sums: Dict[str, torch.Tensor] = {}
    counts: Dict[str, int] = {n: 0 for n in layers}
    hooks = []

    def make_hook(name: str):
        def hook(module, inputs, output):
            monitor.check()
            x = output[0] if isinstance(output, (tuple, list)) else output
            x = x.detach().float()
            if x.dim() < 3:
                raise RSLabError(f"layer {name} has no feature map to rank (output shape {tuple(x.shape)})")
            if x.dim() == 3:  # Conv1d: a 1 x L matrix per channel
                x = x.unsqueeze(-2)
            ranks = torch.linalg.matrix_rank(x).float()  # (B, C, *extra)
            per_channel = ranks.transpose(0, 1).reshape(ranks.shape[1], -1)
            sums[name] = sums.get(name, 0) + per_channel.sum(1)
            counts[name] += per_channel.shape[1]
        return hook

    for name in layers:
        hooks.append(modules[name].register_forward_hook(make_hook(name)))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for index in range(batches):
                monitor.step(index / batches, f"filter property: feature map ranks, batch {index + 1} of {batches}")
                inputs, _ = task.batch(batch_size)
                model(*inputs)
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    missing = [n for n in layers if counts[n] == 0]
    if missing:
        raise RSLabError(f"layers {', '.join(missing[:5])} did not run in the model's forward pass")
    return {n: sums[n] / counts[n] for n in layers}




# --- training -----------------------------------------------------------------------------


def _optimizer(model: "nn.Module", lr: float):
    import torch

    return torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=lr, momentum=MOMENTUM,
                           nesterov=True, weight_decay=WEIGHT_DECAY)


def _train(model: "nn.Module", task: "CompressionTask", steps: int, params: PicPqParams, monitor: JobMonitor,
           on_step: Optional[StepFn], phase: str) -> List[float]:
    """SGD (Nesterov, wd 5e-4), lr x 0.1 at 50 % and 75 % of the steps; returns the per-step losses."""
    import torch

    if steps <= 0:
        return []
    optimizer = _optimizer(model, params.lr)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, [max(1, steps // 2), max(1, 3 * steps // 4)], 0.1)
    model.train()
    losses: List[float] = []
    for i in range(steps):
        monitor.check()
        loss = task.loss(model, task.batch(params.batch_size))
        if not torch.isfinite(loss):
            raise RSLabError(f"{phase.replace('_', ' ')} diverged at step {i + 1} (loss {float(loss)}); "
                             "try a lower learning rate")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), GRAD_CLIP)
        optimizer.step()
        scheduler.step()
        losses.append(float(loss.detach()))
        if (i + 1) % LOG_EVERY == 0 or i + 1 == steps:
            recent = losses[-LOG_EVERY:]
            monitor.step((i + 1) / steps, f"{phase.replace('_', ' ')}: step {i + 1}/{steps}")
            if on_step is not None:
                on_step({"phase": phase, "step": i + 1, "loss": sum(recent) / len(recent)})
    if not all(bool(torch.isfinite(p).all()) for p in model.parameters()):
        raise RSLabError(f"{phase.replace('_', ' ')} diverged (the weights are no longer finite); "
                         "try a lower learning rate")
    return losses


class _Fitness:
    """Validation loss of a pruned copy after a short fine-tune on fixed batches (cached per channel set)."""

    def __init__(self, model: "nn.Module", task: "CompressionTask", example_inputs: Sequence[Any],
                 params: PicPqParams, monitor: JobMonitor) -> None:
        self.model, self.task, self.example_inputs, self.params = model, task, example_inputs, params
        self.monitor = monitor
        self.train_batches = fixed_batches(task, params.fitness_steps + VAL_BATCHES, params.batch_size, FITNESS_SEED)
        self.val_batches = self.train_batches[params.fitness_steps:]
        self.train_batches = self.train_batches[:params.fitness_steps]
        self.cache: Dict[Tuple, float] = {}
        self.evaluations = 0

    def __call__(self, removal: Mapping[str, Sequence[int]]) -> float:
        import torch

        key = tuple(sorted((r, tuple(c)) for r, c in removal.items()))
        if key in self.cache:
            return self.cache[key]
        self.evaluations += 1
        candidate = copy.deepcopy(self.model)
        prune_channels(candidate, self.example_inputs, removal)
        if self.train_batches:
            optimizer = _optimizer(candidate, self.params.lr)
            candidate.train()
            for batch in self.train_batches:
                self.monitor.check()
                loss = self.task.loss(candidate, batch)
                if not torch.isfinite(loss):
                    break
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(candidate.parameters(), GRAD_CLIP)
                optimizer.step()
        candidate.eval()
        with torch.no_grad():
            value = sum(float(self.task.loss(candidate, b)) for b in self.val_batches) / len(self.val_batches)
        fitness = value if math.isfinite(value) else math.inf
        self.cache[key] = fitness
        return fitness


def _evolve(analysis: PruneAnalysis, fp: Mapping[str, "torch.Tensor"], fitness: _Fitness, params: PicPqParams,
            monitor: JobMonitor, on_step: Optional[StepFn]) -> Tuple[Dict[str, float], Dict[str, float], Dict[str, Any]]:
    """Regularised (aging) evolution of the per-layer (a, b); returns the best (a, b) and a history."""
    rng = np.random.default_rng(params.seed)
    layers = analysis.scored_layers
    n = len(layers)
    fp_std = np.array([float(fp[l].double().std()) if fp[l].numel() > 1 else 0.0 for l in layers])
    mutated = max(1, int(round(MUTATE_FRACTION * n)))

    def mutate(a: np.ndarray, b: np.ndarray, step: float) -> Tuple[np.ndarray, np.ndarray]:
        a, b = a.copy(), b.copy()
        chosen = rng.choice(n, mutated, replace=False)
        a[chosen] *= np.exp(rng.normal(0.0, step, mutated))
        b[chosen] += rng.normal(0.0, 1.0, mutated) * fp_std[chosen]
        return a, b

    def evaluate(a: np.ndarray, b: np.ndarray) -> float:
        importance = group_importance(analysis, fp, dict(zip(layers, a)), dict(zip(layers, b)))
        removal, _ = select_channels(analysis, importance, params.flops_reduction)
        return fitness(removal)

    total = params.population + params.generations
    done = 0
    population: deque = deque()
    identity = (np.ones(n), np.zeros(n))
    best = (math.inf, identity)
    for i in range(params.population):
        a, b = identity if i == 0 else mutate(*identity, 1.0)
        f = evaluate(a, b)
        population.append((f, a, b))
        if f < best[0]:
            best = (f, (a, b))
        done += 1
        monitor.step(done / total, f"evolution: initial population {i + 1}/{params.population}")
    initial_best = best[0]
    history: List[float] = []
    children: List[float] = []
    for g in range(params.generations):
        step = 1.0 - g / (1.25 * params.generations)
        picks = rng.choice(len(population), params.sample, replace=False)
        _, pa, pb = min((population[int(k)] for k in picks), key=lambda m: m[0])
        a, b = mutate(pa, pb, step)
        f = evaluate(a, b)
        population.append((f, a, b))
        population.popleft()  # aging: the oldest member dies, however fit
        if f < best[0]:
            best = (f, (a, b))
        history.append(best[0])
        children.append(f)
        done += 1
        monitor.step(done / total, f"evolution: generation {g + 1}/{params.generations}, best loss {best[0]:.4f}")
        if on_step is not None and math.isfinite(best[0]):
            on_step({"phase": "evolution", "step": g + 1, "loss": best[0]})
    a, b = best[1]
    info = {"initial_best_fitness": _json_float(initial_best), "best_fitness": [_json_float(v) for v in history],
            "child_fitness": [_json_float(v) for v in children], "evaluations": fitness.evaluations,
            "candidates": total}
    return dict(zip(layers, map(float, a))), dict(zip(layers, map(float, b))), info


def _json_float(value: float) -> Optional[float]:
    return float(value) if math.isfinite(value) else None


# --- the job ------------------------------------------------------------------------------


def compress_pic_pq(model: "nn.Module", task: "CompressionTask", params: PicPqParams, monitor: JobMonitor,
                    on_step: Optional[StepFn] = None) -> Tuple["nn.Module", Dict[str, Any]]:
    """Prune and quantise a float model with PIC-PQ; returns (compressed model, json-serialisable details).

    The input model is left as it is (a copy is compressed). The result is
    pruned physically, carries its bit plan (`apply_bit_plan`) and calibrated
    activation ranges, and has been fine-tuned and trained quantisation-aware;
    `compressed_state` + `save_checkpoint` with the plan as the card's
    `bit_widths` stores it so that `build_model` rebuilds it.

    `on_step` gets {"phase", "step", "loss"} every 10 training steps (phases
    "evolution" (loss = best fitness so far, once per generation), "finetune",
    "qat_activations", "qat_full"; loss = mean training loss of the last 10
    steps) and {"phase", "step", "metric", "eval_loss"} after each evaluation
    (after fine-tuning and after QAT; metric = `task.metric` in percent).
    Raises RSLabError for a target the prunable layers cannot reach, JobCancelled on cancel.
    Draws nothing from torch's global generator (its evolution and batches use their own generators).
    """
    from .bops import bops_ratio, count_bops
    from .quantization import apply_bit_plan, calibrate_activations, is_quantised, quantisable_layers

    if is_quantised(model):
        raise RSLabError("the model is already quantised; PIC-PQ starts from a full-precision model")
    timings: Dict[str, float] = {}
    started = time.perf_counter()
    model = copy.deepcopy(model).cpu().float()
    example = tuple(task.example_inputs())
    prune = params.flops_reduction > 0
    # progress ranges, roughly in proportion to the work
    weights = {"rank": params.rank_batches if prune else 0,
               "evolution": (params.population + params.generations) * (params.fitness_steps + VAL_BATCHES + 3)
               if prune else 0,
               "finetune": params.finetune_steps if prune else 0, "qat": params.qat_steps + 2}
    total = float(sum(weights.values())) or 1.0
    ranges, start = {}, 0.0
    for key, w in weights.items():
        ranges[key] = monitor.sub(start, start + w / total)
        start += w / total

    monitor.step(0.0, "measuring the model")
    before_report = count_bops(model, example)
    stages = layer_stages(model)
    l1_before = l1_masses(model)
    shapes_before = _layer_shapes(model)
    metrics: Dict[str, Dict[str, float]] = {}  # the float model is scored by the caller (core/compression.py)

    evolution: Dict[str, Any] = {}
    skipped: Dict[str, str] = {}
    removal: Dict[str, List[int]] = {}
    estimated = float(before_report.total_macs)
    if prune:
        t = time.perf_counter()
        analysis = analyse_pruning(model, example)
        skipped = analysis.skipped
        if not analysis.groups:
            raise RSLabError("this model has no channels PIC-PQ can prune safely; set the FLOPs reduction to 0 "
                             "to quantise it only")
        reachable = max_reduction(analysis)
        if params.flops_reduction > reachable + 1e-9:
            raise RSLabError(f"at most {100 * reachable:.1f} % of this model's FLOPs can be pruned (every "
                             f"prunable layer keeping {int(100 * MIN_KEEP_FRACTION)} % of its filters); "
                             f"asked for {100 * params.flops_reduction:.1f} %")
        timings["analysis"] = time.perf_counter() - t

        t = time.perf_counter()
        ranges["rank"].step(0.0, "filter property: feature map ranks")
        fp = filter_property(model, task, analysis.scored_layers, params.rank_batches, params.rank_batch_size,
                             ranges["rank"])
        ranges["rank"].step(1.0, "filter property done")
        timings["filter_property"] = time.perf_counter() - t

        t = time.perf_counter()
        fitness = _Fitness(model, task, example, params, ranges["evolution"])
        a, b, evolution = _evolve(analysis, fp, fitness, params, ranges["evolution"], on_step)
        evolution["a"], evolution["b"] = a, b
        timings["evolution"] = time.perf_counter() - t

        importance = group_importance(analysis, fp, a, b)
        removal, estimated = select_channels(analysis, importance, params.flops_reduction)
        prune_channels(model, example, removal)
    l1_after = l1_masses(model)
    bits, ratios = assign_bits(l1_before, l1_after, stages, params.max_bits, params.penalty)
    pruned_report = count_bops(model, example)

    if prune:
        t = time.perf_counter()
        _train(model, task, params.finetune_steps, params, ranges["finetune"], on_step, "finetune")
        metrics["pruned"] = task.evaluate(model)
        _report_metric(on_step, "finetune", params.finetune_steps, metrics["pruned"], task.metric)
        timings["finetune"] = time.perf_counter() - t

    t = time.perf_counter()
    qat = ranges["qat"]
    act_steps = params.qat_steps // 2
    apply_bit_plan(model, {n: {"weight": FULL_PRECISION, "activation": b} for n, b in bits.items()})
    calibrate_activations(model, task.calibration_batches())
    qat.step(2 / weights["qat"], "calibrated activation ranges")
    _train(model, task, act_steps, params, qat.sub(2 / weights["qat"], (2 + act_steps) / weights["qat"]),
           on_step, "qat_activations")
    apply_bit_plan(model, {n: {"weight": b, "activation": b} for n, b in bits.items()})
    _train(model, task, params.qat_steps - act_steps, params, qat.sub((2 + act_steps) / weights["qat"], 1.0),
           on_step, "qat_full")
    metrics["quantised"] = task.evaluate(model)
    # at the phase's own last step (the steps after the activations-only ones): at qat_steps, the final score
    # was drawn past the end of the training curve
    _report_metric(on_step, "qat_full", params.qat_steps - act_steps, metrics["quantised"], task.metric)
    timings["qat"] = time.perf_counter() - t
    model.eval()
    monitor.step(1.0, "PIC-PQ done")

    after_report = count_bops(model, example)
    shapes_after = _layer_shapes(model)
    layers = {}
    for name, _ in quantisable_layers(model):
        ob, ib = shapes_before[name]
        oa, ia = shapes_after[name]
        layers[name] = {"stage": stages[name], "out_before": ob, "out_after": oa, "in_before": ib, "in_after": ia,
                        "l1_ratio": round(ratios[name], 6), "bits": bits[name]}
        if name in skipped:
            layers[name]["not_pruned"] = skipped[name]
    timings["total"] = time.perf_counter() - started
    details = {
        "method": "pic_pq",
        "params": {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(params).items()},
        "flops_before": int(before_report.total_macs),
        "flops_after": int(after_report.total_macs),
        "flops_estimated": float(estimated),
        "flops_target": float((1 - params.flops_reduction) * before_report.total_macs),
        "flops_reduction": 1 - after_report.total_macs / before_report.total_macs,
        "params_before": int(before_report.params),
        "params_after": int(after_report.params),
        "bops_before": int(before_report.total_bops),
        "bops_pruned": int(pruned_report.total_bops),
        "bops_after": int(after_report.total_bops),
        "bops_ratio": float(bops_ratio(before_report, after_report)),
        "size_mb_before": float(before_report.size_mb),
        "size_mb_after": float(after_report.size_mb),
        "removed_channels": {r: len(c) for r, c in removal.items()},
        "layers": layers,
        "bits": {n: {"weight": b, "activation": b} for n, b in bits.items()},
        "metric": task.metric,
        "metrics": {k: {m: float(v) for m, v in d.items()} for k, d in metrics.items()},
        "final_scores": {m: float(v) for m, v in metrics["quantised"].items()},  # of the returned model
        "evolution": evolution,
        "timings": {k: round(v, 3) for k, v in timings.items()},
    }
    return model, details


def _layer_shapes(model: "nn.Module") -> Dict[str, Tuple[int, int]]:
    from .quantization import quantisable_layers

    return {n: (int(layer_channels(m, True)), int(layer_channels(m, False))) for n, m in quantisable_layers(model)}


def _report_metric(on_step: Optional[StepFn], phase: str, step: int, scores: Mapping[str, float], metric: str) -> None:
    if on_step is not None:
        on_step({"phase": phase, "step": step, "metric": float(scores.get(metric, float("nan"))),
                 "metric_name": metric,  # the plot's title (a BSDM denoiser without a reference: "fit", not "auc")
                 "eval_loss": float(scores.get("loss", float("nan")))})
