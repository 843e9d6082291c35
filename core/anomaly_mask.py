"""A new anomaly mask from scores already computed: the same scores cut at another false-alarm rate.

    result = threshold_scores("airport-4_bsdm_rx_scores.tif", MaskOutputs(mask="mask_0.005.tif"), 0.005)

An analyst tunes the false-alarm rate after looking at a mask: 1 % flags too
much clutter, 0.2 % misses a vehicle. The scores do not depend on the rate, so
detecting again only to move the cut repeats the whole detector (BSDM + RX
trains its denoiser again: 35-130 s on a 100 x 100 ABU scene, depending on the
CPU). This cuts the score raster a detection wrote, by windows, in seconds:
the mask is the one detection writes at that rate (anomaly.mask_at_rate, the
same code), and with a reference the report says how many of its anomalies
the mask finds and how many background pixels it flags.
"""
from __future__ import annotations

import os
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Optional, Tuple

from .anomaly import check_false_alarm_rate, mask_at_rate, reference_on_grid, score_bounds
from .errors import RSLabError
from .job import CancelledFn, JobMonitor, JobResult, ProgressFn, absolute_paths
from .outputs import PendingOutputs, check_output_paths, work_folder, write_json
from .overviews import add_overviews_to
from .raster_io import raster_info


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
    mask_detection: Dict[str, Any] = field(default_factory=dict)  # with a reference (anomaly.mask_detection)
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
