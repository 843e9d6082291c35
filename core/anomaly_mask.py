"""A new anomaly mask from scores already computed: the same scores cut at another false-alarm rate.

    result = threshold_scores("airport-4_bsdm_rx_scores.tif", MaskOutputs(mask="mask_0.005.tif"), 0.005)

An analyst tunes the false-alarm rate after looking at a mask: 1 % flags too
much clutter, 0.2 % misses a vehicle. The scores do not depend on the rate, so
detecting again only to move the cut repeats the whole detector (BSDM + RX
trains its denoiser again: 35-130 s on a 100 x 100 ABU scene, depending on the
CPU). This cuts the score raster a detection wrote, by windows, in seconds:
the mask is the one detection writes at that rate (mask_at_rate, the same
code), and with a reference the report says how many of its anomalies the
mask finds and how many background pixels it flags.

A detection run with a false-alarm rate writes its mask through mask_at_rate
too: false_alarm_threshold finds the cut (floor(rate x valid pixels) lie above
it), mask_detection counts what the mask finds of a reference.
"""
from __future__ import annotations

import math
import os
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from .anomaly_metrics import normalised_scores, reference_on_grid, reference_window
from .anomaly_params import check_false_alarm_rate
from .bands import band_descriptions
from .errors import RSLabError
from .job import CancelledFn, JobMonitor, JobResult, ProgressFn, absolute_paths
from .metrics import EXACT_ROC_LIMIT
from .outputs import PendingOutputs, check_output_paths, work_folder, write_json
from .overviews import add_overviews_to
from .raster_io import gdal_env, open_raster, raster_info, read_window
from .rx import STATS_TILE, score_bounds, stats_windows
from .tiling import MASK_NODATA, OutputSpec, TileSpec, run_tiled

SCORE_BINS = 1 << 16
MASK_DESCRIPTION = "anomaly (1) / background (0)"  # the band description of every anomaly mask RS Lab writes


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
            windows = stats_windows(s)
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
        windows = stats_windows(s)
        for i, window in enumerate(windows):
            monitor.step(i / len(windows), "the mask against the reference")
            value, valid = read_window(s, window)
            truth, known = reference_window(r, window)
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


def describe_mask(rate: float, threshold: float, flagged: int, valid: int, detection: Dict[str, Any]) -> List[str]:
    """A mask in words, for the logs of both algorithms that write one: its cut and, with a reference, what it
    finds (describe_mask_detection)."""
    found = describe_mask_detection(detection)
    return [f"threshold at a false-alarm rate of {rate:g}: {threshold:.6g}; pixels above it: {flagged:,} of "
            f"{valid:,} scored", *([found] if found else [])]


def mask_at_rate(scores: str, rate: float, score_range: Tuple[float, float], mask: Optional[str] = None,
                 reference: Optional[str] = None, monitor: Optional[JobMonitor] = None) -> MaskSummary:
    """Cut a score raster so that floor(rate x valid pixels) lie above (false_alarm_threshold), write the uint8
    mask there (1 above, 0 below, MASK_NODATA where the score is nodata) to `mask` when given, and with a
    `reference` on the scores' grid count what the mask finds (mask_detection). By windows throughout.

    Detection runs it on the scores it has just written; threshold_scores runs it again on
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

        run_tiled([scores], [OutputSpec(mask, 1, "uint8", MASK_NODATA, (MASK_DESCRIPTION,))], to_mask,
                  TileSpec(STATS_TILE, 0, "partition"), monitor.sub(0.5, 0.8))
    if reference:
        summary.detection = mask_detection(scores, reference, threshold, monitor.sub(0.8, 1.0))
    return summary


@dataclass(frozen=True)
class MaskOutputs:
    mask: str
    report: Optional[str] = None


@dataclass
class MaskResult(JobResult):
    outputs: Optional[MaskOutputs] = None
    false_alarm_rate: float = 0.0
    threshold: float = 0.0
    mask_pixels: int = 0  # valid pixels scoring above the threshold
    valid_pixels: int = 0
    score_range: Tuple[float, float] = (0.0, 0.0)
    mask_detection: Dict[str, Any] = field(default_factory=dict)  # with a reference (mask_detection)
    notes: List[str] = field(default_factory=list)

    def report(self) -> Dict[str, Any]:
        data = asdict(self)
        data["outputs"] = absolute_paths(asdict(self.outputs)) if self.outputs else {}
        return data


def threshold_scores(scores: str, outputs: MaskOutputs, rate: float, reference: Optional[str] = None,
                     progress: Optional[ProgressFn] = None, cancelled: Optional[CancelledFn] = None) -> MaskResult:
    """Write the mask of the `rate` share of highest `scores` (a one-band score raster, NaN or nodata where not
    scored), with the facts in the result (and the report when asked); a reference on another grid is resampled
    onto the scores' (nearest), as detection does."""
    monitor = JobMonitor(progress, cancelled)
    check_output_paths({"mask raster": outputs.mask, "report": outputs.report},
                       {"scores raster": scores, "reference": reference}, rasters=("mask raster",))
    check_false_alarm_rate(rate)
    info = raster_info(scores)
    if info.count != 1:
        raise RSLabError(f"{os.path.basename(scores)} has {info.count} bands; give the one-band scores raster "
                         "an anomaly detection wrote (…_scores.tif), not the image")
    if band_descriptions(scores) == [MASK_DESCRIPTION]:  # a 0/1 mask cut again flags its ones or nothing, any rate
        raise RSLabError(f"{os.path.basename(scores)} is an anomaly mask, not scores; give the scores raster the "
                         "detection wrote beside it (…_scores.tif)")
    result = MaskResult(outputs=outputs, false_alarm_rate=rate, timings=monitor.timings, device="cpu (numpy)",
                        inputs=absolute_paths({"scores": scores, "reference": reference}))
    with PendingOutputs() as pending, ExitStack() as stack:
        mask = pending.temp(outputs.mask)
        if reference:  # on the scores' grid, or resampled onto it (a small VRT in the work folder)
            workdir = stack.enter_context(work_folder("rslab-mask-", 0, os.path.dirname(mask), "the mask"))
            reference, notes = reference_on_grid(info, reference, workdir, onto="scores")
            result.notes.extend(notes)
        with monitor.timed("threshold"):
            result.score_range = score_bounds(scores, monitor.sub(0.0, 0.25))
            summary = mask_at_rate(scores, rate, result.score_range, mask, reference, monitor.sub(0.25, 0.9))
        result.threshold, result.mask_pixels, result.valid_pixels = summary.threshold, summary.flagged, summary.valid
        result.mask_detection = summary.detection
        result.notes.extend(summary.notes)
        add_overviews_to([mask], monitor.sub(0.9, 1.0))
        if outputs.report:
            write_json(pending.temp(outputs.report), result.report(), indent=1, default=str)
    monitor.done("done")
    return result
