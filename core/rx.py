"""Global RX (Reed-Xiaoli), by windows: the scene's statistics in one pass, the scores in a second.

RX scores each pixel by its Mahalanobis distance to the scene mean under the
scene covariance (pseudo-inverse, so constant or collinear bands do not break
it). Only the B-vector mean and the B x B covariance are held, so any image
size fits in memory. The window and value-range passes here are also what
local RX, BSDM and the metrics read images with.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, List, Optional, Sequence, Tuple

import numpy as np
from rasterio.windows import Window

from .blas import gram, matmul
from .errors import RSLabError
from .job import JobMonitor
from .raster_io import gdal_env, open_raster, raster_info, read_window
from .tiling import OutputSpec, TileSpec, run_tiled, windows_for

# With fewer valid pixels per band than this, RX's covariance is poorly estimated and its
# scores carry much sampling noise, so the run says so. (Reed, Mallett and Brennan: about
# 2 samples per band keep the loss from an estimated covariance within 3 dB; 10 per band
# is the common rule of thumb for a stable inverse.)
PIXELS_PER_BAND_ADVISED = 10
STATS_TILE = 256  # a 256 x 256 x 200-band window is ~100 MB in float64 (whole strips: up to twice, tiling.windows_for)


def stats_windows(ds: Any) -> List[Window]:
    """Windows that cover the open raster once each (statistics count every pixel once), shaped to its
    storage (full-width strips for a striped file: tiling.windows_for)."""
    return windows_for(ds, STATS_TILE)


def window_pixels(ds: Any, window: Window, bands: Optional[Sequence[int]] = None) -> Tuple[np.ndarray, np.ndarray]:
    """One window's pixels as rows (N, B) in float64, and whether each is valid (N,)."""
    data, valid = read_window(ds, window, bands)
    return data.reshape(data.shape[0], -1).T.astype(np.float64), valid.ravel()


def too_few_pixels(pixels: int, bands: int) -> RSLabError:
    """The error for an image RX cannot score: its covariance needs more valid pixels than bands."""
    return RSLabError(f"the image has {pixels} valid pixels but {bands} bands; RX needs more pixels than bands")


def band_count(path: str, bands: Optional[Sequence[int]]) -> int:
    """How many bands a pass reads: `bands`, or every data band of the file."""
    return len(bands) if bands is not None else raster_info(path).count


def scene_statistics(path: str, monitor: Optional[JobMonitor] = None, bands: Optional[Sequence[int]] = None
                     ) -> Tuple[np.ndarray, np.ndarray, int]:
    """Mean (B,) and covariance (B, B) over the valid pixels of `bands` (default: the data bands), accumulated
    by windows (shifted for stability)."""
    monitor = monitor or JobMonitor()
    count = band_count(path, bands)
    shift = None
    total = np.zeros(count)
    outer = np.zeros((count, count))
    n = 0
    with gdal_env(), open_raster(path) as ds:
        windows = stats_windows(ds)
        for i, window in enumerate(windows):
            monitor.step(i / len(windows), "scene statistics")
            x, valid = window_pixels(ds, window, bands)
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


def score_raster(source: str, output: str, score_fn: Callable[[np.ndarray], np.ndarray], monitor: JobMonitor,
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
    total = np.zeros(band_count(path, bands))
    with gdal_env(), open_raster(path) as ds:
        windows = stats_windows(ds)
        for i, window in enumerate(windows):
            monitor.step(i / len(windows), "value range")
            x, valid = window_pixels(ds, window, bands)
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
