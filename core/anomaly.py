"""Hyperspectral anomaly detection: global RX, local (dual-window) RX and BSDM + RX.

    result = detect_anomalies(cube, AnomalyOutputs(scores="s.tif"), AnomalyParams(method="bsdm_rx"))

- Global RX: Mahalanobis distance of each pixel to the scene mean under the
  scene covariance (pseudo-inverse, so constant or collinear bands do not
  break it). Two passes by windows: statistics, then scores, so any image
  size fits in memory.
- Local RX (dual window): the background of each pixel is the outer window
  minus the inner (guard) window. Departure from the textbook form: the cube
  is first projected on its `LRX_COMPONENTS` leading principal components
  (a global pass); a full-band local covariance per pixel (B x B for every
  pixel, B ~ 200) is not tractable, and this is what practical LRX does.
- BSDM + RX (METHODS.md section 2): the cube is scaled to [0, 1] with one
  global min and max, a spectral denoiser is trained on the scene's pixels
  (a random sample of `max_train_pixels` valid pixels when there are more), the
  background is suppressed by windows, and global RX runs on the result.

Bands an ENVI header flags bad (`bbl`) are left out of every method
(core/bands.py). Scores are written as float32 (NaN = nodata; nodata
pixels are excluded from every statistic). With a reference mask (non-zero = anomaly) the result has
AUC(D,F) (exact: the rank statistic, by windows), AUC(F,tau) and AUC_BS = AUC(D,F) - AUC(F,tau) on min-max
normalised scores; with a false-alarm rate, a uint8 mask thresholded at that
rate (1 anomaly, 0 background, 255 nodata). Every run lists the strongest
anomalies (core/anomaly_peaks.py: the highest local maxima of the scores).
"""
from __future__ import annotations

import math
import os
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
from rasterio.windows import Window
from scipy import ndimage

from .alignment import align_to
from .anomaly_peaks import PEAK_COUNT, Peak, check_peaks_path, strongest_peaks, write_peaks
from .bands import good_bands
from .blas import gram, matmul
from .device import describe_device, load_optimisers, native_bfloat16, select_device
from .errors import RSLabError
from .job import CancelledFn, JobMonitor, JobResult, ProgressFn, absolute_paths
from .metrics import EXACT_ROC_LIMIT, ROC_BINS, Roc, window_roc
from .outputs import PendingOutputs, check_output_paths, work_folder, write_json
from .overviews import add_overviews_to
from .raster_io import RasterInfo, gdal_env, open_raster, raster_info, read_label_window, read_window
from .seeding import pixel_uniforms, seeded_global_generator
from .tiling import MASK_NODATA, OutputSpec, TileSpec, run_tiled, windows_for

METHODS = ("bsdm_rx", "rx", "lrx")
METHOD_LABELS = {"bsdm_rx": "BSDM + RX", "rx": "RX", "lrx": "Local RX"}  # as the dock and Processing show them
PRECISIONS = ("auto", "float32", "bfloat16")
TASK = "anomaly_detection"
LRX_COMPONENTS = 10
LRX_MAX_OUTER = 255  # local RX's widest outer window: its tiles of 512 x 512 hold ~300 MB of local covariances
# With fewer valid pixels per band than this, RX's covariance is poorly estimated and its
# scores carry much sampling noise, so the run says so. (Reed, Mallett and Brennan: about
# 2 samples per band keep the loss from an estimated covariance within 3 dB; 10 per band
# is the common rule of thumb for a stable inverse.)
PIXELS_PER_BAND_ADVISED = 10
STATS_TILE = 256  # a 256 x 256 x 200-band window is ~100 MB in float64 (whole strips: up to twice, tiling.windows_for)
SCORE_BINS = 1 << 16


def check_false_alarm_rate(rate: float) -> None:
    """RSLabError for a false-alarm rate outside (0, 1)."""
    if not 0 < rate < 1:
        raise RSLabError(f"the false-alarm rate must be above 0 and below 1, got {rate}")


@dataclass(frozen=True)
class AnomalyParams:
    method: str = "bsdm_rx"
    iterations: int = 500
    seed: int = 0
    inner_window: int = 3
    outer_window: int = 11
    false_alarm_rate: Optional[float] = None
    max_train_pixels: int = 20000
    rounds: int = 10
    device: str = "auto"
    model: Optional[str] = None  # a BSDM denoiser checkpoint to use instead of training one on the scene
    precision: str = "auto"  # BSDM training: "auto" (bfloat16 where native), "float32" or "bfloat16"

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise RSLabError(f"method must be one of {', '.join(METHODS)}, got {self.method!r}")
        if self.iterations < 1:
            raise RSLabError(f"BSDM needs at least one training iteration, got {self.iterations}")
        for name in ("inner", "outer"):  # said as people (and the dock) name them, not by the field's name
            value = getattr(self, f"{name}_window")
            if value < 1 or value % 2 == 0:
                raise RSLabError(f"the {name} window must be an odd number of pixels, got {value}")
        if self.outer_window > LRX_MAX_OUTER:
            raise RSLabError(f"the outer window can be at most {LRX_MAX_OUTER} pixels, got {self.outer_window} (for "
                             "a background that wide, global RX is the detector)")
        if self.outer_window <= self.inner_window:
            raise RSLabError(
                f"the outer window ({self.outer_window}) must be larger than the inner window ({self.inner_window})"
            )
        if self.false_alarm_rate is not None:
            check_false_alarm_rate(self.false_alarm_rate)
        if self.model and self.method != "bsdm_rx":
            raise RSLabError(f"a denoiser checkpoint is only used by bsdm_rx, not by {self.method}")
        if self.precision not in PRECISIONS:
            raise RSLabError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.max_train_pixels < 100:
            raise RSLabError(f"BSDM needs at least 100 training pixels, got {self.max_train_pixels}")


# the parameters each method reads (the rest were reported too, as if a plain RX had run 500 iterations)
METHOD_PARAMS = {
    "bsdm_rx": ("iterations", "seed", "max_train_pixels", "rounds", "device", "model", "precision"),
    "rx": (),
    "lrx": ("inner_window", "outer_window"),
}
TRAINING_PARAMS = ("iterations", "seed", "max_train_pixels", "precision")  # unread when a denoiser is given


def used_params(params: AnomalyParams) -> Dict[str, Any]:
    """The parameters `params.method` reads (and the method and false-alarm rate), for reports."""
    read = set(METHOD_PARAMS[params.method]) - (set(TRAINING_PARAMS) if params.model else set())
    return {key: value for key, value in asdict(params).items()
            if key in ("method", "false_alarm_rate") or key in read}


@dataclass(frozen=True)
class AnomalyOutputs:
    scores: str
    mask: Optional[str] = None
    report: Optional[str] = None
    model: Optional[str] = None  # bsdm_rx: also save the trained denoiser as an RS Lab checkpoint
    peaks: Optional[str] = None  # the strongest anomalies as points (.gpkg or .geojson: anomaly_peaks.write_peaks)


@dataclass
class AnomalyResult(JobResult):
    outputs: Optional[AnomalyOutputs] = None
    method: str = ""
    params: Dict[str, Any] = field(default_factory=dict)
    metrics: Dict[str, Any] = field(default_factory=dict)
    threshold: Optional[float] = None
    mask_pixels: Optional[int] = None  # with a false-alarm rate: the pixels scoring above the threshold
    mask_detection: Dict[str, Any] = field(default_factory=dict)  # with a rate and a reference (MaskSummary)
    score_range: Tuple[float, float] = (0.0, 0.0)
    training_loss: List[float] = field(default_factory=list)
    notes: List[str] = field(default_factory=list)
    width: int = 0
    height: int = 0
    bands: int = 0
    peaks: List[Peak] = field(default_factory=list)  # the strongest anomalies, strongest first (anomaly_peaks)
    roc: Optional[Roc] = None  # with a reference: the ROC the metrics come from (not in the report)

    def report(self) -> Dict[str, Any]:
        data = asdict(replace(self, roc=None))
        del data["roc"]
        data["outputs"] = absolute_paths(asdict(self.outputs)) if self.outputs else {}
        if self.training_loss:
            data["training_loss"] = {"first": self.training_loss[0], "last": self.training_loss[-1],
                                     "iterations": len(self.training_loss)}
        return data


# --- statistics by windows ------------------------------------------------------------------------------


def _windows(ds: Any) -> List[Window]:
    """Windows that cover the open raster once each (statistics count every pixel once), shaped to its
    storage (full-width strips for a striped file: tiling.windows_for)."""
    return windows_for(ds, STATS_TILE)


def _pixels(ds, window, bands: Optional[Sequence[int]] = None) -> Tuple[np.ndarray, np.ndarray]:
    data, valid = read_window(ds, window, bands)
    return data.reshape(data.shape[0], -1).T.astype(np.float64), valid.ravel()


def too_few_pixels(pixels: int, bands: int) -> RSLabError:
    """The error for an image RX cannot score: its covariance needs more valid pixels than bands."""
    return RSLabError(f"the image has {pixels} valid pixels but {bands} bands; RX needs more pixels than bands")


def _band_count(path: str, bands: Optional[Sequence[int]]) -> int:
    return len(bands) if bands is not None else raster_info(path).count


def scene_statistics(path: str, monitor: Optional[JobMonitor] = None, bands: Optional[Sequence[int]] = None
                     ) -> Tuple[np.ndarray, np.ndarray, int]:
    """Mean (B,) and covariance (B, B) over the valid pixels of `bands` (default: the data bands), accumulated
    by windows (shifted for stability)."""
    monitor = monitor or JobMonitor()
    count = _band_count(path, bands)
    shift = None
    total = np.zeros(count)
    outer = np.zeros((count, count))
    n = 0
    with gdal_env(), open_raster(path) as ds:
        windows = _windows(ds)
        for i, window in enumerate(windows):
            monitor.step(i / len(windows), "scene statistics")
            x, valid = _pixels(ds, window, bands)
            x = x[valid]
            if not len(x):
                continue
            if shift is None:
                shift = x.mean(axis=0)
            x = x - shift
            total += x.sum(axis=0)
            outer += gram(x)
            n += len(x)
    if n <= count:
        raise too_few_pixels(n, count)
    mean_shifted = total / n
    cov = (outer - n * np.outer(mean_shifted, mean_shifted)) / (n - 1)
    return mean_shifted + shift, cov, n


class RxScorer:
    """Global RX: (x - mu)^T pinv(Sigma) (x - mu), vectorised over pixels."""

    def __init__(self, mean: np.ndarray, cov: np.ndarray) -> None:
        self.mean = mean
        # relative cut-off: constant bands (zero variance) drop out instead of blowing up
        self.inverse = np.linalg.pinv(cov, rcond=1e-10, hermitian=True)

    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        centred = pixels - self.mean
        return (matmul(centred, self.inverse) * centred).sum(axis=1)  # a plain einsum here is 13x slower


def global_rx(pixels: np.ndarray) -> np.ndarray:
    """Global RX scores of pixels held in memory (N, B), with the statistics scene_statistics gives by windows."""
    mean = pixels.mean(axis=0)
    centred = pixels - mean
    return RxScorer(mean, gram(centred) / (len(pixels) - 1))(pixels)


def _score_raster(source: str, output: str, score_fn, monitor: JobMonitor,
                  bands: Optional[Sequence[int]] = None) -> None:
    """Write per-pixel scores of `source` (its `bands`; default: the data bands) to `output` by windows."""

    def fn(arrays, valid):
        cube = arrays[0]
        pixels = cube.reshape(cube.shape[0], -1).T.astype(np.float64)
        scores = np.full(pixels.shape[0], np.nan, np.float64)
        ok = valid.ravel()
        if ok.any():
            scores[ok] = score_fn(pixels[ok])
        return [scores.reshape(valid.shape).astype(np.float32)]

    run_tiled([source], [OutputSpec(output, 1, "float32", None, ("anomaly score",))], fn,
              TileSpec(STATS_TILE, 0, "partition"), monitor, bands)


@dataclass(frozen=True)
class ValidSummary:
    """What one pass over a raster's valid pixels gives: the value range over every band, their number, the mean."""

    lo: float  # inf when no pixel is valid
    hi: float  # -inf when no pixel is valid
    count: int
    mean: np.ndarray  # per band (B,); NaN when no pixel is valid


def valid_summary(path: str, monitor: Optional[JobMonitor] = None, bands: Optional[Sequence[int]] = None
                  ) -> ValidSummary:
    """The valid pixels' value range, count and mean spectrum over `bands` (default: the data bands), by
    windows (no covariance: any band count)."""
    monitor = monitor or JobMonitor()
    lo, hi, count = np.inf, -np.inf, 0
    total = np.zeros(_band_count(path, bands))
    with gdal_env(), open_raster(path) as ds:
        windows = _windows(ds)
        for i, window in enumerate(windows):
            monitor.step(i / len(windows), "value range")
            x, valid = _pixels(ds, window, bands)
            if valid.any():
                x = x[valid]
                lo, hi = min(lo, float(x.min())), max(hi, float(x.max()))
                count += len(x)
                total += x.sum(axis=0)
    return ValidSummary(lo, hi, count, total / count if count else np.full(len(total), np.nan))


def score_bounds(path: str, monitor: Optional[JobMonitor] = None) -> Tuple[float, float]:
    """(min, max) of the written scores over valid pixels."""
    summary = valid_summary(path, monitor)
    if not summary.count:
        raise RSLabError("no valid pixel was scored")
    return summary.lo, summary.hi


# --- local RX -----------------------------------------------------------------------------------------


def local_rx_tile(pixels: np.ndarray, valid: np.ndarray, inner: int, outer: int,
                  fallback_cov: Optional[np.ndarray] = None) -> np.ndarray:
    """Dual-window RX on a (k, h, w) tile of principal components; box sums give every local mean and covariance.

    Where the ring holds too few valid pixels for a covariance (beside nodata
    or at the image edge: fewer than 2k), the scene covariance `fallback_cov`
    is used instead of a near-singular local one.
    """
    k, h, w = pixels.shape
    x = np.where(valid, pixels, 0.0).astype(np.float64)
    weight = valid.astype(np.float64)

    def ring_sum(a: np.ndarray) -> np.ndarray:
        big = ndimage.uniform_filter(a, size=outer, mode="constant") * outer * outer
        small = ndimage.uniform_filter(a, size=inner, mode="constant") * inner * inner
        return big - small

    count = np.maximum(ring_sum(weight), 1.0)
    means = np.stack([ring_sum(x[i]) for i in range(k)]) / count
    cov = np.empty((h, w, k, k))
    for i in range(k):
        for j in range(i, k):
            value = ring_sum(x[i] * x[j]) / count - means[i] * means[j]
            cov[:, :, i, j] = value
            cov[:, :, j, i] = value
    if fallback_cov is not None:
        sparse = count < 2 * k
        cov[sparse] = fallback_cov
    cov += np.eye(k) * 1e-6 * np.trace(cov, axis1=2, axis2=3)[..., None, None] / k
    centred = np.moveaxis(pixels, 0, -1) - np.moveaxis(means, 0, -1)
    solved = np.linalg.solve(cov, centred[..., None])[..., 0]
    return np.einsum("hwk,hwk->hw", centred, solved)


def _principal_components(cov: np.ndarray, count: int) -> Tuple[np.ndarray, np.ndarray]:
    """The `count` leading eigenvectors (B, count) of the covariance and their eigenvalues."""
    values, vectors = np.linalg.eigh(cov)
    order = np.argsort(values)[::-1][:count]
    return vectors[:, order], np.maximum(values[order], 0.0)


# --- BSDM ---------------------------------------------------------------------------------------------


# BSDM + RX's stages in rough units of one denoiser pass over one pixel token (a training step over the sample,
# or one suppression round over the image: 13.2 and 11.7 us per token on a 1000 x 1000 x 200 cube, README), so
# the progress bar moves with time: the suppression's share grows with the image, the training's does not (a
# fixed 0-60 % / 60-75 % split left a 2000 x 2000 run in 15 % of the bar for most of its time)
READ_COST = 0.2  # one read pass over a pixel (value range, training sample, RX statistics, RX scores)
# the passes after scoring (the score range, the ROC, the false-alarm threshold, the mask, overviews): at a fixed
# 5 % of the bar, where a small scene spends a few tenths of a second, the time left said 50 s for 3 s
TAIL_COST = 0.5 * READ_COST
LRX_SCORING_COST = 19 * TAIL_COST  # local RX's scoring takes 95 % of its bar, the passes after it 5 %


def stage_bounds(pixels: int, sample: int, iterations: int, rounds: int, method: str = "bsdm_rx",
                 trains: bool = True) -> List[Tuple[float, float]]:
    """The (start, end) fractions of [0, 1] for BSDM's reading (value range, sample), training and suppression
    (bsdm_rx only), then the detector's statistics, its scores and the passes after them, in proportion to their
    expected time (the dock's time left assumes the bar moves with time). Local RX has no statistics pass of its
    own: its scoring (box filters per component pair) is most of its time."""
    costs = [2 * READ_COST * pixels, iterations * sample if trains else 0.0, rounds * pixels] \
        if method == "bsdm_rx" else []
    if method == "lrx":
        costs += [0.0, LRX_SCORING_COST * pixels, TAIL_COST * pixels]
    else:
        costs += [READ_COST * pixels, READ_COST * pixels, TAIL_COST * pixels]
    total = float(sum(costs)) or 1.0
    bounds, start = [], 0.0
    for cost in costs:
        bounds.append((start, start + cost / total))
        start += cost / total
    return bounds


def _value_range(path: str, monitor: Optional[JobMonitor] = None, bands: Optional[Sequence[int]] = None
                 ) -> Tuple[float, float, int]:
    """The global (min, max) BSDM normalises with, and the number of valid pixels."""
    summary = valid_summary(path, monitor, bands)
    if not summary.count or summary.hi <= summary.lo:
        raise RSLabError("the image is constant (or has no valid pixels): there is nothing to detect")
    return summary.lo, summary.hi, summary.count


def _training_sample(path: str, lo: float, hi: float, limit: int, valid_pixels: int, seed: int,
                     monitor: Optional[JobMonitor] = None, bands: Optional[Sequence[int]] = None) -> np.ndarray:
    """Normalised valid pixels of `bands` (default: the data bands), in pixel order: all of them, or a uniform
    random sample of exactly `limit` of the `valid_pixels`.

    Each pixel has its own draw from (`seed`, its position) (seeding.pixel_uniforms),
    so the sample is the same however the file is read (a striped and a tiled
    copy of one image are read in different windows). Pixels are kept while
    reading when their draw is below a little more than limit / valid_pixels
    (six standard deviations of the kept count), so all but surely at least
    `limit` are; then the `limit` smallest draws, a uniform sample. (Set from the
    raster's size instead, a scene half nodata trained on half the pixels asked for.)
    """
    monitor = monitor or JobMonitor()
    chunks, indexes, draws = [], [], []
    with gdal_env(), open_raster(path) as ds:
        keep = min(1.0, (limit + 6.0 * np.sqrt(limit)) / max(valid_pixels, 1))
        windows = _windows(ds)
        for i, window in enumerate(windows):
            monitor.step(i / len(windows), "drawing the training pixels")
            x, valid = _pixels(ds, window, bands)
            rows, cols = np.mgrid[window.row_off:window.row_off + window.height,
                                  window.col_off:window.col_off + window.width]
            index = (rows.astype(np.int64) * ds.width + cols).ravel()[valid]
            draw = pixel_uniforms(seed, index)
            chosen = draw < keep if keep < 1.0 else slice(None)
            chunks.append((x[valid][chosen] - lo) / (hi - lo))
            indexes.append(index[chosen])
            draws.append(draw[chosen])
    sample, index, draw = np.concatenate(chunks), np.concatenate(indexes), np.concatenate(draws)
    chosen = np.lexsort((index, draw))[:limit]  # the smallest draws (all when there are no more than `limit`)
    chosen = chosen[np.argsort(index[chosen])]  # in pixel order, whatever the windows
    return sample[chosen].astype(np.float32)


def train_bsdm(sample: np.ndarray, params: AnomalyParams, device: Any,
               monitor: JobMonitor) -> Tuple[Any, List[float], str]:
    """Train the denoiser on pixel tokens to predict one fixed noise draw at t = 500 (MSE, AdamW, cosine).

    Returns the model, the loss per iteration and the precision it trained in.
    Departure from METHODS.md (which is silent on precision): with
    `precision="auto"` the matrix products run in bfloat16 (autocast; weights,
    optimiser state, loss and inference stay float32) where the hardware
    multiplies bfloat16 natively. On the 2-core AMX test machine a 100 x 100
    ABU scene takes 49-52 s instead of 61-62 s, and AUC(D,F) stays within
    0.0012 of float32 on every ABU scene (`bench/anomaly.py`, with and
    without `--precision float32`).
    """
    import torch

    from ..models.bsdm import T_FIXED, BSDMDenoiser, fixed_noise_input, pixel_statistics

    precision = params.precision
    if precision == "auto":
        precision = "bfloat16" if native_bfloat16(device) else "float32"
    noise, x_t = fixed_noise_input(torch.from_numpy(sample), params.seed)  # drawn once, reused at every step
    x_t = x_t.to(device)
    statistics = pixel_statistics(x_t)  # x_t is the same at every iteration, so are its per-pixel statistics
    noise = noise.to(device)
    with seeded_global_generator(params.seed):  # the initial weights
        model = BSDMDenoiser(sample.shape[1])
    model.to(device)
    load_optimisers(monitor)  # The first optimiser imports torch._dynamo: listen for a cancel meanwhile.
    fused = device.type in ("cpu", "cuda")  # one kernel for all parameters instead of a loop over them
    optimiser = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=fused or None)
    decay = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, params.iterations, eta_min=1e-5)
    step = torch.tensor(T_FIXED, device=device)
    losses = []
    for iteration in range(params.iterations):
        if iteration % 10 == 0:
            monitor.step(iteration / params.iterations, f"BSDM iteration {iteration + 1} of {params.iterations}")
        else:  # a cancel waited up to ten iterations: 5 s here, ~20 s on a loaded machine
            monitor.check()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bfloat16"):
            predicted = model(x_t, step, statistics)
        loss = torch.nn.functional.mse_loss(predicted.float(), noise)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        decay.step()
        losses.append(float(loss.detach()))
    model.eval()
    return model, losses, precision


def save_denoiser(model: Any, path: str, scene: str, lo: float, hi: float, params: AnomalyParams) -> None:
    """Write a trained BSDM denoiser as an RS Lab checkpoint (for reuse on the scene, or compression) to `path`,
    a temporary name of the job's PendingOutputs."""
    from .checkpoint import ModelCard, save_checkpoint

    bands = model.bands
    card = ModelCard(
        task=TASK, architecture="bsdm", arguments={"bands": bands},
        bands=[f"band {i + 1}" for i in range(bands)],
        normalisation={"min": [float(lo)] * bands, "max": [float(hi)] * bands},
        training={"data": os.path.basename(scene), "params": {"iterations": params.iterations, "seed": params.seed,
                                                              "max_train_pixels": params.max_train_pixels}},
        description="BSDM background-suppression denoiser, trained on one scene (RS Lab)",
    )
    save_checkpoint(path, model.state_dict(), card, atomic=False)


def load_denoiser(path: str, bands: int, scene_bands: Optional[int] = None) -> Tuple[Any, str]:
    """A BSDM denoiser checkpoint (float or compressed) for a `bands`-band image, ready for inference, and the
    file name of the scene its card says it was trained on ('' if it does not say).

    `scene_bands`: the file's own band count, when bad or empty bands were left out of the `bands` used.
    """
    from .checkpoint import build_model, load_checkpoint

    checkpoint = load_checkpoint(path, task=TASK)
    if checkpoint.card.arguments.get("bands") != bands:
        has = f"{bands}" if scene_bands in (None, bands) else \
            f"{bands} usable bands (of its {scene_bands}: {scene_bands - bands} are flagged bad or empty)"
        raise RSLabError(f"{os.path.basename(path)} was trained for {checkpoint.card.arguments.get('bands')} bands; "
                         f"the image has {has}")
    return build_model(checkpoint), str(checkpoint.card.training.get("data") or "")


def _suppress_raster(source: str, output: str, model, lo: float, hi: float, params: AnomalyParams, device,
                     monitor: JobMonitor, bands: Optional[Sequence[int]] = None) -> None:
    import torch

    from ..models.bsdm import suppress_background

    with gdal_env(), open_raster(source) as ds:
        windows = len(_windows(ds))  # as run_tiled cuts it, for progress within each window
    done = [0]

    def chunk_progress(chunk: int, chunks: int) -> None:  # also the cancel check, chunk by chunk
        monitor.step((done[0] + chunk / chunks) / windows,
                     f"suppressing the background: window {done[0] + 1} of {windows}")

    def fn(arrays, valid):
        cube = arrays[0]
        bands, h, w = cube.shape
        # normalised in float64 as the training sample is, then float32: cast first, an image with a large
        # offset and a small range (int32 values near 1e8: float32 steps of 8) lost its detail
        pixels = ((cube.reshape(bands, -1).T.astype(np.float64) - lo) / (hi - lo)).astype(np.float32)
        with torch.inference_mode():
            out = suppress_background(model, torch.from_numpy(pixels).to(device), params.rounds,
                                      progress=chunk_progress)
        done[0] += 1
        return [out.float().cpu().numpy().T.reshape(bands, h, w)]

    # float32: the denoiser computes in float32, so the values are stored exactly (a float64 copy of a
    # 1000 x 1000 x 200 cube takes 1.6 GB uncompressed)
    run_tiled([source], [OutputSpec(output, _band_count(source, bands), "float32")], fn,
              TileSpec(STATS_TILE, 0, "partition"), monitor, bands)


# --- metrics and thresholds ---------------------------------------------------------------------------


def normalised_scores(value: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Scores min-max normalised to [0, 1] with the whole map's (lo, hi), in float64 (METHODS.md section 2)."""
    return (value.astype(np.float64) - lo) / max(hi - lo, 1e-300)


ROC_PASSES = 3  # window_roc reads the windows two or three times; progress counts three


def anomaly_roc(scores: str, reference: str, lo: float, hi: float, monitor: Optional[JobMonitor] = None) -> Roc:
    """The exact ROC of min-max normalised scores against a reference (non-zero = anomaly), by windows.

    Exact rather than from a histogram: anomaly scores have a heavy tail (local RX on
    ABU urban-2 reaches 13,000 times its median), which crowds the background into a
    few bins of any fixed binning; 65,536 bins put AUC(D,F) 2.4e-3 off there.
    Each window read reports progress and checks for cancel.
    """
    monitor = monitor or JobMonitor()
    info = raster_info(scores)
    ref_info = raster_info(reference)
    if ref_info.shape != info.shape:
        raise RSLabError(
            f"the reference is {ref_info.width} x {ref_info.height} but the image is {info.width} x {info.height}"
        )
    with gdal_env(), open_raster(scores) as s:
        tiles = _windows(s)
    passes = [0]

    def windows():
        done = min(passes[0], ROC_PASSES - 1)
        passes[0] += 1
        with gdal_env(), open_raster(scores) as s, open_raster(reference) as r:
            for i, window in enumerate(tiles):
                monitor.step((done + i / len(tiles)) / ROC_PASSES, "comparing the scores with the reference")
                value, valid = read_window(s, window)
                truth, known = _reference_window(r, window)
                ok = valid & known
                yield normalised_scores(value[0][ok], lo, hi), truth[ok]

    roc = window_roc(windows)
    if roc is None:
        reference_classes(reference)  # says which class the reference lacks, if it does
        raise RSLabError("the image has no valid score where the reference marks "
                         f"{'anomalies' if any(np.any(target) for _, target in windows()) else 'background'}: "
                         "AUCs cannot be computed")
    return roc


def _reference_window(ds, window) -> Tuple[np.ndarray, np.ndarray]:
    """(anomaly, known) of one reference window. 0 is background by definition, so a nodata value of 0
    (which GIS tools often set on a 0/1 mask, for transparency) does not hide the background; pixels
    outside a reference resampled from another grid stay unknown (raster_io.read_label_window)."""
    truth, known = read_label_window(ds, window)
    return truth != 0, known


def reference_classes(reference: str) -> Tuple[int, int, Optional[str]]:
    """(anomaly pixels, background pixels, note) of a reference, by windows; a clear error when a class is missing.

    Run before any detection, so a reference that cannot be scored fails in seconds, not after a BSDM run.
    """
    anomalies = background = 0
    with gdal_env(), open_raster(reference) as ds:
        nodata = ds.nodata
        for window in _windows(ds):
            truth, known = _reference_window(ds, window)
            anomalies += int(np.count_nonzero(truth & known))
            background += int(np.count_nonzero(~truth & known))
    if not anomalies:
        raise RSLabError("the reference marks no anomaly pixel (non-zero values): AUCs cannot be computed")
    if not background:
        raise RSLabError("the reference marks every pixel as an anomaly (no 0 values): AUCs cannot be computed")
    note = None
    if nodata == 0:
        note = "the reference's nodata value is 0; its 0 pixels are read as background (0 = background)"
    return anomalies, background, note


def reference_on_grid(grid: RasterInfo, reference: str, workdir: str, onto: str) -> Tuple[str, List[str]]:
    """The reference to read on `grid`'s pixels (itself, or resampled with nearest neighbour through a VRT in
    `workdir`; an RSLabError when it cannot be aligned), checked for both classes (reference_classes), and the
    notes to report (resampled; 0 read as background). `onto` names the grid's raster in messages."""
    reference, note = align_to(grid, reference, workdir, role="reference", resampling="nearest", labels=True,
                               onto=onto)
    return reference, [n for n in (note, reference_classes(reference)[2]) if n]


def anomaly_metrics(roc: Roc) -> Dict[str, Any]:
    """AUC(D,F), AUC(F,tau), AUC(D,tau) and AUC_BS of a ROC of min-max normalised scores.

    AUC(F,tau) = integral over tau in [0, 1] of P(background score > tau),
    which equals the mean normalised background score (and likewise for D).
    """
    return {"auc_df": roc.auc, "auc_ftau": roc.negative_mean, "auc_dtau": roc.positive_mean,
            "auc_bs": roc.auc - roc.negative_mean, "anomaly_pixels": roc.positives,
            "background_pixels": roc.negatives}


def flagged_pixels(rate: float, total: int) -> int:
    """floor(rate x total), the pixels a false-alarm rate flags, read as the decimal product it stands for:
    in binary 0.0003 x 10,000 is 2.9999999999999996, and a plain floor flagged 2 of 3."""
    product = rate * total
    return int(math.floor(product + 1e-9 * max(1.0, product)))


def false_alarm_threshold(scores: str, rate: float, lo: float, hi: float,
                          monitor: Optional[JobMonitor] = None) -> Tuple[float, int, int]:
    """(threshold, pixels above it, valid pixels): floor(rate x valid pixels) lie above it (fewer only where scores tie).

    Two passes, by windows: a histogram finds the bin that holds the cut, then the scores
    in that bin are read and sorted. One bin of a heavy-tailed score map can hold much of
    the background, so the bin's lower edge alone would flag visibly fewer pixels than asked.
    A bin of over EXACT_ROC_LIMIT pixels (a huge, near-constant map) is cut at its upper
    edge, and the count is then of the pixels in the bins above it.
    """
    monitor = monitor or JobMonitor()

    def bins(start: float, end: float):
        with gdal_env(), open_raster(scores) as s:
            windows = _windows(s)
            for i, window in enumerate(windows):
                monitor.step(start + (end - start) * i / len(windows), "the false-alarm threshold")
                value, valid = read_window(s, window)
                value = value[0][valid]
                yield value, np.clip((normalised_scores(value, lo, hi) * SCORE_BINS).astype(np.int64), 0,
                                     SCORE_BINS - 1)

    counts = np.zeros(SCORE_BINS, np.int64)
    for _, index in bins(0.0, 0.5):
        counts += np.bincount(index, minlength=SCORE_BINS)
    total = int(counts.sum())
    flagged = flagged_pixels(rate, total)
    above = np.append(np.cumsum(counts[::-1])[::-1], 0)  # above[b]: pixels in bin b or higher
    cut = int(np.searchsorted(-above, -(flagged + 1), side="right")) - 1  # the bin holding the (flagged+1)-th highest
    if counts[cut] > EXACT_ROC_LIMIT:
        return lo + (hi - lo) * (cut + 1) / SCORE_BINS, int(above[cut + 1]), total
    in_bin = np.sort(np.concatenate([value[index == cut] for value, index in bins(0.5, 1.0)]))[::-1]
    threshold = in_bin[flagged - above[cut + 1]]
    return float(threshold), int(above[cut + 1] + np.count_nonzero(in_bin > threshold)), total


@dataclass
class MaskSummary:
    """A mask at a false-alarm rate: the score it cuts at, the pixels above it, and with a reference what it
    finds (`detection`: see mask_detection)."""

    threshold: float
    flagged: int  # valid pixels scoring above the threshold
    valid: int  # valid pixels
    detection: Dict[str, Any] = field(default_factory=dict)
    notes: List[str] = field(default_factory=list)


def mask_detection(scores: str, reference: str, threshold: float,
                   monitor: Optional[JobMonitor] = None) -> Dict[str, Any]:
    """What a mask cutting `scores` above `threshold` finds of a reference (on the scores' grid), by windows:
    the reference's anomaly pixels it flags (its detection rate) and the background pixels it flags (its false
    alarms among them), over the pixels the ROC counts (a valid score where the reference is known). The
    point (false_alarm_rate, detection_rate) lies on the ROC."""
    monitor = monitor or JobMonitor()
    hits = anomalies = false_alarms = background = 0
    with gdal_env(), open_raster(scores) as s, open_raster(reference) as r:
        windows = _windows(s)
        for i, window in enumerate(windows):
            monitor.step(i / len(windows), "the mask against the reference")
            value, valid = read_window(s, window)
            truth, known = _reference_window(r, window)
            ok = valid & known
            flagged = ok & (value[0] > threshold)
            hits += int(np.count_nonzero(flagged & truth))
            false_alarms += int(np.count_nonzero(flagged & ~truth))
            anomalies += int(np.count_nonzero(ok & truth))
            background += int(np.count_nonzero(ok & ~truth))
    monitor.step(1.0, "the mask against the reference")  # a cancel during the last window is heard here
    return {"anomalies_flagged": hits, "anomaly_pixels": anomalies,
            "detection_rate": hits / anomalies if anomalies else None,
            "false_alarms": false_alarms, "background_pixels": background,
            "false_alarm_rate": false_alarms / background if background else None}


def describe_mask_detection(detection: Dict[str, Any]) -> str:
    """mask_detection's counts in words, for logs and the dock ('' when there are none)."""
    if not detection or not detection.get("anomaly_pixels") or not detection.get("background_pixels"):
        return ""
    return (f"the mask flags {detection['anomalies_flagged']:,} of the reference's {detection['anomaly_pixels']:,} "
            f"anomaly pixels ({detection['detection_rate']:.1%}) and {detection['false_alarms']:,} of its "
            f"{detection['background_pixels']:,} background pixels ({detection['false_alarm_rate']:.2%})")


def mask_at_rate(scores: str, rate: float, score_range: Tuple[float, float], mask: Optional[str] = None,
                 reference: Optional[str] = None, monitor: Optional[JobMonitor] = None) -> MaskSummary:
    """Cut a score raster so that floor(rate x valid pixels) lie above (false_alarm_threshold), write the uint8
    mask there (1 above, 0 below, MASK_NODATA where the score is nodata) to `mask` when given, and with a
    `reference` on the scores' grid count what the mask finds (mask_detection). By windows throughout.

    Detection runs it on the scores it has just written; `core/anomaly_mask.threshold_scores` runs it again on
    a score raster at another rate, which takes seconds where BSDM + RX retrained for minutes.
    """
    monitor = monitor or JobMonitor()
    threshold, flagged, valid = false_alarm_threshold(scores, rate, *score_range, monitor=monitor.sub(0.0, 0.5))
    summary = MaskSummary(threshold, flagged, valid)
    if flagged_pixels(rate, valid) == 0:
        summary.notes.append(f"a false-alarm rate of {rate:g} flags no pixel of these {valid:,} (it takes a rate "
                             f"of at least 1/{valid:,} = {1 / valid:.2g} to flag one)")
    elif flagged == 0:
        summary.notes.append("the highest scores tie, so no pixel scores above the cut: the mask is empty")
    if mask:
        def to_mask(arrays, _valid):
            return [(arrays[0][0] > threshold).astype(np.uint8)]

        run_tiled([scores], [OutputSpec(mask, 1, "uint8", MASK_NODATA, ("anomaly (1) / background (0)",))], to_mask,
                  TileSpec(STATS_TILE, 0, "partition"), monitor.sub(0.5, 0.8))
    if reference:
        summary.detection = mask_detection(scores, reference, threshold, monitor.sub(0.8, 1.0))
    return summary


# --- the job ------------------------------------------------------------------------------------------


def check_anomaly_outputs(params: AnomalyParams, outputs: AnomalyOutputs) -> None:
    """RSLabError for outputs the parameters cannot give (a mask without a rate, a denoiser without BSDM)."""
    if outputs.model and params.method != "bsdm_rx":
        raise RSLabError(f"only bsdm_rx trains a denoiser to save; {params.method} has none")
    if outputs.model and params.model:
        # a copy would carry a card saying it was trained on this image, for 500 iterations
        raise RSLabError(f"nothing is trained when a denoiser is given ({os.path.basename(params.model)}), so "
                         "there is no denoiser to save: leave the denoiser output empty")
    if outputs.mask and params.false_alarm_rate is None:
        raise RSLabError("a mask output needs a false-alarm rate to threshold the scores at")


def detect_anomalies(
    cube: str,
    outputs: AnomalyOutputs,
    params: AnomalyParams = AnomalyParams(),
    reference: Optional[str] = None,
    progress: Optional[ProgressFn] = None,
    cancelled: Optional[CancelledFn] = None,
) -> AnomalyResult:
    """Score every pixel of a hyperspectral raster for anomaly (higher = more anomalous)."""
    monitor = JobMonitor(progress, cancelled)
    check_output_paths({"scores raster": outputs.scores, "mask raster": outputs.mask, "report": outputs.report,
                        "denoiser checkpoint": outputs.model, "strongest anomalies": outputs.peaks},
                       {"input image": cube, "reference": reference, "denoiser read": params.model},
                       rasters=("scores raster", "mask raster"))
    info = raster_info(cube)
    check_peaks_path(outputs.peaks, info.crs is not None)
    if info.count < 2:
        raise RSLabError(f"{os.path.basename(cube)} has {info.count} band; anomaly detection needs a multiband image")
    check_anomaly_outputs(params, outputs)
    result = AnomalyResult(outputs=outputs, method=params.method, params=used_params(params), width=info.width,
                           height=info.height, bands=info.count, timings=monitor.timings, device="cpu (numpy)",
                           inputs=absolute_paths({"image": cube, "reference": reference, "denoiser": params.model}))

    # work files: BSDM's background-suppressed cube (float32, every band; a reference off the grid is a small VRT)
    need = 4 * info.width * info.height * info.count if params.method == "bsdm_rx" else 0
    what = f"{params.method} on this {info.width} x {info.height} x {info.count} image"
    with PendingOutputs() as pending, ExitStack() as stack:
        scores_path = pending.temp(outputs.scores)
        workdir = stack.enter_context(work_folder("rslab-anomaly-", need, os.path.dirname(scores_path), what))
        # bad (bbl) and empty bands left out: read by band list from the file itself (through a VRT of the good
        # bands, a striped 4000 x 512 x 205 file took 76 s a window instead of 0.7 s: GDAL decoded its strips
        # again for every band)
        good, file_bands, note = good_bands(cube, monitor.check)
        bands = good if note else None
        if note:
            result.notes.append(note)
            info = replace(info, count=len(good))
            result.bands = info.count
        if reference:  # on the cube's grid, or resampled onto it (nearest), or a clear error
            reference, notes = reference_on_grid(info, reference, workdir, onto="image")
            result.notes.extend(notes)
        source, source_bands = cube, bands
        pixels = info.width * info.height
        bounds = [monitor.sub(*b) for b in stage_bounds(pixels, min(params.max_train_pixels, pixels),
                                                        params.iterations, params.rounds, params.method,
                                                        trains=not params.model)]
        rx_statistics, scoring, tail = bounds[-3:]
        if params.method == "bsdm_rx":
            device = select_device(params.device)
            result.device = describe_device(device)
            reading, training, suppressing = bounds[:3]
            with monitor.timed("bsdm_train"):
                lo, hi, valid_pixels = _value_range(cube, reading.sub(0.0, 0.5), bands)
                if valid_pixels <= info.count:  # said before training, not after it when RX's statistics fail
                    raise too_few_pixels(valid_pixels, info.count)
                if params.model:
                    model, trained_on = load_denoiser(params.model, info.count, file_bands)
                    model = model.to(device)
                    # by file name: the card keeps no path (a denoiser saved here and reused here was said to be
                    # 'not trained on this scene')
                    where = ("trained on a scene of this file's name" if trained_on == os.path.basename(cube)
                             else f"trained on {trained_on}, not on this scene" if trained_on
                             else "not trained on this scene")
                    result.notes.append(f"BSDM denoiser read from {os.path.basename(params.model)} ({where})")
                else:
                    sample = _training_sample(cube, lo, hi, params.max_train_pixels, valid_pixels, params.seed,
                                              reading.sub(0.5, 1.0), bands)
                    model, result.training_loss, precision = train_bsdm(sample, params, device, training)
                    result.notes.append(f"BSDM trained in {precision} on {len(sample)} pixels")
                if outputs.model:
                    save_denoiser(model, pending.temp(outputs.model), cube, lo, hi, params)
            with monitor.timed("bsdm_suppress"):
                source, source_bands = os.path.join(workdir, "suppressed.tif"), None
                _suppress_raster(cube, source, model, lo, hi, params, device, suppressing, bands)
        with monitor.timed("detect"):
            if params.method == "lrx":
                if params.outer_window >= 2 * max(info.width, info.height) - 1:
                    result.notes.append(
                        f"the {params.outer_window}-pixel outer window covers the whole {info.width} x {info.height} "
                        "image from every pixel: local RX is global RX on the leading components, less the inner window")
                _local_rx(source, scores_path, params, scoring, source_bands)
            else:
                mean, cov, n = scene_statistics(source, rx_statistics, source_bands)
                if n < PIXELS_PER_BAND_ADVISED * info.count:
                    result.notes.append(
                        f"RX's covariance of {info.count} bands rests on {n} valid pixels ({n / info.count:.1f} per "
                        f"band; about {PIXELS_PER_BAND_ADVISED} per band are advised): the scores are noisy, "
                        "a larger area or fewer bands would help")
                _score_raster(source, scores_path, RxScorer(mean, cov), scoring, source_bands)
            lo_hi = score_bounds(scores_path, tail.sub(0.0, 0.1))
        result.score_range = lo_hi
        with monitor.timed("peaks"):
            result.peaks = strongest_peaks(scores_path, PEAK_COUNT, monitor=tail.sub(0.1, 0.2))
            if outputs.peaks:
                write_peaks(pending.temp(outputs.peaks), result.peaks, scores_path)
        rasters = [scores_path]  # the outputs QGIS draws: overviews for large ones
        if reference:
            with monitor.timed("evaluate"):
                result.roc = anomaly_roc(scores_path, reference, *lo_hi, monitor=tail.sub(0.2, 0.4))
                result.metrics = anomaly_metrics(result.roc)
                if not result.roc.exact:
                    result.notes.append(
                        f"the reference marks over {EXACT_ROC_LIMIT:,} anomaly and background pixels each: AUC(D,F) "
                        f"comes from a {ROC_BINS}-bin score histogram, not the exact ranks")
        if params.false_alarm_rate is not None:
            mask_path = pending.temp(outputs.mask) if outputs.mask else None
            mask = mask_at_rate(scores_path, params.false_alarm_rate, lo_hi, mask_path, reference,
                                tail.sub(0.4, 0.8))
            result.threshold, result.mask_pixels, result.mask_detection = mask.threshold, mask.flagged, mask.detection
            result.notes.extend(mask.notes)
            if mask_path:
                rasters.append(mask_path)
        add_overviews_to(rasters, tail.sub(0.8, 1.0))
        if outputs.report:
            write_json(pending.temp(outputs.report), result.report(), indent=1, default=str)
    monitor.done("done")
    return result


def _local_rx(source: str, output: str, params: AnomalyParams, monitor: JobMonitor,
              bands: Optional[Sequence[int]] = None) -> None:
    mean, cov, _ = scene_statistics(source, monitor.sub(0.0, 0.3), bands)
    basis, variances = _principal_components(cov, min(LRX_COMPONENTS, cov.shape[0]))
    scene_cov = np.diag(variances)  # the scene covariance in the principal-component basis
    inner, outer = params.inner_window, params.outer_window

    def fn(arrays, valid):
        cube = np.where(valid, arrays[0], mean.reshape(-1, 1, 1))  # nodata, NaN, inf: the scene mean, not inf - inf
        bands, h, w = cube.shape
        projected = matmul(basis.T, cube.reshape(bands, -1) - mean[:, None]).reshape(-1, h, w)
        scores = local_rx_tile(projected, valid, inner, outer, scene_cov)
        scores[~valid] = np.nan
        return [scores.astype(np.float32)]

    run_tiled([source], [OutputSpec(output, 1, "float32", None, ("anomaly score",))], fn, local_rx_tiles(outer),
              monitor.sub(0.3, 1.0), bands)


def local_rx_tiles(outer: int) -> TileSpec:
    """Tiles for local RX: neighbours overlap by outer + 1, so each tile's centre keeps (outer + 1) / 2 pixels
    of context on every side, at least the ring's reach of (outer - 1) / 2; a tile is at least twice the overlap.
    (Tiles of a fixed 256 overlapping by 255 for outer windows from 128 on stepped by one pixel:
    555,025 tiles on a 1000 x 1000 image.)"""
    overlap = outer + 1
    return TileSpec(max(STATS_TILE, 2 * overlap), overlap)
