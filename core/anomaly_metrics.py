"""How well anomaly scores find a reference's anomalies: the ROC and its areas (METHODS.md section 2).

Scores are min-max normalised with the whole map's range; AUC(D,F) is the
area under detection against false alarm (higher is better), AUC(F,tau) the
area under false alarm against threshold (lower is better), AUC_BS their
difference. A reference is a raster, non-zero = anomaly, on the scores' grid
or resampled onto it (reference_on_grid).
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

import numpy as np
from rasterio.windows import Window

from .alignment import align_to
from .errors import RSLabError
from .job import JobMonitor
from .metrics import Roc, window_roc
from .raster_io import RasterInfo, gdal_env, open_raster, raster_info, read_label_window, read_window
from .rx import stats_windows


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
        tiles = stats_windows(s)
    passes = [0]

    def windows():
        done = min(passes[0], ROC_PASSES - 1)
        passes[0] += 1
        with gdal_env(), open_raster(scores) as s, open_raster(reference) as r:
            for i, window in enumerate(tiles):
                monitor.step((done + i / len(tiles)) / ROC_PASSES, "comparing the scores with the reference")
                value, valid = read_window(s, window)
                truth, known = reference_window(r, window)
                ok = valid & known
                yield normalised_scores(value[0][ok], lo, hi), truth[ok]

    roc = window_roc(windows)
    if roc is None:
        reference_classes(reference)  # says which class the reference lacks, if it does
        raise RSLabError("the image has no valid score where the reference marks "
                         f"{'anomalies' if any(np.any(target) for _, target in windows()) else 'background'}: "
                         "AUCs cannot be computed")
    return roc


def reference_window(ds: Any, window: Window) -> Tuple[np.ndarray, np.ndarray]:
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
        for window in stats_windows(ds):
            truth, known = reference_window(ds, window)
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
