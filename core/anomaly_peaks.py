"""The strongest anomalies of a score raster: where an analyst looks first.

A score map answers "how anomalous is each pixel"; the question asked of it
is "what here does not belong", a short list of places. A peak is a valid
pixel whose score is the highest within `separation` pixels (a square
window); peaks are taken strongest first, each at least `separation + 1`
pixels (Chebyshev) from every stronger one taken, so one target of a few
pixels is listed once rather than once per pixel. Ties go to the upper-left
pixel, so the list is the same on every run.

By windows, so any raster fits in memory: each window is read with a margin
of `separation` pixels, so a pixel beside a window's edge is compared with
its neighbours across it. At most count x (2 separation + 1)^2 local maxima
are kept between windows: every maximum the greedy pass looks at before the
count-th peak is either taken or within the square of a taken one, so the
rest can never be reached.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional

import numpy as np
from rasterio.windows import Window
from scipy import ndimage

from .job import JobMonitor
from .raster_io import centres_of, gdal_env, open_raster, read_window
from .tiling import windows_for

PEAK_COUNT = 20  # listed in the report and the dock
PEAK_SEPARATION = 5  # pixels: two peaks closer than this (either axis) are one target; a car at ~1 m is 2 x 5
PEAK_TILE = 1024  # windows of ~1024 x 1024 (three float64 arrays of it: ~25 MB)


@dataclass(frozen=True)
class Peak:
    """A local maximum of the scores: its pixel, score, and the pixel centre in the raster's CRS (None
    without georeferencing)."""

    row: int
    col: int
    score: float
    x: Optional[float] = None
    y: Optional[float] = None


def _grown(window: Window, margin: int, height: int, width: int) -> Window:
    """`window` with `margin` pixels more on every side, within the raster."""
    row0, col0 = max(window.row_off - margin, 0), max(window.col_off - margin, 0)
    row1 = min(window.row_off + window.height + margin, height)
    col1 = min(window.col_off + window.width + margin, width)
    return Window(col0, row0, col1 - col0, row1 - row0)


def _strongest_first(scores: np.ndarray, rows: np.ndarray, cols: np.ndarray, keep: int):
    """The `keep` strongest of the candidates, strongest first, ties by row then column."""
    order = np.lexsort((cols, rows, -scores))[:keep]
    return scores[order], rows[order], cols[order]


def strongest_peaks(scores: str, count: int = PEAK_COUNT, separation: int = PEAK_SEPARATION,
                    monitor: Optional[JobMonitor] = None) -> List[Peak]:
    """Up to `count` peaks of the first band of the raster at `scores`, strongest first (see the module)."""
    if count < 1 or separation < 0:
        raise ValueError(f"count must be at least 1 and separation at least 0, not {count} and {separation}")
    monitor = monitor or JobMonitor()
    keep = count * (2 * separation + 1) ** 2
    kept_scores, kept_rows, kept_cols = np.empty(0), np.empty(0, np.int64), np.empty(0, np.int64)
    with gdal_env(), open_raster(scores) as ds:
        windows = windows_for(ds, PEAK_TILE)
        for i, window in enumerate(windows):
            monitor.step(i / len(windows), "strongest anomalies")
            grown = _grown(window, separation, ds.height, ds.width)
            data, valid = read_window(ds, grown, [1])
            values = np.where(valid, data[0].astype(np.float64), -np.inf)
            highest = ndimage.maximum_filter(values, size=2 * separation + 1, mode="constant", cval=-np.inf)
            top, left = window.row_off - grown.row_off, window.col_off - grown.col_off
            core = (slice(top, top + window.height), slice(left, left + window.width))
            rows, cols = np.nonzero((values[core] == highest[core]) & valid[core])
            found = values[core][rows, cols]
            kept_scores, kept_rows, kept_cols = _strongest_first(
                np.concatenate([kept_scores, found]), np.concatenate([kept_rows, rows + window.row_off]),
                np.concatenate([kept_cols, cols + window.col_off]), keep)
    taken: List[int] = []
    for i in range(len(kept_scores)):
        near = (np.abs(kept_rows[taken] - kept_rows[i]) <= separation) & (np.abs(kept_cols[taken] - kept_cols[i])
                                                                          <= separation)
        if not near.any():
            taken.append(i)
            if len(taken) == count:
                break
    cells = [(int(kept_rows[i]), int(kept_cols[i])) for i in taken]
    centres = centres_of(scores, cells) or [(None, None)] * len(cells)
    monitor.step(1.0, "strongest anomalies")
    return [Peak(row, col, float(kept_scores[i]), x, y) for i, (row, col), (x, y) in zip(taken, cells, centres)]
