"""What compression needs to know about a task: data, loss, score, example inputs.

PIC-PQ and GHOST are model-agnostic: they prune, quantise and fine-tune any
RS Lab model through one small interface, `CompressionTask`. Each task model
of the plugin has an adapter here:

- `classification` (the CIFAR ResNet benchmark): a `.npz` with x_train,
  y_train, x_test, y_test (uint8 images N x H x W x C, integer labels);
  score: accuracy in percent.
- `change_detection` (AR-CDNet): a folder laid out as A/, B/, label/; pairs
  listed in the checkpoint card's training data are used for fine-tuning, the
  others for the score (F1 in percent), or a `held_out` list picks them.
- `anomaly_detection` (BSDM denoiser): an ABU .mat scene (with its reference
  `map`) or a hyperspectral raster; the loss is BSDM's own (predict the pseudo
  background noise), the score AUC(D,F) of BSDM + RX in percent with a
  reference (metric "auc"), else the denoising fit, 100 x (1 - loss) (metric
  "fit").

`batch()` returns (inputs, target) where inputs is a tuple for model(*inputs).
"""
from __future__ import annotations

import os
from abc import ABC, abstractmethod
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from .checkpoint import Checkpoint, task_with_article
from .errors import RSLabError
from .metrics import rank_auc

Batch = Tuple[Tuple[Any, ...], Any]


CALIBRATION_SEED = 12345

# The data each task compresses with, as messages and the panel's data field describe it.
DATA_HINTS = {
    "classification": "a .npz with x_train, y_train, x_test, y_test (e.g. resources/samples/cifar10_sample.npz)",
    "change_detection": "a folder with A/ (before), B/ (after) and label/ sub-folders",
    "anomaly_detection": "an ABU .mat scene or a hyperspectral raster (e.g. resources/samples/abu-beach-2.mat)",
}
NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")  # the arrays a classification .npz holds
NOT_ANOMALY_DATA = (".npz", ".pt", ".pth", ".json", ".csv", ".txt", ".zip")  # files that are no hyperspectral scene


class CompressionTask(ABC):
    """Interface the compression methods use; one subclass per task. Subclasses set `rng` in __init__."""

    name: str = ""
    metric: str = ""  # the score's name, e.g. "accuracy" or "f1" (higher is better, in percent)
    rng: np.random.Generator
    notes: List[str]  # what a user should know about how the data was read or split; set in __init__

    @abstractmethod
    def example_inputs(self) -> Tuple[Any, ...]:
        """Inputs for one sample (batch of one), for BOPs counting and export."""

    @abstractmethod
    def batch(self, size: int) -> Batch:
        """One random training batch (inputs, target), drawn with `self.rng`."""

    @abstractmethod
    def loss(self, model: Any, batch: Batch) -> Any:
        """The task loss of `model` on `batch` (a scalar tensor with a gradient)."""

    @abstractmethod
    def evaluate(self, model: Any) -> Dict[str, float]:
        """Scores on the evaluation data; includes `self.metric` (percent, higher is better) and `loss`."""

    def calibration_batches(self, count: int = 4, size: int = 16) -> List[Tuple[Any, ...]]:
        """Input tuples for activation-range calibration (training data, fixed seed)."""
        return [inputs for inputs, _ in fixed_batches(self, count, size, CALIBRATION_SEED)]


def fixed_batches(task: CompressionTask, count: int, size: int, seed: int) -> List[Batch]:
    """`count` training batches drawn from `seed`; the task's own random stream is left where it was."""
    saved = task.rng
    task.rng = np.random.default_rng(seed)
    try:
        return [task.batch(size) for _ in range(count)]
    finally:
        task.rng = saved


class ClassificationTask(CompressionTask):
    """Image classification from an .npz of uint8 images (CIFAR layout)."""

    name = "classification"
    metric = "accuracy"

    def __init__(self, checkpoint: Checkpoint, data_path: str, seed: int = 0, eval_limit: Optional[int] = None) -> None:
        import torch

        if not os.path.isfile(data_path):
            raise RSLabError(f"classification data not found: {data_path}")
        try:
            with np.load(data_path) as data:  # closed on the error path too
                x_train, y_train, x_test, y_test = (data[key] for key in NPZ_KEYS)
        except (KeyError, ValueError, OSError) as exc:
            raise RSLabError(f"{os.path.basename(data_path)} is not an .npz with {', '.join(NPZ_KEYS)} ({exc})") from exc
        bands = len(checkpoint.card.bands) or int(checkpoint.card.arguments.get("bands", 3))
        if x_train.ndim != 4 or x_train.shape[-1] != bands:
            raise RSLabError(f"the images have shape {x_train.shape}; the model expects N x H x W x {bands}")
        mean = np.asarray(checkpoint.card.normalisation.get("mean", [0.0] * bands), np.float32)
        std = np.asarray(checkpoint.card.normalisation.get("std", [1.0] * bands), np.float32)
        self.x_train = self._tensor(x_train, mean, std)
        self.y_train = torch.from_numpy(y_train.astype(np.int64))
        if eval_limit:
            x_test, y_test = x_test[:eval_limit], y_test[:eval_limit]
        self.x_test = self._tensor(x_test, mean, std)
        self.y_test = torch.from_numpy(y_test.astype(np.int64))
        self.rng = np.random.default_rng(seed)
        self.notes = []

    @staticmethod
    def _tensor(x: np.ndarray, mean: np.ndarray, std: np.ndarray):
        import torch

        return torch.from_numpy(((x.astype(np.float32) - mean) / std).transpose(0, 3, 1, 2).copy())

    def example_inputs(self) -> Tuple[Any, ...]:
        return (self.x_test[:1],)

    def batch(self, size: int) -> Batch:
        """Random crop (4-pixel padding) and horizontal flip, the standard CIFAR augmentation."""
        import torch
        import torch.nn.functional as F

        idx = torch.from_numpy(self.rng.integers(0, len(self.x_train), size))
        x = F.pad(self.x_train[idx], (4, 4, 4, 4))
        h, w = self.x_train.shape[-2:]
        out = torch.empty((size, x.shape[1], h, w))
        for i in range(size):
            r, c = self.rng.integers(0, 9, 2)
            crop = x[i, :, r:r + h, c:c + w]
            out[i] = crop.flip(-1) if self.rng.random() < 0.5 else crop
        return (out,), self.y_train[idx]

    def loss(self, model: Any, batch: Batch) -> Any:
        import torch.nn.functional as F

        inputs, target = batch
        return F.cross_entropy(model(*inputs), target)

    def evaluate(self, model: Any) -> Dict[str, float]:
        import torch
        import torch.nn.functional as F

        was_training = model.training
        model.eval()
        correct, loss = 0, 0.0
        with torch.no_grad():
            for start in range(0, len(self.x_test), 250):
                logits = model(self.x_test[start:start + 250])
                target = self.y_test[start:start + 250]
                loss += float(F.cross_entropy(logits, target, reduction="sum"))
                correct += int((logits.argmax(1) == target).sum())
        model.train(was_training)
        n = len(self.x_test)
        return {"accuracy": 100.0 * correct / n, "loss": loss / n}


def trained_pairs(training: Dict[str, Any]) -> set:
    """The names of the pairs a change model's card says it trained on, in every stage of its training (the
    shipped model's stage 1 took DSIFN-CD's pairs, stage 2 LEVIR-CD's: reading stage 2 alone, a folder of
    DSIFN pairs was scored on pairs the model had trained on)."""
    names = set(training.get("train_pairs", []))
    for value in training.values():
        if isinstance(value, dict):
            names |= trained_pairs(value)
    return names


class ChangeDetectionTask(CompressionTask):
    """AR-CDNet pairs from an A/ B/ label/ folder: fine-tune on training pairs, score on held-out ones."""

    name = "change_detection"
    metric = "f1"

    def __init__(self, checkpoint: Checkpoint, data_path: str, seed: int = 0,
                 held_out: Optional[Sequence[str]] = None, crop: int = 128) -> None:
        from .change_data import VALIDATION_SHARE, PairSampler, pairs_from_folder, split_validation

        if not os.path.isdir(data_path):
            raise RSLabError(f"change-detection data must be a folder with A/, B/ and label/: {data_path}")
        pairs = pairs_from_folder(data_path)
        self.notes = []
        if held_out is not None:
            evaluation = [p for p in pairs if p.name in set(held_out)]
            training = [p for p in pairs if p.name not in set(held_out)]
        else:
            trained_on = trained_pairs(checkpoint.card.training)
            training = [p for p in pairs if p.name in trained_on]
            evaluation = [p for p in pairs if p.name not in trained_on]
            if not evaluation:  # scored on its own training pairs, a compressed model gained 30 points of F1
                raise RSLabError(f"the model trained on every pair in {data_path} (its card lists them), so none is "
                                 "left to score it on fairly: give a folder that also holds pairs it has not seen")
            if not training:  # none it trained on: hold some out, so it is not scored on what it fine-tunes on
                training, evaluation = split_validation(pairs, VALIDATION_SHARE)
                if training == evaluation:
                    self.notes.append(f"one pair ({pairs[0].name}) both fine-tunes and scores the model: the score "
                                      "after compression is measured on data it was fine-tuned on")
                else:
                    self.notes.append(f"the model trained on none of these {len(pairs)} pairs: "
                                      f"{', '.join(p.name for p in evaluation)} score it, the others fine-tune it")
        self.training, self.evaluation = training, evaluation
        self.mean = checkpoint.card.normalisation["mean"]
        self.std = checkpoint.card.normalisation["std"]
        self.sampler = PairSampler(training, crop, seed, fill=self.mean)  # nodata as detection feeds it
        self.rng = np.random.default_rng(seed)
        self.bands = self.sampler.bands

    def example_inputs(self) -> Tuple[Any, ...]:
        import torch

        x = torch.zeros((1, self.bands, 256, 256))
        return (x, x.clone())

    def batch(self, size: int) -> Batch:
        from .change_training import crop_batch

        self.sampler.rng = self.rng  # one random stream per task, so calibration batches are reproducible
        a, b, y, v = crop_batch(self.sampler, size, self.mean, self.std)
        return (a, b), (y, v)

    def loss(self, model: Any, batch: Batch) -> Any:
        from ..models.arcdnet import arcdnet_loss

        inputs, (y, v) = batch
        loss, _ = arcdnet_loss(model(*inputs), y, v)
        return loss

    def evaluate(self, model: Any) -> Dict[str, float]:
        from .change_training import evaluate

        scores = evaluate(model, self.evaluation, self.mean, self.std, "cpu")
        return {"f1": 100.0 * scores["f1"], "iou": 100.0 * scores["iou"], "kappa": 100.0 * scores["kappa"],
                "loss": 1.0 - scores["f1"]}


class AnomalyTask(CompressionTask):
    """The BSDM denoiser on one hyperspectral scene: an ABU-style .mat (`data` cube, `map` reference) or a raster.

    Fine-tuning uses BSDM's own objective (predict the fixed pseudo-noise draw at
    t = 500 from x_t). The score is AUC(D,F) of BSDM + RX in percent when the scene
    has a reference (a .mat `map`) marking anomaly and background pixels, else the
    denoising fit, 100 x (1 - denoising loss), named "fit" (it was called "auc" too,
    and the panel showed it as an AUC).
    """

    name = "anomaly_detection"
    metric = "auc"  # "fit" on a scene without a usable reference (set per scene in __init__)
    MAX_PIXELS = 1_000_000

    def __init__(self, checkpoint: Checkpoint, data_path: str, seed: int = 0, rounds: int = 10) -> None:
        import torch

        from ..models.bsdm import T_FIXED, fixed_noise_input

        pixels, reference = self._read(data_path)  # the valid pixels (N, B), as detection reads the scene
        bands = int(checkpoint.card.arguments.get("bands", 0))
        if pixels.shape[1] != bands:
            raise RSLabError(f"the denoiser was trained for {bands} bands; {os.path.basename(data_path)} has "
                             f"{pixels.shape[1]}{' good bands' if self.notes else ''}")
        lo, hi = float(pixels.min()), float(pixels.max())
        if hi <= lo:
            raise RSLabError("the scene is constant: there is nothing to score")
        x = torch.from_numpy(((pixels - lo) / (hi - lo)).astype(np.float32))
        self.x = x
        self.noise, self.x_t = fixed_noise_input(x, seed)
        self.step = torch.tensor(T_FIXED)
        self.reference = reference
        if reference is None or not reference.any() or reference.all():
            self.metric = "fit"
            self.notes.append("the scene has no reference marking both anomaly and background pixels: the score is "
                              "the denoising fit, 100 x (1 - BSDM's loss), not an AUC")
        self.rounds = rounds
        self.rng = np.random.default_rng(seed)

    def _read(self, path: str) -> Tuple[np.ndarray, Optional[np.ndarray]]:
        """(valid pixels (N, B) in float64, their reference (N,) bool or None), read as detect_anomalies reads
        a scene: bands the ENVI header flags bad left out, nodata and NaN pixels left out of everything.
        (Read with every band and pixel, a scene with NaN nodata scored NaN and failed as 'diverged', and a
        denoiser saved by detection on an ENVI scene with bad bands did not match its own scene.)"""
        from rasterio.windows import Window

        from .bands import good_bands
        from .raster_io import gdal_env, open_raster, read_window

        self.notes = []  # bands left out here; __init__ adds the note on a scene scored by fit
        if not os.path.isfile(path):
            raise RSLabError(f"anomaly scene not found: {path}")
        if path.lower().endswith(".mat"):
            from .import_cube import read_mat_variables

            variables = read_mat_variables(path)
            if "data" not in variables:
                raise RSLabError(f"{os.path.basename(path)} has no 'data' cube")
            cube = np.moveaxis(np.asarray(variables["data"]), -1, 0)
            finite = np.isfinite(cube)
            empty = ~finite.any(axis=(1, 2))  # bands NaN everywhere are left out, as detection leaves them out
            if empty.any() and (~empty).sum() >= 2:
                self.notes.append(f"{int(empty.sum())} bands hold no valid value and were left out")
                cube, finite = cube[~empty], finite[~empty]
            valid = finite.all(axis=0)
            reference = variables.get("map")
            if reference is not None and np.shape(reference) != valid.shape:
                raise RSLabError(f"{os.path.basename(path)}'s 'map' is {np.shape(reference)}, its cube "
                                 f"{valid.shape[0]} x {valid.shape[1]} pixels")
        else:
            good, _, bad_band_note = good_bands(path)
            if bad_band_note:
                self.notes.append(bad_band_note)
            with gdal_env(), open_raster(path) as ds:
                if ds.width * ds.height > self.MAX_PIXELS:
                    raise RSLabError(f"the scene has {ds.width * ds.height} pixels; compression scores a scene "
                                     f"of at most {self.MAX_PIXELS} in memory: clip it first")
                cube, valid = read_window(ds, Window(0, 0, ds.width, ds.height), good)
            reference = None
        if cube.shape[1] * cube.shape[2] > self.MAX_PIXELS:
            raise RSLabError(f"the scene is larger than {self.MAX_PIXELS} pixels; clip it first")
        if not valid.any():
            raise RSLabError(f"{os.path.basename(path)} has no valid pixel (every one is nodata or NaN)")
        pixels = cube[:, valid].T.astype(np.float64)
        return pixels, None if reference is None else np.asarray(reference)[valid] != 0

    def example_inputs(self) -> Tuple[Any, ...]:
        return (self.x[:1], self.step)

    def batch(self, size: int) -> Batch:
        import torch

        idx = torch.from_numpy(self.rng.choice(len(self.x), min(size, len(self.x)), replace=False))
        return (self.x_t[idx], self.step), self.noise[idx]

    def loss(self, model: Any, batch: Batch) -> Any:
        import torch.nn.functional as F

        inputs, target = batch
        return F.mse_loss(model(*inputs), target)

    def calibration_batches(self, count: int = 4, size: int = 4096) -> List[Tuple[Any, ...]]:
        """The original cube is what inference feeds (as x_t): calibrate on it, and on x_t for training."""
        chunk = self.x[: size * count]
        return [(chunk[i:i + size], self.step) for i in range(0, len(chunk), size)] + [(self.x_t[:size], self.step)]

    def evaluate(self, model: Any) -> Dict[str, float]:
        import torch
        import torch.nn.functional as F

        from ..models.bsdm import suppress_background
        from .rx import global_rx

        was_training = model.training
        model.eval()
        with torch.no_grad():
            loss = float(F.mse_loss(model(self.x_t, self.step), self.noise))
            suppressed = None if self.metric == "fit" else suppress_background(model, self.x, self.rounds)
        model.train(was_training)
        if suppressed is None:
            return {"loss": loss, "fit": 100.0 * (1.0 - loss)}
        return {"loss": loss, "auc": 100.0 * rank_auc(global_rx(suppressed.double().numpy()), self.reference)}


TASKS = {"classification": ClassificationTask, "change_detection": ChangeDetectionTask,
         "anomaly_detection": AnomalyTask}


DEFAULT_INPUT_SIZE = {"classification": 32, "change_detection": 256}
MIN_INPUT_SIZE = 8
MAX_INPUT_SIZE = 4096  # the default change detector counts 4096 x 4096 in 4.4 GB and about a minute on a CPU core


def check_input_size(side: int) -> None:
    """RSLabError unless `side` is an image side BOPs can be counted for (0, the task's default, is too)."""
    if side == 0:
        return
    if side < MIN_INPUT_SIZE:
        raise RSLabError(f"the input size must be at least {MIN_INPUT_SIZE} pixels, got {side}")
    if side > MAX_INPUT_SIZE:
        raise RSLabError(f"the input size must be at most {MAX_INPUT_SIZE} pixels, got {side}")


def example_inputs_for(card: Any, size: Optional[int] = None) -> Tuple[Any, ...]:
    """A one-sample input for counting a checkpoint's BOPs without data: an image of `size` pixels
    (default 32 for classification, 256 for change detection) or one pixel token (anomaly detection)."""
    import torch

    bands = int(card.arguments.get("bands", len(card.bands) or 3))
    if card.task == "anomaly_detection":
        from ..models.bsdm import T_FIXED

        return (torch.zeros((1, bands)), torch.tensor(T_FIXED))
    if card.task not in DEFAULT_INPUT_SIZE:
        raise RSLabError(f"no example input is known for {card.task!r} models")
    side = int(size or DEFAULT_INPUT_SIZE[card.task])
    check_input_size(side)
    image = torch.zeros((1, bands, side, side))
    return (image, image.clone()) if card.task == "change_detection" else (image,)


def check_data(task: str, path: str) -> str:
    """The data path if it is the kind `task` needs; RSLabError (saying what is needed) otherwise."""
    if task not in DATA_HINTS:
        raise RSLabError(f"compression does not support {task!r} models yet; "
                         f"supported: {', '.join(sorted(DATA_HINTS))}")
    hint = DATA_HINTS[task]
    if not path:
        raise RSLabError(f"choose the evaluation data: {hint}")
    name = os.path.basename(path.rstrip(os.sep)) or path
    if not os.path.exists(path):
        raise RSLabError(f"the evaluation data {path} does not exist; choose {hint}")
    if task == "change_detection":
        if not os.path.isdir(path):
            raise RSLabError(f"{name} is a file; a change-detection checkpoint needs {hint}")
        missing = [sub for sub in ("A", "B", "label") if not os.path.isdir(os.path.join(path, sub))]
        if missing:
            raise RSLabError(f"{name} has no {', '.join(m + '/' for m in missing)} sub-folder; "
                             f"a change-detection checkpoint needs {hint}")
        return path
    if os.path.isdir(path):
        raise RSLabError(f"{name} is a folder; {task_with_article(task)} checkpoint needs {hint}")
    suffix = os.path.splitext(path)[1].lower()
    if task == "classification":
        if suffix != ".npz":
            raise RSLabError(f"{name} is not a .npz file; a classification checkpoint needs {hint}")
        try:
            with np.load(path) as data:
                keys = set(data.files)
        except (OSError, ValueError) as exc:
            raise RSLabError(f"{name} is not a readable .npz file ({exc})") from exc
        missing = [k for k in NPZ_KEYS if k not in keys]
        if missing:
            raise RSLabError(f"{name} has no {', '.join(missing)}; a classification checkpoint needs {hint}")
        return path
    if suffix in NOT_ANOMALY_DATA:
        raise RSLabError(f"{name} is not a hyperspectral scene; the BSDM denoiser needs {hint}")
    return path


def task_for(checkpoint: Checkpoint, data_path: str, seed: int = 0, **options: Any) -> CompressionTask:
    """The adapter for the checkpoint's task, reading `data_path` (checked first by `check_data`, as the panel
    checks it before a run: one set of messages for the panel and Processing)."""
    check_data(checkpoint.card.task, data_path)
    return TASKS[checkpoint.card.task](checkpoint, data_path, seed, **options)
