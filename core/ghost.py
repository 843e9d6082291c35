"""GHOST: hybrid quantisation with guided one-to-one self-teaching distillation (METHODS.md section 5).

    student, details = compress_ghost(model, task, GhostParams(), JobMonitor())

1. Hybrid bits. For every conv and linear layer, for n = 2..max_bits, 1-D
   k-means with 2^n centres on the layer's flattened weights gives the
   distortion d_n = inertia / N * 1e6; the layer gets the smallest n with
   d_n < threshold, else max_bits. Weights and activations of a layer get the
   same bits (`kmeans_distortion`, `hybrid_bits`).
2. The student is the model itself with those bits (DoReFa, core/quantization.py;
   activation ranges calibrated on training data, signed where inputs go
   negative, so SiLU and the like keep their negative part). The teacher is
   a full-precision copy of the same model, frozen (eval mode, no gradient).
3. One-to-one self-teaching (`SelfTeaching`): at each distillation point i,
   q_i = BN(Linear(GAP(F_t,i))), k_i = ReLU(BN(Linear(GAP(F_s,i)))),
   logit = k.q / sqrt(d) with d = projection_dim (128); a hard Gumbel-sigmoid
   switch m (straight-through, tau 1, no noise at eval) decides per sample and
   point whether the teacher teaches; v = normalise(mean_c F^2) is the spatial
   attention; L_kd = sum_i mean_b[m_b,i mean_hw (v_s,i - v_t,i)^2].
   Loss = task loss + distillation_weight (400) * L_kd.

Where we depart from the paper or its public code, and why:

- The query/key projections are trained (they are in the optimiser); the
  public code never gives them to it, a slip METHODS.md asks us to fix.
  Note what that implies: the switch's only training signal is L_kd, whose
  gradient with respect to m is the (non-negative) attention distance, so
  the projections learn to turn teaching *off*. With the default budget the
  drift is slow (the distances are small: on a ResNet-20 the share of
  switches on went from 0.48 to 0.33 over 300 steps and then held as the
  learning rate decayed); `teach_rate` in the history shows it, so a run
  where distillation switched itself off can be seen.
- The key sees the student's pooled features through a stop-gradient: the
  switch trains the projections, it does not reshape the student's features
  to escape teaching (with a gradient there, L_kd would push the student
  backbone towards features whose key turns the switch off).
- k-means: 1-D, our own (no scikit-learn here). Greedy k-means++ seeding
  (scikit-learn's default: 2 + ln k candidates per centre, the one that lowers
  the potential most is kept), then Lloyd iterations to convergence (on sorted
  data with cumulative sums, so an iteration costs O(k log N); in NumPy, whose
  small sequential steps are far cheaper than torch's). One seeding,
  not scikit-learn's n_init restarts. On layers with more than 20,000 weights
  the centres are fitted on a fixed-seed random subsample of 20,000 weights;
  the inertia, and so d_n, is always computed on all weights. Computed in
  float64, deterministic under the seed.
- Linear layers get hybrid bits too (METHODS.md names convs; our task models
  end in linear or 1x1 conv layers and the quantiser covers both alike).
- The search stops at the first n below the threshold, so d_n is recorded for
  n = 2..chosen only. The k-means codebook has 2^n levels, the DoReFa weight
  quantiser 2^n - 1 (symmetric): d_n chooses the bits, it is not the
  quantiser's own error. d_n is in absolute units, so the threshold means
  more bits for layers with larger weights (kaiming-initialised CIFAR
  ResNets typically get 8 bits everywhere at threshold 0.1; the paper's
  detectors have small weights).
- Distillation points: a model may name them with a `distillation_layers()`
  method returning module names. Otherwise the default, which works for any
  model: every module that is an element of an nn.Sequential / nn.ModuleList
  / nn.ModuleDict, has sub-modules with at least one conv or linear layer,
  runs once per forward and returns a single 4-D or 5-D tensor with at least
  4 spatial positions and 4 channels (fewer channels: a prediction map such as
  a head's logit, not a feature map); only the outermost such modules are
  kept (a stage, not also its blocks). That is the residual blocks of a ResNet (ResNetCifar:
  layer.0 .. layer.8) and the stages, FFMs, temporal difference modules,
  heads and review units of AR-CDNet. If there are none, every quantisable
  conv with such an output is a candidate. More than 12 candidates: 12 evenly
  spaced in execution order (first and last included). The paper distils the
  detector's neck outputs; there is no neck in general.
- Feature maps: 4-D (B, C, H, W) as they are; 5-D (B, C, D, H, W) with depth
  folded into channels (B, C*D, H, W); anything else is skipped. A named
  module that runs more than once per forward is distilled at its last call.
- Optimiser: SGD, momentum 0.9, Nesterov, weight decay 5e-4, learning rate
  `lr` with cosine decay to 0 over `steps` (the paper trains YOLO detectors
  with their own recipe; PIC-PQ's SGD recipe is the project's common one).
  The student's batch norms train (batch statistics), the teacher's are in
  eval mode (running statistics).
- The Gumbel noise, the projections' initialisation and the k-means
  subsampling come from generators seeded with `seed`, not from torch's global
  random state.
"""
from __future__ import annotations

import copy
import math
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .errors import RSLabError
from .job import JobMonitor
from .quantization import (MAX_BITS, MIN_BITS, apply_bit_plan, calibrate_activations, is_quantised,
                           quantisable_layers)
from .seeding import seeded_global_generator

FIT_SAMPLE = 20_000  # weights the k-means centres are fitted on, at most
LLOYD_ITERATIONS = 300  # upper bound; 1-D Lloyd usually stops (no point changes cluster) far sooner
MAX_POINTS = 12  # distillation points chosen by the default rule, at most
MIN_SPATIAL = 4  # a feature map needs this many positions for its spatial attention to mean anything
MIN_CHANNELS = 4  # default points: maps with fewer channels are predictions (logits), not features
REPORT_EVERY = 10  # steps between on_step reports
StepFn = Callable[[Dict[str, float]], None]


@dataclass(frozen=True)
class GhostParams:
    threshold: float = 0.1  # k-means distortion threshold on d_n = inertia / N * 1e6
    distillation_weight: float = 400.0
    steps: int = 300  # QAT + distillation iterations (0: quantise and calibrate only)
    batch_size: int = 32
    lr: float = 0.01  # SGD momentum 0.9 Nesterov, weight decay 5e-4, cosine decay to 0
    projection_dim: int = 128
    seed: int = 0
    max_bits: int = 8
    eval_every: int = 0  # also score the student every this many steps (0: only before and after training)

    def __post_init__(self) -> None:
        if not (math.isfinite(self.threshold) and self.threshold > 0):
            raise RSLabError(f"the GHOST distortion threshold must be positive, got {self.threshold}")
        if not (math.isfinite(self.distillation_weight) and self.distillation_weight >= 0):
            raise RSLabError(f"the distillation weight cannot be negative, got {self.distillation_weight}")
        if int(self.steps) != self.steps or self.steps < 0:
            raise RSLabError(f"GHOST steps must be a whole number >= 0, got {self.steps}")
        if int(self.batch_size) != self.batch_size or self.batch_size < 2:
            raise RSLabError(f"the GHOST batch size must be at least 2 (the switch has batch norms), got {self.batch_size}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise RSLabError(f"the learning rate must be positive, got {self.lr}")
        if int(self.projection_dim) != self.projection_dim or self.projection_dim < 1:
            raise RSLabError(f"the projection dimension must be at least 1, got {self.projection_dim}")
        if int(self.seed) != self.seed or self.seed < 0:
            raise RSLabError(f"the seed must be a whole number >= 0, got {self.seed}")
        if int(self.max_bits) != self.max_bits or not MIN_BITS <= self.max_bits <= MAX_BITS:
            raise RSLabError(f"GHOST's maximum bit width must be {MIN_BITS} to {MAX_BITS}, got {self.max_bits}")
        if int(self.eval_every) != self.eval_every or self.eval_every < 0:
            raise RSLabError(f"eval_every must be a whole number >= 0, got {self.eval_every}")


# --- hybrid bits: 1-D k-means ------------------------------------------------------------


def _kmeans_1d(x: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """Sorted centres of 1-D k-means on the sorted float64 vector `x` (greedy k-means++, then Lloyd).

    Fewer than k centres come back when x has fewer than k distinct values (the inertia is then 0).
    NumPy rather than torch: thousands of small sequential steps, where torch's per-op threading
    costs far more than the arithmetic on a busy machine.
    """
    n = x.size
    first = int(rng.integers(n))
    centres = [x[first]]
    d2 = (x - x[first]) ** 2
    trials = 2 + int(math.log(k))
    for _ in range(1, k):
        total = d2.sum()
        if total <= 0:  # every point sits on a centre already
            break
        idx = np.minimum(np.searchsorted(np.cumsum(d2), rng.random(trials) * total, side="right"), n - 1)
        cand = np.minimum(d2[None, :], (x[None, :] - x[idx][:, None]) ** 2)
        best = int(np.argmin(cand.sum(1)))
        centres.append(x[idx[best]])
        d2 = cand[best]
    c = np.sort(np.asarray(centres))
    if c.size == 1:
        return np.array([x.mean()])
    csum = np.concatenate([[0.0], np.cumsum(x)])
    split = None
    for _ in range(LLOYD_ITERATIONS):
        new_split = np.searchsorted(x, (c[1:] + c[:-1]) / 2)  # points below a midpoint go left
        if split is not None and np.array_equal(new_split, split):
            break
        split = new_split
        starts = np.concatenate([[0], split])
        ends = np.concatenate([split, [n]])
        counts = ends - starts
        sums = csum[ends] - csum[starts]
        c = np.sort(np.where(counts > 0, sums / np.maximum(counts, 1), c))  # an empty cluster keeps its centre
    return c


def _inertia(x: np.ndarray, centres: np.ndarray) -> float:
    """Sum of squared distances of the points `x` to their nearest centre (sorted `centres`)."""
    if centres.size == 1:
        return float(((x - centres[0]) ** 2).sum())
    label = np.searchsorted((centres[1:] + centres[:-1]) / 2, x)
    return float(((x - centres[label]) ** 2).sum())


def kmeans_distortion(weights: Tensor, bits: int, seed: int = 0) -> float:
    """GHOST's d_n for n = `bits`: inertia of 1-D k-means with 2^n centres, / N * 1e6.

    The centres are fitted on at most 20,000 weights (a fixed-seed subsample), the inertia is over all.
    """
    x = weights.detach().reshape(-1).cpu().double().numpy()
    if x.size == 0:
        raise RSLabError("k-means needs at least one weight")
    if not np.isfinite(x).all():
        raise RSLabError("the weights contain NaN or infinite values")
    if int(bits) < 1:
        raise RSLabError(f"k-means needs at least 1 bit (2 centres), got {bits}")
    rng = np.random.default_rng(int(seed))
    fit = x
    if x.size > FIT_SAMPLE:
        fit = x[rng.permutation(x.size)[:FIT_SAMPLE]]
    centres = _kmeans_1d(np.sort(fit), 2 ** int(bits), rng)
    return _inertia(x, centres) / x.size * 1e6


def hybrid_search(model: nn.Module, threshold: float, max_bits: int = MAX_BITS, seed: int = 0,
                  monitor: Optional[JobMonitor] = None) -> Dict[str, Dict[str, Any]]:
    """{layer: {"bits": n, "distortion": {"2": d_2, ..., str(n): d_n}}} for every conv and linear layer."""
    if not MIN_BITS <= int(max_bits) <= MAX_BITS:
        raise RSLabError(f"the maximum bit width must be {MIN_BITS} to {MAX_BITS}, got {max_bits}")
    if not threshold > 0:
        raise RSLabError(f"the distortion threshold must be positive, got {threshold}")
    layers = quantisable_layers(model)
    if not layers:
        raise RSLabError("the model has no conv or linear layers to quantise")
    result: Dict[str, Dict[str, Any]] = {}
    for index, (name, module) in enumerate(layers):
        if monitor is not None:
            monitor.step(index / len(layers), f"k-means bit search: {name}")
        distortion: Dict[str, float] = {}
        chosen = int(max_bits)
        for n in range(MIN_BITS, int(max_bits) + 1):
            d = kmeans_distortion(module.weight, n, seed)
            distortion[str(n)] = d
            if d < threshold:
                chosen = n
                break
        result[name] = {"bits": chosen, "distortion": distortion}
    return result


def hybrid_bits(model: nn.Module, threshold: float, max_bits: int = MAX_BITS, seed: int = 0) -> Dict[str, int]:
    """Bits per conv and linear layer: the smallest n in 2..max_bits with d_n < threshold, else max_bits."""
    return {name: entry["bits"] for name, entry in hybrid_search(model, threshold, max_bits, seed).items()}


# --- one-to-one self-teaching ------------------------------------------------------------


def as_feature_map(f: Tensor) -> Optional[Tensor]:
    """(B, C, H, W) view of a feature map: 4-D as it is, 5-D with depth folded into channels; else None.

    Per-pixel (token) models such as the BSDM denoiser have 2-D features (tokens, C) with no
    spatial extent; they are viewed as (B, 1, C, 1), so the "spatial" attention becomes the
    normalised energy over the C features and the switch sees the token's mean feature. This is
    our extension for the plugin's spectral model (GHOST distils image detectors only), used only
    where a model names its 2-D distillation layers (`distillation_layers()`).
    """
    if not isinstance(f, Tensor) or not f.is_floating_point():
        return None
    if f.dim() == 2:
        return f[:, None, :, None]
    if f.dim() == 4:
        return f
    if f.dim() == 5:
        b, c, d, h, w = f.shape
        return f.reshape(b, c * d, h, w)
    return None


def spatial_attention(f: Tensor) -> Tensor:
    """v = normalise(mean_c F^2): (B, H*W), unit L2 norm per sample (4-D or 5-D input)."""
    fm = as_feature_map(f)
    if fm is None:
        raise RSLabError(f"spatial attention needs a 2-D, 4-D or 5-D feature map, got shape {tuple(f.shape)}")
    return F.normalize(fm.pow(2).mean(1).flatten(1), dim=1)


def gumbel_sigmoid_switch(logit: Tensor, tau: float = 1.0, noise: bool = True,
                          generator: Optional[torch.Generator] = None) -> Tensor:
    """Hard 0/1 switch with a straight-through gradient: forward (sigmoid((logit + g)/tau) > 0.5),
    backward d sigmoid; g is logistic noise (the difference of two Gumbels), none when `noise` is False."""
    z = logit
    if noise:
        u = torch.rand(logit.shape, generator=generator, dtype=logit.dtype).to(logit.device)
        u = u.clamp(1e-6, 1 - 1e-6)
        z = logit + torch.log(u) - torch.log1p(-u)
    soft = torch.sigmoid(z / tau)
    hard = (soft > 0.5).to(soft.dtype)
    return hard + (soft - soft.detach())  # exactly 0/1 forward (x - x is exactly 0), d soft backward


class SelfTeaching(nn.Module):
    """GHOST's switch and distillation loss over a list of distillation points.

    `channels[i]` is the channel count of point i's feature map (C, or C*D for 5-D maps).
    forward(student_feats, teacher_feats) -> (L_kd, [m_i]) with m_i the (B_i,) hard switches
    (straight-through in training, noise-free at eval). The teacher features should carry no gradient.
    """

    def __init__(self, channels: Sequence[int], projection_dim: int = 128, tau: float = 1.0,
                 generator: Optional[torch.Generator] = None) -> None:
        super().__init__()
        if not channels:
            raise RSLabError("self-teaching needs at least one feature map")
        d = int(projection_dim)
        self.channels = [int(c) for c in channels]
        self.projection_dim = d
        self.tau = float(tau)
        self.generator = generator
        self.query = nn.ModuleList(nn.Sequential(nn.Linear(c, d), nn.BatchNorm1d(d)) for c in self.channels)
        self.key = nn.ModuleList(nn.Sequential(nn.Linear(c, d), nn.BatchNorm1d(d), nn.ReLU()) for c in self.channels)

    def switch_logits(self, student_feats: Sequence[Tensor], teacher_feats: Sequence[Tensor]) -> List[Tensor]:
        """k_i . q_i / sqrt(d) per point, each (B_i,)."""
        logits = []
        for i, (fs, ft) in enumerate(zip(student_feats, teacher_feats)):
            gs = as_feature_map(fs).mean(dim=(2, 3)).detach()  # stop-gradient: see the module docstring
            gt = as_feature_map(ft).mean(dim=(2, 3)).detach()
            q = self.query[i](gt)
            k = self.key[i](gs)
            logits.append((k * q).sum(1) / math.sqrt(self.projection_dim))
        return logits

    def forward(self, student_feats: Sequence[Tensor], teacher_feats: Sequence[Tensor]) -> Tuple[Tensor, List[Tensor]]:
        if len(student_feats) != len(self.channels) or len(teacher_feats) != len(self.channels):
            raise RSLabError(f"self-teaching was built for {len(self.channels)} feature maps, "
                             f"got {len(student_feats)} student and {len(teacher_feats)} teacher maps")
        for i, (fs, ft) in enumerate(zip(student_feats, teacher_feats)):
            if fs.shape != ft.shape:
                raise RSLabError(f"feature map {i}: student shape {tuple(fs.shape)} differs from the "
                                 f"teacher's {tuple(ft.shape)}")
        logits = self.switch_logits(student_feats, teacher_feats)
        total = student_feats[0].new_zeros(())
        switches = []
        for fs, ft, logit in zip(student_feats, teacher_feats, logits):
            m = gumbel_sigmoid_switch(logit, self.tau, noise=self.training, generator=self.generator)
            distance = (spatial_attention(fs) - spatial_attention(ft.detach())).pow(2).mean(1)  # (B,)
            total = total + (m * distance).mean()
            switches.append(m)
        return total, switches


# --- distillation points -----------------------------------------------------------------


def _probe(model: nn.Module, inputs: Sequence[Any]) -> Tuple[List[str], Dict[str, int], Dict[str, Any]]:
    """Run the model once; (module names in order of completion, calls per module, last output)."""
    order: List[str] = []
    calls: Dict[str, int] = {}
    outputs: Dict[str, Any] = {}
    hooks = []
    for name, module in model.named_modules():
        if not name:
            continue

        def hook(mod, args, output, name=name):
            if name not in calls:
                order.append(name)
            calls[name] = calls.get(name, 0) + 1
            outputs[name] = output

        hooks.append(module.register_forward_hook(hook))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(*inputs)
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return order, calls, outputs


def _usable(output: Any, min_channels: int = 1) -> bool:
    fm = as_feature_map(output) if isinstance(output, Tensor) else None
    return fm is not None and fm.shape[-2] * fm.shape[-1] >= MIN_SPATIAL and fm.shape[1] >= min_channels


def distillation_points(model: nn.Module, example_inputs: Sequence[Any],
                        max_points: int = MAX_POINTS) -> Tuple[List[str], List[int], List[str]]:
    """(module names, channel counts, skipped names) of the feature maps to distil (see the module docstring)."""
    order, calls, outputs = _probe(model, example_inputs)
    modules = dict(model.named_modules())
    skipped: List[str] = []
    named = getattr(model, "distillation_layers", None)
    if callable(named):
        names = list(named())
        unknown = [n for n in names if n not in modules]
        if unknown:
            raise RSLabError(f"distillation_layers() names modules the model does not have: {', '.join(unknown[:5])}")
        chosen = []
        for n in names:
            (chosen if n in outputs and _usable(outputs[n]) else skipped).append(n)
    else:
        containers = (nn.Sequential, nn.ModuleList, nn.ModuleDict)
        quantisable = {n for n, _ in quantisable_layers(model)}
        candidates = []
        for name in order:
            parent = modules[name.rsplit(".", 1)[0]] if "." in name else model
            has_layers = any(q.startswith(name + ".") for q in quantisable)
            if (isinstance(parent, containers) and has_layers and calls[name] == 1
                    and _usable(outputs[name], MIN_CHANNELS)):
                candidates.append(name)
        chosen = [n for n in candidates if not any(n.startswith(c + ".") for c in candidates)]
        if not chosen:  # no blocks: the quantisable convs themselves
            chosen = [n for n in order if n in quantisable and calls[n] == 1 and _usable(outputs[n], MIN_CHANNELS)]
        if len(chosen) > max_points:
            picks = sorted({round(i * (len(chosen) - 1) / (max_points - 1)) for i in range(max_points)})
            chosen = [chosen[i] for i in picks]
    if not chosen:
        raise RSLabError("found no 4-D or 5-D feature maps to distil in this model")
    channels = [int(as_feature_map(outputs[n]).shape[1]) for n in chosen]
    return chosen, channels, skipped


class _Capture:
    """Forward hooks that keep the latest output of each named module while `active`."""

    def __init__(self, model: nn.Module, names: Sequence[str]) -> None:
        modules = dict(model.named_modules())
        self.names = list(names)
        self.outputs: Dict[str, Tensor] = {}
        self.active = False
        self.hooks = []
        for name in self.names:
            def hook(mod, args, output, name=name):
                if self.active:
                    # a clone, so a later in-place op (ReLU(inplace=True)) cannot change what we distil
                    self.outputs[name] = output.clone()
            self.hooks.append(modules[name].register_forward_hook(hook))

    def take(self) -> List[Tensor]:
        missing = [n for n in self.names if n not in self.outputs]
        if missing:
            raise RSLabError(f"the forward pass did not run {', '.join(missing[:3])}")
        feats = [self.outputs[n] for n in self.names]
        self.outputs = {}
        return feats

    def remove(self) -> None:
        for h in self.hooks:
            h.remove()
        self.hooks = []


# --- the job -----------------------------------------------------------------------------


def _bops_summary(model: nn.Module, example: Sequence[Any]) -> Dict[str, float]:
    from .bops import count_bops

    hawq = count_bops(model, example, "hawq")
    ghost = count_bops(model, example, "ghost")
    return {"gbops": round(hawq.gbops, 6), "gbops_ghost_mode": round(ghost.gbops, 6), "size_mb": round(hawq.size_mb, 6)}


def _scores(task: Any, model: nn.Module) -> Dict[str, float]:
    return {k: float(v) for k, v in task.evaluate(model).items()}


def make_optimiser(student: nn.Module, teaching: SelfTeaching, params: GhostParams
                   ) -> Tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """SGD (momentum 0.9, Nesterov, weight decay 5e-4) over the student *and* the switch's query/key
    projections (the public code leaves the latter out), with cosine decay over `params.steps`."""
    optimiser = torch.optim.SGD(list(student.parameters()) + list(teaching.parameters()), lr=params.lr,
                                momentum=0.9, nesterov=True, weight_decay=5e-4)
    return optimiser, torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, T_max=max(1, params.steps))


def compress_ghost(model: nn.Module, task: Any, params: GhostParams, monitor: JobMonitor,
                   on_step: Optional[StepFn] = None,
                   teacher: Optional[nn.Module] = None) -> Tuple[nn.Module, Dict[str, Any]]:
    """GHOST on a float CPU model: hybrid bits, calibration, QAT with guided self-distillation.

    The model itself becomes the student (quantised in place) and is returned with a JSON-ready details
    dict. The teacher is a frozen deep copy of the float model, or `teacher` when given (a float model
    of the same architecture; it is used in eval mode and never changed).
    `on_step` gets {"phase": "ghost", "step", "loss", "kd", "teach_rate", "lr"} every 10 steps (means
    over those steps) and {"phase": "ghost", "step", "metric", "metric_name"} when the student is scored.
    """
    if not isinstance(params, GhostParams):
        raise RSLabError("compress_ghost needs GhostParams")
    if is_quantised(model):
        raise RSLabError("GHOST starts from a full-precision model; this one is already quantised")
    timings: Dict[str, float] = {}
    t0 = time.perf_counter()
    monitor.step(0.0, "GHOST: preparing the teacher")
    if teacher is None:
        teacher = copy.deepcopy(model)
    teacher_was_training = teacher.training
    try:
        teacher.eval()
        return _compress(model, teacher, task, params, monitor, on_step, timings, t0)
    finally:
        teacher.train(teacher_was_training)


def _compress(model: nn.Module, teacher: nn.Module, task: Any, params: GhostParams, monitor: JobMonitor,
              on_step: Optional[StepFn], timings: Dict[str, float], t0: float) -> Tuple[nn.Module, Dict[str, Any]]:
    example = task.example_inputs()
    points, channels, skipped = distillation_points(teacher, example)
    missing = sorted(set(points) - {name for name, _ in model.named_modules()})
    if missing:
        raise RSLabError(f"the teacher and the student differ: the student has no {', '.join(missing[:3])}")
    bops_before = _bops_summary(model, example)

    # 1. hybrid bits
    t = time.perf_counter()
    search = hybrid_search(model, params.threshold, params.max_bits, params.seed, monitor.sub(0.0, 0.1))
    plan = {name: {"weight": e["bits"], "activation": e["bits"]} for name, e in search.items()}
    apply_bit_plan(model, plan)
    timings["ghost_bits"] = time.perf_counter() - t

    # 2. activation ranges
    t = time.perf_counter()
    monitor.step(0.1, "GHOST: calibrating activation ranges")
    calibrate_activations(model, task.calibration_batches())
    timings["ghost_calibration"] = time.perf_counter() - t

    def emit(entry: Dict[str, Any]) -> None:
        if on_step is not None:
            on_step(dict(entry))

    evaluations: List[Dict[str, Any]] = []

    def score(step: int) -> None:
        t = time.perf_counter()
        scores = _scores(task, model)
        timings["ghost_evaluation"] = timings.get("ghost_evaluation", 0.0) + time.perf_counter() - t
        evaluations.append({"step": step, **scores})
        emit({"phase": "ghost", "step": step, "metric": scores[task.metric], "metric_name": task.metric})

    monitor.step(0.12, "GHOST: scoring the quantised model before distillation")
    score(0)

    # 3. QAT with guided self-distillation
    generator = torch.Generator().manual_seed(params.seed)
    with seeded_global_generator(params.seed):  # the projection heads' initial weights
        teaching = SelfTeaching(channels, params.projection_dim, generator=generator)
    optimiser, schedule = make_optimiser(model, teaching, params)
    student_capture = _Capture(model, points)
    teacher_capture = _Capture(teacher, points)
    history: List[Dict[str, float]] = []
    loss_history: List[float] = []
    kd_history: List[float] = []
    rate_history: List[float] = []
    window: List[Tuple[float, float, float]] = []
    train = monitor.sub(0.13, 0.97)
    t = time.perf_counter()
    try:
        model.train()
        teaching.train()
        for step in range(1, params.steps + 1):
            train.step((step - 1) / params.steps, f"GHOST: distillation step {step}/{params.steps}")
            batch = task.batch(params.batch_size)
            inputs = batch[0]
            teacher_capture.active = True
            with torch.no_grad():
                teacher(*inputs)
            teacher_capture.active = False
            student_capture.active = True
            task_loss = task.loss(model, batch)
            student_capture.active = False
            kd, switches = teaching(student_capture.take(), teacher_capture.take())
            loss = task_loss + params.distillation_weight * kd
            if not torch.isfinite(loss):
                raise RSLabError(f"GHOST training diverged at step {step} (loss {float(loss)}); "
                                 "try a lower learning rate or distillation weight")
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            lr = optimiser.param_groups[0]["lr"]
            schedule.step()
            rate = float(torch.cat([m.detach().reshape(-1) for m in switches]).mean())
            loss_history.append(float(task_loss.detach()))
            kd_history.append(float(kd.detach()))
            rate_history.append(rate)
            window.append((loss_history[-1], kd_history[-1], rate))
            if step % REPORT_EVERY == 0 or step == params.steps:
                entry = {"phase": "ghost", "step": step,
                         "loss": sum(w[0] for w in window) / len(window),
                         "kd": sum(w[1] for w in window) / len(window),
                         "teach_rate": sum(w[2] for w in window) / len(window), "lr": lr}
                window = []
                history.append(entry)
                emit(entry)
            if params.eval_every and step % params.eval_every == 0 and step != params.steps:
                score(step)
                model.train()
    finally:
        student_capture.remove()
        teacher_capture.remove()
        model.eval()
    timings["ghost_training"] = time.perf_counter() - t
    if params.steps:
        train.step(1.0, "GHOST: scoring the distilled model")
        score(params.steps)
    monitor.step(1.0, "GHOST: done")
    timings["ghost_total"] = time.perf_counter() - t0

    details: Dict[str, Any] = {
        "method": "ghost",
        "params": asdict(params),
        "bits": {name: e["bits"] for name, e in search.items()},
        "distortion": {name: e["distortion"] for name, e in search.items()},
        "distillation_layers": points,
        "distillation_channels": channels,
        "skipped_layers": skipped,
        "bops_before": bops_before,
        "bops_after": _bops_summary(model, example),
        "history": history,
        "loss_history": loss_history,
        "kd_history": kd_history,
        "teach_rate_history": rate_history,
        "evaluations": evaluations,
        "metric": task.metric,
        "final_scores": {k: v for k, v in evaluations[-1].items() if k != "step"},  # of the returned model
        "timings": timings,
    }
    return model, details
