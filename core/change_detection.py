"""Detecting changes between two rasters: AR-CDNet (default) or change vector analysis.

    result = detect_changes(before, after, ChangeOutputs(change="c.tif", ...), ChangeParams(), ...)

Both methods run by windows over any raster size and write, on the before
image's grid (CRS, transform, size kept):

- change mask: uint8, 1 = changed, 0 = unchanged, 255 = nodata;
- change probability: float32 0..1 (NaN = nodata);
- uncertainty: float32 0..1 (NaN = nodata). For AR-CDNet it is the online
  uncertainty branch's output; CVA has no model of its own errors, so its
  uncertainty is the closeness to the decision threshold, 1 - |2p - 1|.

CVA (the classical baseline, no model): the magnitude of the per-pixel
spectral difference after scaling each band by its standard deviation over
both dates; the Otsu threshold of the magnitudes (from a decimated read of
the whole pair) is the decision boundary. Its "probability" is a logistic
of the magnitude centred on that threshold, so THRESHOLD 0.5 is Otsu's. When
every sampled pixel has the same magnitude (two copies of one date) there is
no threshold to draw: nothing at or below it is marked changed, and a note
says so.

When the after image is on another grid it is resampled onto the before grid
(bilinear, via a GDAL warped VRT) and the result's `notes` say so; a
reference raster on another grid is resampled with nearest neighbour. When a
reference is given (read under `ChangeParams.reference_coding`: 0 = no change,
non-zero = change, or 0 = not labelled, 1 = no change, 2 = change; see
core/change_reference.py), a second windowed pass computes precision, recall,
F1, IoU, OA, kappa and the ROC-AUC of the uncertainty for separating wrong
from right pixels, over the labelled pixels.
"""
from __future__ import annotations

import os
import tempfile
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
from .alignment import align_to
from .bands import band_descriptions, band_order_note, band_subset, check_bands, colour_order_note, model_colour_bands
from .change_data import IMAGENET_MEAN, IMAGENET_STD, band_statistics, fill_nodata
from .change_model import TASK, predict_pairs, trained_bands_hint
from .change_reference import check_coding, coding_note, read_reference, survey_reference
from .checkpoint import Checkpoint, build_model, load_checkpoint
from .device import describe_device, select_device
from .errors import RSLabError
from .job import CancelledFn, JobMonitor, JobResult, ProgressFn, absolute_paths
from .metrics import Confusion, HistogramAUC
from .outputs import PendingOutputs, check_output_paths, write_json
from .overviews import add_overviews_to
from .raster_io import gdal_env, open_raster, raster_info, read_decimated, read_window
from .tiling import MASK_NODATA, OutputSpec, TileSpec, run_tiled, windows_for
from .weights import default_checkpoint

METHODS = ("arcdnet", "cva")
METHOD_LABELS = {"arcdnet": "AR-CDNet (deep model)", "cva": "CVA (no model)"}  # as the dock and Processing show them


@dataclass(frozen=True)
class ChangeParams:
    method: str = "arcdnet"
    model: Optional[str] = None  # checkpoint path; None = the shipped default weights
    threshold: float = 0.5
    tile: int = 512
    overlap: int = 128
    device: str = "auto"
    reference_coding: str = "binary"  # how a reference's values read: core/change_reference.py
    bands: Optional[Tuple[int, ...]] = None  # 1-based bands of both dates to read, in this order; None = all
    tiles_per_pass: int = 0  # tiles the model runs at once; 0: 1 on the CPU, up to 8 on a GPU (ModelScorer)

    def __post_init__(self) -> None:
        check_coding(self.reference_coding)
        if self.tiles_per_pass < 0:
            raise RSLabError(f"tiles per pass must be 0 (chosen by the device) or more, got {self.tiles_per_pass}")
        if self.method not in METHODS:
            raise RSLabError(f"method must be one of {', '.join(METHODS)}, got {self.method!r}")
        if not 0.0 < self.threshold < 1.0:
            raise RSLabError(f"the threshold must be between 0 and 1 (exclusive), got {self.threshold}")
        if self.tile < 64 or self.tile % 32:
            raise RSLabError(f"the tile size must be a multiple of 32 and at least 64, got {self.tile}")
        TileSpec(self.tile, self.overlap)  # validates the overlap


@dataclass(frozen=True)
class ChangeOutputs:
    change: str
    probability: Optional[str] = None
    uncertainty: Optional[str] = None
    report: Optional[str] = None


@dataclass
class ChangeResult(JobResult):
    outputs: Optional[ChangeOutputs] = None
    method: str = ""
    threshold: float = 0.5
    bands: Optional[List[int]] = None  # the bands read from both dates; None = all
    reference_coding: Optional[str] = None  # how the reference's values were read, when one was given
    metrics: Dict[str, Any] = field(default_factory=dict)
    model: Dict[str, Any] = field(default_factory=dict)
    notes: List[str] = field(default_factory=list)
    width: int = 0
    height: int = 0

    def report(self) -> Dict[str, Any]:
        data = asdict(self)
        data["outputs"] = absolute_paths(asdict(self.outputs)) if self.outputs else {}
        data["megapixels_per_second"] = (
            self.width * self.height / 1e6 / self.timings["detect"] if self.timings.get("detect") else None
        )
        return data


def load_change_model(path: Optional[str]) -> Checkpoint:
    """The given checkpoint, or the shipped default; refuses checkpoints of other tasks."""
    return load_checkpoint(path or default_checkpoint(TASK), task=TASK)


def otsu_threshold(values: np.ndarray, bins: int = 512) -> float:
    """Otsu's threshold of a 1-D sample (maximises the between-class variance)."""
    values = values[np.isfinite(values)]
    if values.size == 0:
        raise RSLabError("no valid pixels to compute a change threshold from")
    lo, hi = float(values.min()), float(values.max())
    if hi <= lo:
        return hi
    hist, edges = np.histogram(values, bins=bins, range=(lo, hi))
    centres = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(hist)
    w1 = w0[-1] - w0
    m0 = np.cumsum(hist * centres)
    mean0 = m0 / np.maximum(w0, 1)
    mean1 = (m0[-1] - m0) / np.maximum(w1, 1)
    between = w0 * w1 * (mean0 - mean1) ** 2
    return float(centres[int(np.argmax(between[:-1]))])


CVA_MARKED_FLOOR = 0.005  # a share of the sampled pixels marked changed below which CVA's cut is suspect


def cva_share_note(magnitude: np.ndarray, boundary: float) -> Optional[str]:
    """A note when Otsu's cut marks almost none of the sampled pixels changed, else None.

    Otsu splits the histogram of change magnitudes where the between-class
    variance is largest, and a few extreme differences (clouds, saturated
    pixels, a band with outliers) can draw it above almost every change: on
    OSCD Rennes with all 13 bands it marked 0.08 % changed (the reference: 2.6 %),
    F1 0.001; its 10 m bands alone gave 0.485. (A large share marked says less:
    LEVIR-CD tiles with many new buildings mark 25-37 %.)
    """
    if not magnitude.size:
        return None
    share = float(np.mean(magnitude > boundary))
    if share >= CVA_MARKED_FLOOR:
        return None
    return (f"CVA's cut (change magnitude {boundary:.3g}, Otsu's threshold) marks only {100 * share:.2g} % of the "
            f"sampled pixels changed: a few extreme differences set it (99.9 % of the pixels differ by less "
            f"than {float(np.percentile(magnitude, 99.9)):.3g}), so most changes may lie below it. Other bands "
            "are worth a try, compared on a reference (Sentinel-2's 10 m bands, BANDS 2, 3, 4, 8, took OSCD "
            "Rennes from F1 0.001 to 0.485, and Paris-Bercy from 0.103 to 0.028); the probability raster ranks "
            "every pixel by its change")


class CvaScorer:
    """Change vector analysis: scaled difference magnitude, Otsu boundary, logistic 'probability'."""

    def __init__(self, before: str, after: str, max_pixels: int = 2_000_000,
                 check: Callable[[], None] = lambda: None) -> None:
        """`check`, a job's cancel check, runs between the four decimated reads (seconds each on a large pair)."""
        _, std = band_statistics([before, after], max_pixels, check)
        self.scale = np.asarray(std, np.float32)[:, None, None]
        self.scale[self.scale <= 0] = 1.0
        with gdal_env(), open_raster(before) as a, open_raster(after) as b:
            check()
            xa, va = read_decimated(a, max_pixels)
            check()
            xb, vb = read_decimated(b, max_pixels)
        if xa.shape != xb.shape:
            raise RSLabError("internal error: the decimated before and after reads differ in shape")
        valid = va & vb
        magnitude = self.magnitude(xa, xb)[valid]
        self.boundary = otsu_threshold(magnitude)
        spread = float(np.std(magnitude)) if magnitude.size else 1.0
        self.softness = max(spread / 4, 1e-6)
        # the same difference at every pixel (none at all, for two copies of one date) leaves Otsu nothing to
        # split: the logistic would put every pixel at 0.5 and mark it changed; only a larger difference is
        self.flat = bool(magnitude.size) and float(magnitude.max()) <= float(magnitude.min())
        self.note = (
            f"the two dates differ by the same amount ({self.boundary:g}) at every sampled pixel, so CVA has no "
            "change threshold to draw: only pixels that differ by more are marked changed"
        ) if self.flat else cva_share_note(magnitude, self.boundary)

    def magnitude(self, before: np.ndarray, after: np.ndarray) -> np.ndarray:
        return np.sqrt((((after.astype(np.float32) - before.astype(np.float32)) / self.scale) ** 2).sum(axis=0))

    def __call__(self, before: np.ndarray, after: np.ndarray):
        magnitude = self.magnitude(before, after)
        if self.flat:
            prob = (magnitude > self.boundary).astype(np.float32)
            return prob, np.zeros_like(prob)
        z = (magnitude - self.boundary) / self.softness
        prob = 1.0 / (1.0 + np.exp(-np.clip(z, -50, 50)))
        return prob.astype(np.float32), (1.0 - np.abs(2 * prob - 1)).astype(np.float32)


RANGE_SHIFT = 4.0  # a band mean this many training stds from the training mean is "far"
RANGE_SPREAD = (0.1, 4.0)  # so is a band spread outside these multiples of the training spread


def input_range_note(paths: Sequence[str], mean: Sequence[float], std: Sequence[float],
                     max_pixels: int = 200_000, check: Callable[[], None] = lambda: None) -> Optional[str]:
    """A note when the images' values lie far from those the model was trained on, else None.

    A 16-bit or reflectance image runs without any error through a model
    trained on 8-bit RGB (the default weights) and gives a meaningless map.
    Measured on the sample data: 8-bit pairs (LEVIR-CD, DSIFN, the AR-CDNet
    sample, the rasterio Landsat RGB) have band means within 1.4 ImageNet
    stds of ImageNet's means and spreads 0.4-1.2 times its; a Sentinel-2
    uint16 RGB composite (OSCD Rennes, bands 4-3-2) is 14-18 stds off, with
    5-7 times the spread.
    """
    image_mean, image_std = (np.asarray(v) for v in band_statistics(list(paths), max_pixels, check))
    model_mean, model_std = np.asarray(mean, np.float64), np.asarray(std, np.float64)
    shift = np.abs(image_mean - model_mean) / model_std
    spread = image_std / model_std
    if (shift <= RANGE_SHIFT).all() and ((spread >= RANGE_SPREAD[0]) & (spread <= RANGE_SPREAD[1])).all():
        return None
    eight_bit = (len(model_mean) == len(IMAGENET_MEAN) and np.allclose(model_mean, IMAGENET_MEAN)
                 and np.allclose(model_std, IMAGENET_STD))
    rescale = "8-bit, 0-255, as the default weights expect" if eight_bit else "the range of its training images"
    return (f"the images' values (band means {', '.join(f'{m:.4g}' for m in image_mean)}) are far from those the "
            f"model was trained on (means {', '.join(f'{m:.4g}' for m in model_mean)}): the change map is likely "
            f"meaningless. Rescale the images to the model's range ({rescale}), or train a model on images like "
            "these")


# On a GPU, tiles are run several to a forward pass (core/change_model.predict_pairs), up to this many and as
# many as about half the free GPU memory holds at BYTES_PER_PIXEL_PER_32 per pixel per 32 channels of width:
# 128 MB for one 512-pixel tile of the default (base 32) model's forward pass (peak resident memory, CPU).
MAX_TILES_PER_PASS = 8
BYTES_PER_PIXEL_PER_32 = 500


class ModelScorer:
    """AR-CDNet on tiles: nodata pixels are filled with the band means before the model sees them."""

    def __init__(self, checkpoint: Checkpoint, device) -> None:
        self.model = build_model(checkpoint).to(device)
        self.mean = checkpoint.card.normalisation["mean"]
        self.std = checkpoint.card.normalisation["std"]
        self.device = device
        self.width = max(int(checkpoint.card.arguments.get(k, 32)) for k in ("base", "channels"))
        self.limit = MAX_TILES_PER_PASS  # tiles per pass; lowered for the rest of a job whose GPU runs out of memory

    def __call__(self, before: np.ndarray, after: np.ndarray, valid: np.ndarray):
        return self.many([(before, after, valid)])[0]

    def tiles_per_pass(self, tile: int) -> int:
        """1 on the CPU (no faster in batches, and more memory); on a GPU as many as half its free memory holds."""
        import torch

        if torch.device(self.device).type != "cuda":
            return 1
        free, _ = torch.cuda.mem_get_info(self.device)
        per_tile = BYTES_PER_PIXEL_PER_32 * tile * tile * self.width / 32
        return int(max(1, min(MAX_TILES_PER_PASS, free // 2 // per_tile)))

    def many(self, tiles: Sequence[Tuple[np.ndarray, np.ndarray, np.ndarray]]) -> List[Tuple[np.ndarray, np.ndarray]]:
        """(probability, uncertainty) of each (before, after, valid) tile, all of one size, `self.limit` to a
        pass; a pass the GPU has no memory for is halved, and so are the job's later ones."""
        import torch

        filled = [fill_nodata(before, after, valid, self.mean) for before, after, valid in tiles]
        results: List[Tuple[np.ndarray, np.ndarray]] = []
        while len(results) < len(filled):
            chunk = filled[len(results):len(results) + self.limit]
            try:
                results += predict_pairs(self.model, [f[0] for f in chunk], [f[1] for f in chunk], self.mean,
                                         self.std, self.device)
            except torch.cuda.OutOfMemoryError:
                if len(chunk) == 1:
                    raise
                self.limit = (len(chunk) + 1) // 2
                torch.cuda.empty_cache()
        return results


def _choose_bands_hint(card: Any, expected: int, used: int, before: str) -> str:
    """How to pick the model's bands from images with more: their red, green and blue for an RGB model (when
    the images say which those are), else any `expected` of them, with BANDS."""
    if expected >= used:
        return ""
    wanted = model_colour_bands(card.bands, before)
    if wanted:
        return (f"; choose the images' {', '.join(name.lower() for name in card.bands)} bands, "
                f"{', '.join(map(str, wanted))} (BANDS)")
    return f"; choose {expected} of the images' bands, in the model's order (BANDS)"


def _check_bands(before_bands: int, after_bands: int, checkpoint: Optional[Checkpoint],
                 chosen: Optional[Sequence[int]] = None, before: str = "") -> None:
    if before_bands != after_bands:
        raise RSLabError(
            f"the before image has {before_bands} bands but the after image has {after_bands}; "
            "both dates need the same bands"
        )
    if chosen:
        check_bands(chosen, before_bands, "the before image")
    used = len(chosen) if chosen else before_bands
    if checkpoint is not None:
        expected = checkpoint.card.arguments.get("bands")
        if expected != used:
            names = ", ".join(checkpoint.card.bands) if checkpoint.card.bands else f"{expected} bands"
            what = f"{used} bands are chosen" if chosen else f"the images have {used}"
            hint = trained_bands_hint(checkpoint.card) or (
                "" if chosen else _choose_bands_hint(checkpoint.card, expected, used, before))
            raise RSLabError(
                f"the model was trained for {expected} bands ({names}) but {what}{hint}; "
                f"{'or ' if hint else ''}pick a model trained for these bands, train one, or use the CVA method"
            )


def detect_changes(
    before: str,
    after: str,
    outputs: ChangeOutputs,
    params: ChangeParams = ChangeParams(),
    reference: Optional[str] = None,
    progress: Optional[ProgressFn] = None,
    cancelled: Optional[CancelledFn] = None,
) -> ChangeResult:
    """Write the change mask (and probability, uncertainty, report when asked) for a pair of rasters."""
    monitor = JobMonitor(progress, cancelled)
    monitor.step(0.0, "checking the inputs")
    check_output_paths({"change mask": outputs.change, "probability raster": outputs.probability,
                        "uncertainty raster": outputs.uncertainty, "report": outputs.report},
                       {"before image": before, "after image": after, "reference": reference, "model": params.model},
                       rasters=("change mask", "probability raster", "uncertainty raster"))
    info = raster_info(before)
    after_info = raster_info(after)
    checkpoint = load_change_model(params.model) if params.method == "arcdnet" else None
    _check_bands(info.count, after_info.count, checkpoint, params.bands, before)
    result = ChangeResult(outputs=outputs, method=params.method, threshold=params.threshold,
                          width=info.width, height=info.height, timings=monitor.timings,
                          inputs=absolute_paths({"before": before, "after": after, "reference": reference}))

    with tempfile.TemporaryDirectory(prefix="rslab-change-") as workdir:
        if params.bands:  # both dates read through VRTs of the chosen bands (first: then only those are warped)
            result.bands = list(params.bands)
            before = band_subset(before, params.bands, workdir, "before")
            after = band_subset(after, params.bands, workdir, "after")
        after_path, note = align_to(info, after, workdir, role="after image", resampling="bilinear",
                                    onto="before image")
        if note:
            result.notes.append(note)
        reference_path = None
        if reference:
            reference_path, ref_note = align_to(info, reference, workdir, role="reference", resampling="nearest",
                                              labels=True, onto="before image")
            if ref_note:
                result.notes.append(ref_note)
            result.reference_coding = params.reference_coding
            coding = coding_note(survey_reference(reference_path, monitor.sub(0.0, 0.02)), params.reference_coding)
            if coding:
                result.notes.append(coding)

        if checkpoint is not None:
            device = select_device(params.device)
            scorer = ModelScorer(checkpoint, device)
            # 0.02: after the reference's survey (stepping back to 0 moved the bar backwards)
            monitor.step(0.02, "sampling both dates (their value range against the model's)")
            with monitor.timed("statistics"):
                range_note = input_range_note([before, after_path], scorer.mean, scorer.std, check=monitor.check)
            order_note = (band_order_note(checkpoint.card.bands, band_descriptions(before))
                          or colour_order_note(checkpoint.card.bands, info.path, params.bands))
            result.notes.extend(note for note in (order_note, range_note) if note)
            result.device = describe_device(device)
            result.model = dict(checkpoint.card.summary(), path=os.path.abspath(checkpoint.path))

            score, score_many = scorer, scorer.many
            per_pass = scorer.limit = params.tiles_per_pass or scorer.tiles_per_pass(params.tile)
        else:
            monitor.step(0.02, "sampling both dates for CVA's scale and threshold")
            with monitor.timed("statistics"):
                cva = CvaScorer(before, after_path, check=monitor.check)
            result.device = "cpu (numpy)"
            result.model = {"method": "cva", "otsu_magnitude": cva.boundary}
            if cva.note:
                result.notes.append(cva.note)

            def score(a, b, valid):
                return cva(a, b)

            score_many, per_pass = None, 1  # CVA is numpy: one tile at a time

        specs = [("change", OutputSpec(outputs.change, 1, "uint8", MASK_NODATA, ("change (1) / no change (0)",)))]
        if outputs.probability:
            specs.append(("probability", OutputSpec(outputs.probability, 1, "float32", None, ("change probability",))))
        if outputs.uncertainty:
            specs.append(("uncertainty", OutputSpec(outputs.uncertainty, 1, "float32", None, ("uncertainty",))))

        def maps(prob, unc):
            named = {"change": (prob >= params.threshold).astype(np.uint8), "probability": prob, "uncertainty": unc}
            return [named[name] for name, _ in specs]

        def tile_fn(arrays, valid):
            return maps(*score(arrays[0], arrays[1], valid))

        def batch_fn(tiles):
            return [maps(prob, unc) for prob, unc in score_many([(a[0], a[1], v) for a, v in tiles])]

        with PendingOutputs() as pending:
            temp_specs = [OutputSpec(pending.temp(s.path), s.count, s.dtype, s.nodata, s.descriptions) for _, s in specs]
            with monitor.timed("detect"):
                # CVA is per pixel: windows covering the image once; the model needs full tiles with context
                tiling = TileSpec(params.tile, 0, "partition") if params.method == "cva" else \
                    TileSpec(params.tile, params.overlap, "centre")
                run_tiled([before, after_path], temp_specs, tile_fn, tiling,
                          monitor.sub(0.02, 0.9 if reference_path else 0.98),
                          batch_fn=batch_fn if per_pass > 1 else None, batch=per_pass)
            if reference_path:
                paths = {name: s.path for (name, _), s in zip(specs, temp_specs)}
                with monitor.timed("evaluate"):
                    result.metrics = evaluate_change(paths["change"], reference_path, paths.get("uncertainty"),
                                                     monitor.sub(0.9, 0.98), coding=params.reference_coding)
            add_overviews_to([s.path for s in temp_specs], monitor.sub(0.98, 1.0))
            if outputs.report:
                write_json(pending.temp(outputs.report), result.report(), indent=1, default=str)
    monitor.done("done")
    return result


def evaluate_change(
    change: str, reference: str, uncertainty: Optional[str] = None, monitor: Optional[JobMonitor] = None,
    tile: int = 1024, coding: str = "binary",
) -> Dict[str, Any]:
    """Scores of a change mask against a reference read under `coding`, by windows, over its labelled pixels.

    With an uncertainty raster also `uncertainty_auc`: the ROC-AUC of the
    uncertainty for separating wrongly from rightly classified pixels.
    `pixels` counts the pixels compared (valid in both and labelled).
    """
    monitor = monitor or JobMonitor()
    confusion = Confusion()
    auc = HistogramAUC()
    with gdal_env(), open_raster(change) as c, open_raster(reference) as r:
        u = open_raster(uncertainty) if uncertainty else None
        try:
            windows = windows_for(c, tile)  # every pixel counted once
            for i, window in enumerate(windows):
                monitor.step(i / len(windows), "comparing with the reference")
                pred, valid = read_window(c, window)
                actual, labelled = read_reference(r, window, coding)
                ok = valid & labelled
                predicted = pred[0] == 1
                confusion.update(predicted, actual, ok)
                if u is not None:
                    unc, unc_valid = read_window(u, window)
                    auc.update(unc[0], predicted != actual, ok & unc_valid)
        finally:
            if u is not None:
                u.close()
    scores: Dict[str, Any] = confusion.scores()
    if uncertainty:
        scores["uncertainty_auc"] = auc.auc()
    return scores
