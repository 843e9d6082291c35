"""Hyperspectral anomaly detection: global RX, local (dual-window) RX and BSDM + RX, as one job.

    result = detect_anomalies(cube, AnomalyOutputs(scores="s.tif"), AnomalyParams(method="bsdm_rx"))

The methods live in their own modules; this one runs them on a raster and
writes the outputs:
- Global RX (core/rx.py): Mahalanobis distance of each pixel to the scene
  mean under the scene covariance, in two passes by windows.
- Local RX (core/local_rx.py): each pixel against the ring between an inner
  and an outer window, on the cube's leading principal components.
- BSDM + RX (METHODS.md section 2, core/bsdm_suppression.py): a spectral
  denoiser trained on the scene suppresses the background by windows, and
  global RX runs on the result.

Bands an ENVI header flags bad (`bbl`) are left out of every method
(core/bands.py). Scores are written as float32 (NaN = nodata; nodata
pixels are excluded from every statistic). With a reference mask (non-zero =
anomaly) the result has AUC(D,F), AUC(F,tau) and AUC_BS (core/anomaly_metrics.py);
with a false-alarm rate, a uint8 mask thresholded at that rate (1 anomaly,
0 background, 255 nodata: core/anomaly_mask.py). Every run lists the
strongest anomalies (core/anomaly_peaks.py: the highest local maxima of the scores).
"""
from __future__ import annotations

import os
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Dict, List, Optional, Tuple

from .anomaly_mask import mask_at_rate
from .anomaly_metrics import anomaly_metrics, anomaly_roc, reference_on_grid
from .anomaly_params import AnomalyParams, used_params
from .anomaly_peaks import PEAK_COUNT, Peak, check_peaks_path, strongest_peaks, write_peaks
from .bands import good_bands
from .bsdm_suppression import load_denoiser, save_denoiser, suppress_raster, train_bsdm, training_sample, value_range
from .device import describe_device, select_device
from .errors import RSLabError
from .job import CancelledFn, JobMonitor, JobResult, ProgressFn, absolute_paths
from .local_rx import local_rx
from .metrics import EXACT_ROC_LIMIT, ROC_BINS, Roc
from .outputs import PendingOutputs, check_output_paths, work_folder, write_json
from .overviews import add_overviews_to
from .raster_io import raster_info
from .rx import PIXELS_PER_BAND_ADVISED, RxScorer, scene_statistics, score_bounds, score_raster, too_few_pixels


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
    valid_pixels: Optional[int] = None  # with a false-alarm rate: the pixels with a score (the rate's base)
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
                lo, hi, valid_pixels = value_range(cube, reading.sub(0.0, 0.5), bands)
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
                    sample = training_sample(cube, lo, hi, params.max_train_pixels, valid_pixels, params.seed,
                                              reading.sub(0.5, 1.0), bands)
                    model, result.training_loss, precision = train_bsdm(sample, params, device, training)
                    result.notes.append(f"BSDM trained in {precision} on {len(sample)} pixels")
                if outputs.model:
                    save_denoiser(model, pending.temp(outputs.model), cube, lo, hi, params)
            with monitor.timed("bsdm_suppress"):
                source, source_bands = os.path.join(workdir, "suppressed.tif"), None
                suppress_raster(cube, source, model, lo, hi, params, device, suppressing, bands)
        with monitor.timed("detect"):
            if params.method == "lrx":
                if params.outer_window >= 2 * max(info.width, info.height) - 1:
                    result.notes.append(
                        f"the {params.outer_window}-pixel outer window covers the whole {info.width} x {info.height} "
                        "image from every pixel: local RX is global RX on the leading components, less the inner window")
                local_rx(source, scores_path, params.inner_window, params.outer_window, scoring, source_bands)
            else:
                mean, cov, n = scene_statistics(source, rx_statistics, source_bands)
                if n < PIXELS_PER_BAND_ADVISED * info.count:
                    result.notes.append(
                        f"RX's covariance of {info.count} bands rests on {n} valid pixels ({n / info.count:.1f} per "
                        f"band; about {PIXELS_PER_BAND_ADVISED} per band are advised): the scores are noisy, "
                        "a larger area or fewer bands would help")
                score_raster(source, scores_path, RxScorer(mean, cov), scoring, source_bands)
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
            result.valid_pixels = mask.valid
            result.notes.extend(mask.notes)
            if mask_path:
                rasters.append(mask_path)
        add_overviews_to(rasters, tail.sub(0.8, 1.0))
        if outputs.report:
            write_json(pending.temp(outputs.report), result.report(), indent=1, default=str)
    monitor.done("done")
    return result
