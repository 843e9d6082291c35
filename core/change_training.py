"""Training AR-CDNet on change pairs (METHODS.md section 1).

AdamW (lr 5e-4, weight decay 1e-2), a 200-iteration linear warm-up from
0.1 x lr, then poly decay (power 0.9); batch 8; random crops, flips on both
axes and a random swap of the two dates; loss BCE + (1 - Dice) on the final
map and on m2..m5 plus the uncertainty BCE. Every `eval_every` iterations
(one "epoch") the model is evaluated on the validation pairs (F1 from one
confusion matrix over all their pixels) and the best checkpoint is kept with
its model card.

Departure from the paper: crops are also turned by random multiples of 90
degrees. Our training sets are a few dozen tiles, and overhead imagery has no
preferred orientation.
"""
from __future__ import annotations

import datetime as _dt
import os
import tempfile
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from .bands import band_descriptions
from .change_data import (ChangePair, PairSampler, band_views, check_pair, default_normalisation, pair_shapes,
                          read_pair)
from .change_model import TASK, normalise, predict_pair, trained_bands_hint
from .change_reference import ReferenceValues, check_coding, coding_note, survey_reference
from .checkpoint import ModelCard, build_model, load_checkpoint, save_checkpoint
from .device import describe_device, load_optimisers, select_device
from .errors import RSLabError
from .job import CancelledFn, JobMonitor, JobResult, ProgressFn
from .metrics import Confusion
from .outputs import check_output_paths
from .seeding import seeded_global_generator
from .tiling import TileSpec, tile_grid

CROP_SAMPLING = {"auto": None, "uniform": False, "labelled": True}  # -> PairSampler's `centred`
EpochFn = Callable[[Dict[str, float]], None]

# the network widths offered by name: (encoder base, decoder channels), and AR-CDNet's parameter count with them
# on 3 bands (tests/test_arcdnet.py checks both); "narrow" is the shipped default's
WIDTH_PRESETS: Dict[str, Tuple[int, int]] = {"narrow": (32, 32), "full": (64, 64)}
WIDTH_PARAMETERS: Dict[str, str] = {"narrow": "3.6 M", "full": "14.3 M"}


@dataclass(frozen=True)
class TrainChangeParams:
    iterations: int = 2000
    batch_size: int = 8
    crop: int = 256
    lr: float = 5e-4
    weight_decay: float = 1e-2
    warmup: int = 200
    eval_every: int = 100
    base: int = 32
    channels: int = 32
    threshold: float = 0.5
    seed: int = 0
    init_checkpoint: Optional[str] = None
    optimiser: str = "adamw"  # "adamw" (METHODS.md) or "sgd" (Nesterov 0.9, for fine-tuning; use lr ~0.01)
    jitter: float = 0.0  # probability of per-date brightness jitter (see PairSampler)
    paste: float = 0.0  # probability of pasting another crop's changes (see PairSampler)
    label_coding: str = "binary"  # how the label rasters read: core/change_reference.py
    bands: Optional[Tuple[int, ...]] = None  # 1-based bands of both dates to train on, in this order; None = all
    # where crops are drawn: "auto" (around labelled pixels for partial labels, else anywhere), "uniform", "labelled"
    crop_sampling: str = "auto"
    device: str = "auto"  # "auto" (CUDA when torch sees a GPU), "cpu" or "cuda[:N]"; the card records the one used

    def __post_init__(self) -> None:
        for name in ("iterations", "batch_size", "eval_every"):
            if getattr(self, name) < 1:
                raise RSLabError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.crop < 32 or self.crop % 32:
            raise RSLabError(f"the training crop must be a multiple of 32 (at least 32), got {self.crop}")
        if self.batch_size == 1 and self.crop < 64:
            # the deepest features of a 32-pixel crop are 1 x 1: training BatchNorm needs more than one value
            raise RSLabError("a batch of one crop needs crops of at least 64 pixels; use a larger crop or batch")
        if not 0 < self.lr < 1:
            raise RSLabError(f"the learning rate must be between 0 and 1, got {self.lr}")
        if self.optimiser not in ("adamw", "sgd"):
            raise RSLabError(f"the optimiser must be 'adamw' or 'sgd', got {self.optimiser!r}")
        if not 0 < self.threshold < 1:
            raise RSLabError(f"the threshold must be between 0 and 1, got {self.threshold}")
        check_coding(self.label_coding)
        if self.crop_sampling not in CROP_SAMPLING:
            raise RSLabError(f"crop_sampling must be one of {', '.join(CROP_SAMPLING)}, got {self.crop_sampling!r}")
        if self.bands is not None and not self.bands:
            raise RSLabError("the band list is empty; give None to train on all bands")


@dataclass
class TrainChangeResult(JobResult):
    checkpoint: str = ""
    best_f1: float = 0.0
    best_iteration: int = 0
    history: List[Dict[str, float]] = field(default_factory=list)
    notes: List[str] = field(default_factory=list)


def learning_rate(iteration: int, params: TrainChangeParams) -> float:
    """Warm-up from 0.1 x lr over `warmup` iterations, then poly decay with power 0.9.

    Short runs (fine-tuning, trials) would never leave a 200-iteration
    warm-up: it is capped at a fifth of the run.
    """
    warmup = min(params.warmup, params.iterations // 5)
    if iteration < warmup:
        return params.lr * (0.1 + 0.9 * iteration / warmup)
    span = max(1, params.iterations - warmup)
    return params.lr * (1 - (iteration - warmup) / span) ** 0.9


VALIDATION_TILE = TileSpec(512, 128)  # evaluate's windows


def evaluate(model: Any, pairs: Sequence[ChangePair], mean: Sequence[float], std: Sequence[float], device: Any,
             threshold: float = 0.5,
             tile: TileSpec = VALIDATION_TILE, coding: str = "binary",
             check: Optional[Callable[[], None]] = None,
             progress: Optional[Callable[[int, int], None]] = None) -> Dict[str, float]:
    """Scores over all labelled pixels of `pairs`, predicted by windows (centre-cropped) so any size fits.

    `changed` counts the labelled changed pixels (F1 is 0 without any, whatever the model); `check` (a
    cancel check) runs before each window, so a cancel during a long validation pass is not left waiting;
    `progress(done, total)` hears of each window (a pass over a 3000 x 3000 pair took 30 s without a word).
    """
    confusion = Confusion()
    was_training = model.training
    model.eval()
    grids = [(pair, tile_grid(*check_pair(pair)[1:], tile)) for pair in pairs]
    total, done = sum(len(grid) for _, grid in grids), 0
    for pair, grid in grids:
        for t in grid:
            if check is not None:
                check()
            if progress is not None:
                progress(done, total)
            done += 1
            a, b, y, v = read_pair(pair, t.read, coding, fill=mean)  # nodata as detection feeds it
            prob, _ = predict_pair(model, a, b, mean, std, device)
            r, c = int(t.core.row_off - t.read.row_off), int(t.core.col_off - t.read.col_off)
            core = (slice(r, r + int(t.core.height)), slice(c, c + int(t.core.width)))
            confusion.update(prob[core] >= threshold, y[core] > 0, v[core])
    model.train(was_training)
    return dict(confusion.scores(), changed=confusion.tp + confusion.fn)


TRAIN_PIXEL_COST = 3.0  # a training step's forward and backward over a crop pixel, in validation forwards per pixel


def validation_pixels(pairs: Sequence[ChangePair], tile: TileSpec = VALIDATION_TILE) -> int:
    """The pixels one validation pass puts through the model (its windows overlap)."""
    return sum(int(t.read.width * t.read.height) for pair in pairs for t in tile_grid(*check_pair(pair)[1:], tile))


class TrainingProgress:
    """Where the progress bar stands during training, in proportion to the work done.

    The bar went by iterations alone: on a large validation pair (3000 x 3000)
    each validation pass took minutes at one fixed position, and the last one
    ran at 100 %. Training steps and validation passes now share it by their
    pixels (a step's pixels count TRAIN_PIXEL_COST times: forward and backward).
    """

    def __init__(self, params: "TrainChangeParams", validation: int) -> None:
        self.step_cost = TRAIN_PIXEL_COST * params.batch_size * params.crop ** 2
        self.validation_cost = float(validation)
        passes = sum(1 for i in range(params.iterations)
                     if (i + 1) % params.eval_every == 0 or i + 1 == params.iterations)
        self.total = params.iterations * self.step_cost + passes * self.validation_cost or 1.0
        self.passes_done = 0

    def at(self, iterations_done: int, validation_done: float = 0.0) -> float:
        """The fraction after `iterations_done` steps, the passes validated so far and `validation_done` of
        the current pass."""
        work = iterations_done * self.step_cost + (self.passes_done + validation_done) * self.validation_cost
        return min(1.0, work / self.total)

    def validated(self) -> None:
        self.passes_done += 1


def crop_batch(sampler: PairSampler, size: int, mean: Sequence[float], std: Sequence[float], device: Any = "cpu"
               ) -> Tuple[Any, Any, Any, Any]:
    """`size` crops from `sampler` as the model is fed them (training, and compression's fine-tuning): the
    before and after images normalised as detection normalises them (change_model.normalise), the labels and
    the validity masks as (N, 1, h, w) tensors on `device`."""
    import torch

    crops = [sampler.sample() for _ in range(size)]
    a, b, y, v = (np.stack([c[i] for c in crops]) for i in range(4))
    a, b = (torch.from_numpy(normalise(x, mean, std)).to(device) for x in (a, b))
    return a, b, torch.from_numpy(y)[:, None].to(device), torch.from_numpy(v)[:, None].float().to(device)


def train_change_detector(
    train_pairs: Sequence[ChangePair],
    val_pairs: Sequence[ChangePair],
    output_path: str,
    params: TrainChangeParams = TrainChangeParams(),
    progress: Optional[ProgressFn] = None,
    cancelled: Optional[CancelledFn] = None,
    on_epoch: Optional[EpochFn] = None,
    data_description: str = "",
) -> TrainChangeResult:
    """Train, keep the checkpoint with the best validation F1, write it to `output_path`.

    With `params.bands` both dates of every pair are read through VRTs of those bands (core/bands.py),
    as `detect_changes` reads them with its `bands`; the card records them (`trained_bands`).
    """
    check_output_paths({"checkpoint": output_path}, training_inputs(train_pairs, val_pairs, params.init_checkpoint))
    if params.bands:
        with tempfile.TemporaryDirectory(prefix="rslab-train-bands-") as workdir:
            views = band_views(list(train_pairs) + list(val_pairs), params.bands, workdir)
            return _train(views[:len(train_pairs)], views[len(train_pairs):], output_path, params, progress,
                          cancelled, on_epoch, data_description)
    return _train(train_pairs, val_pairs, output_path, params, progress, cancelled, on_epoch, data_description)


def training_inputs(train_pairs: Sequence[ChangePair], val_pairs: Sequence[ChangePair],
                    init_checkpoint: Optional[str] = None) -> Dict[str, str]:
    """The files a training run reads, by what they are, for check_output_paths."""
    inputs = {"starting checkpoint": init_checkpoint or ""}
    for pair in list(train_pairs) + list(val_pairs):
        for role in ("before", "after", "label"):
            what, path = f"{role} {'raster' if role == 'label' else 'image'} of {pair.name}", getattr(pair, role)
            if what in inputs and inputs[what] != path:  # one file name in a training and a validation folder
                what = f"{what} ({path})"
            inputs[what] = path
    return inputs


def _train(train_pairs, val_pairs, output_path, params, progress, cancelled, on_epoch, data_description):
    import torch

    from ..models.arcdnet import ArcdNet, arcdnet_loss

    monitor = JobMonitor(progress, cancelled)
    if not val_pairs:
        raise RSLabError("training needs at least one validation pair to choose the best checkpoint")
    init = load_checkpoint(params.init_checkpoint, task=TASK) if params.init_checkpoint else None
    if init is not None and init.card.compressed:
        # its pruned, quantised layers would train, but the checkpoint saved at the end (plain weights, a card
        # without bit widths) would not load: compression comes after fine-tuning
        raise RSLabError("the starting checkpoint is compressed (pruned and quantised); fine-tune its "
                         "full-precision model, then compress the result")
    device = select_device(params.device)
    labels = ReferenceValues()
    waiting = monitor.sub(0.0, 0.0)  # the data is read before the first iteration: cancel checks, no progress
    for label in dict.fromkeys(p.label for p in list(train_pairs) + list(val_pairs)):
        survey_reference(label, waiting, seen=labels, what="training labels")
    # stops on labels the coding cannot read, before any work
    note = coding_note(labels, params.label_coding, "training labels")
    band_count, _ = pair_shapes(train_pairs)
    val_bands = {check_pair(p)[0] for p in val_pairs}
    if val_bands != {band_count}:
        raise RSLabError(f"validation pairs have {sorted(val_bands)} bands, training pairs {band_count}")

    width_note = None
    if init is not None:
        if init.card.arguments.get("bands") != band_count:
            raise RSLabError(
                f"the starting checkpoint was trained for {init.card.arguments.get('bands')} bands, "
                f"the training data has {band_count}{trained_bands_hint(init.card)}"
            )
        model = build_model(init)
        mean, std = init.card.normalisation["mean"], init.card.normalisation["std"]
        arguments = dict(init.card.arguments)
        asked = {"base": params.base, "channels": params.channels}
        if any(arguments.get(k) != v for k, v in asked.items()):
            width_note = (f"the starting checkpoint fixes the network width (base {arguments.get('base')}, channels "
                          f"{arguments.get('channels')}); the width asked for (base {params.base}, channels "
                          f"{params.channels}) was not used")
    else:
        arguments = {"bands": band_count, "base": params.base, "channels": params.channels}
        with seeded_global_generator(params.seed):  # the initial weights
            model = ArcdNet(**arguments)
        mean, std = default_normalisation(train_pairs, band_count)
    # crops hold the band means where either date is nodata, as detection feeds the model (fill_nodata)
    sampler = PairSampler(train_pairs, params.crop, params.seed, params.jitter, params.paste, params.label_coding,
                          CROP_SAMPLING[params.crop_sampling], check=monitor.check, fill=mean)
    model.to(device).train()
    load_optimisers(monitor)  # The first optimiser imports torch._dynamo: listen for a cancel meanwhile.
    if params.optimiser == "sgd":  # the fine-tuning recipe of the compression code (PIC-PQ): SGD, Nesterov
        optimiser = torch.optim.SGD(model.parameters(), lr=params.lr, momentum=0.9, nesterov=True, weight_decay=5e-4)
    else:
        optimiser = torch.optim.AdamW(model.parameters(), lr=params.lr, weight_decay=params.weight_decay)

    result = TrainChangeResult(device=describe_device(device), timings=monitor.timings,
                               notes=[n for n in (note, width_note) if n])
    best_state: Optional[Dict] = None
    best_scores: Dict[str, float] = {}
    start = time.perf_counter()
    running: List[float] = []
    plan = TrainingProgress(params, validation_pixels(val_pairs))
    for iteration in range(params.iterations):
        monitor.step(plan.at(iteration), f"iteration {iteration + 1} of {params.iterations}")
        for group in optimiser.param_groups:
            group["lr"] = learning_rate(iteration, params)
        a, b, y, v = crop_batch(sampler, params.batch_size, mean, std, device)
        with monitor.timed("train"):
            outputs = model(a, b)
            loss, _ = arcdnet_loss(outputs, y, v)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
        running.append(float(loss.detach()))
        if (iteration + 1) % params.eval_every == 0 or iteration + 1 == params.iterations:
            with monitor.timed("validate"):
                scores = evaluate(model, val_pairs, mean, std, device, params.threshold, coding=params.label_coding,
                                  check=monitor.check, progress=lambda done, total: monitor.step(
                                      plan.at(iteration + 1, done / total),
                                      f"validating after iteration {iteration + 1}: window {done + 1} of {total}"))
            plan.validated()
            # validation pairs without a changed pixel score F1 0 whatever the model: the last state is kept
            keep = best_state is None or scores["f1"] > result.best_f1 or not scores["changed"]
            record = {"epoch": len(result.history) + 1, "iteration": iteration + 1,
                      "loss": float(np.mean(running)), "val_f1": scores["f1"], "val_iou": scores["iou"],
                      "lr": learning_rate(iteration, params), "seconds": time.perf_counter() - start,
                      "kept": keep}  # these weights are the ones kept so far
            running = []
            result.history.append(record)
            if keep:
                result.best_f1, result.best_iteration = scores["f1"], iteration + 1
                best_scores = scores
                best_state = {k: t.detach().cpu().clone() for k, t in model.state_dict().items()}
            if on_epoch is not None:
                on_epoch(record)
            monitor.step(plan.at(iteration + 1),  # by pixels, as every step: by iterations it stepped back
                         f"iteration {iteration + 1}: loss {record['loss']:.3f}, validation F1 {scores['f1']:.3f}")

    if not best_scores.get("changed"):
        result.notes.append("the validation pairs hold no changed pixel, so validation F1 cannot choose a "
                            "checkpoint: the last one is kept; validate on pairs with changes")
    # the bands' own descriptions (e.g. Sentinel-2's B02 ...) when the images carry them, so that detection can
    # tell a pair whose bands differ (core/bands.py band_order_note); else names by convention
    # (chosen bands without descriptions keep their numbers: bands 4, 3, 2 of a Landsat scene are no RGB)
    bands = band_descriptions(train_pairs[0].before) or (
        [f"band {b}" for b in params.bands] if params.bands else
        ["red", "green", "blue"] if sampler.bands == 3 else [f"band {i + 1}" for i in range(sampler.bands)])
    card = ModelCard(
        task=TASK,
        architecture="arcdnet",
        arguments=arguments,
        bands=bands,
        normalisation={"mean": [float(x) for x in mean], "std": [float(x) for x in std]},
        class_names=["no change", "change"],
        training={
            "data": data_description or ", ".join(p.name for p in train_pairs),
            "train_pairs": [p.name for p in train_pairs],
            "validation_pairs": [p.name for p in val_pairs],
            # the width trained is the starting checkpoint's when there is one (TrainChangeParams' is unused)
            "params": {**{k: v for k, v in asdict(params).items() if k not in ("init_checkpoint", "device")},
                       "base": arguments.get("base"), "channels": arguments.get("channels")},
            **({"started_from": {"file": os.path.basename(init.path), "description": init.card.description}}
               if init is not None else {}),
            "seconds": round(time.perf_counter() - start, 1),
            "device": result.device,
            "date": _dt.date.today().isoformat(),
        },
        metrics={"validation": {k: round(float(v), 4) for k, v in best_scores.items()},
                 "best_iteration": result.best_iteration},
        description="AR-CDNet change detector with online uncertainty (RS Lab)",
    )
    monitor.check()
    save_checkpoint(output_path, best_state, card)  # atomic: renamed into place when complete
    result.checkpoint = output_path
    monitor.done(f"best validation F1 {result.best_f1:.3f} at iteration {result.best_iteration}")
    return result
