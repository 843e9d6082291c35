"""A new anomaly mask from scores already written (core/anomaly_mask.py), and what a mask finds of a reference."""
from __future__ import annotations

import json

import numpy as np
import pytest
import rasterio

from rslab.core.anomaly import AnomalyOutputs, detect_anomalies
from rslab.core.anomaly_mask import MaskOutputs, threshold_scores
from rslab.core.anomaly_params import AnomalyParams
from rslab.core.errors import JobCancelled, RSLabError


@pytest.fixture(scope="module")
def rx_run(tmp_path_factory, beach2):
    """Global RX on real ABU beach-2 with its reference and a mask at 1 %: (folder, result, reference)."""
    cube, gt = beach2
    folder = tmp_path_factory.mktemp("rx")
    outputs = AnomalyOutputs(str(folder / "scores.tif"), str(folder / "mask.tif"), str(folder / "report.json"))
    result = detect_anomalies(str(cube), outputs, AnomalyParams(method="rx", false_alarm_rate=0.01), reference=str(gt))
    return folder, result, gt


def _read(path):
    with rasterio.open(path) as ds:
        return ds.read(1), ds.nodata


def _counts(scores: np.ndarray, truth: np.ndarray, threshold: float) -> dict:
    """What a mask cut at `threshold` finds, counted on whole arrays (the engine counts by windows)."""
    valid, flagged = np.isfinite(scores), scores > threshold
    return {"anomalies_flagged": int((flagged & truth & valid).sum()), "anomaly_pixels": int((truth & valid).sum()),
            "false_alarms": int((flagged & ~truth & valid).sum()), "background_pixels": int((~truth & valid).sum())}


def test_the_same_rate_gives_the_mask_detection_wrote(rx_run, tmp_path):
    folder, detected, gt = rx_run
    result = threshold_scores(str(folder / "scores.tif"), MaskOutputs(str(tmp_path / "m.tif"),
                                                                     str(tmp_path / "r.json")), 0.01, str(gt))
    mask, nodata = _read(tmp_path / "m.tif")
    assert np.array_equal(mask, _read(folder / "mask.tif")[0]) and nodata == 255
    assert (result.threshold, result.mask_pixels) == (detected.threshold, detected.mask_pixels) == \
        (result.threshold, 100)
    assert result.mask_detection == detected.mask_detection
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["mask_pixels"] == 100 and report["false_alarm_rate"] == 0.01 and report["valid_pixels"] == 10_000
    assert report["outputs"]["mask"] == str(tmp_path / "m.tif") and report["inputs"]["reference"] == str(gt)
    assert json.loads((folder / "report.json").read_text())["mask_detection"] == detected.mask_detection


def test_what_a_mask_finds_is_counted_on_the_reference_and_lies_on_the_roc(rx_run, tmp_path):
    folder, detected, gt = rx_run
    scores, truth = _read(folder / "scores.tif")[0], _read(gt)[0] != 0
    for rate in (0.002, 0.01, 0.05):
        result = threshold_scores(str(folder / "scores.tif"), MaskOutputs(str(tmp_path / f"m{rate}.tif")), rate,
                                  str(gt))
        found = result.mask_detection
        assert {key: found[key] for key in _counts(scores, truth, result.threshold)} == \
            _counts(scores, truth, result.threshold)
        assert found["detection_rate"] == found["anomalies_flagged"] / found["anomaly_pixels"]
        assert found["false_alarm_rate"] == found["false_alarms"] / found["background_pixels"]
        # on the exact ROC detection computed (a staircase with a corner at each anomaly pixel's score): the
        # best detection at no more false alarms than the mask's
        roc = detected.roc
        reached = roc.detection[roc.false_alarm <= found["false_alarm_rate"] + 1e-12]
        assert reached.max() == pytest.approx(found["detection_rate"], abs=1e-12)
        # beach-2 holds repeated pixels: where they tie at the cut, fewer than asked lie above it (18 of 20 at 0.2 %)
        assert result.mask_pixels == found["anomalies_flagged"] + found["false_alarms"] == \
            np.count_nonzero(scores > result.threshold) <= int(rate * 10_000) < \
            np.count_nonzero(scores >= result.threshold)
    # a lower rate flags a subset of a higher one's pixels
    low, high = _read(tmp_path / "m0.002.tif")[0], _read(tmp_path / "m0.05.tif")[0]
    assert low.sum() == 18 and high.sum() == 499 and not np.any((low == 1) & (high == 0))


def test_a_score_raster_of_several_windows_and_nodata_is_cut_and_counted_once_per_pixel(rx_run, tmp_path):
    """The real scores tiled 3 x 3 (300 x 300: two windows a side), a block of them nodata."""
    folder, _, gt = rx_run
    scores = np.tile(_read(folder / "scores.tif")[0], (3, 3))
    scores[40:90, 130:260] = np.nan
    truth = np.tile(_read(gt)[0] != 0, (3, 3))
    for name, array, dtype in (("big_scores.tif", scores, "float32"), ("big_gt.tif", truth, "uint8")):
        with rasterio.open(tmp_path / name, "w", driver="GTiff", width=300, height=300, count=1, dtype=dtype,
                           tiled=True, blockxsize=128, blockysize=128) as dst:
            dst.write(array.astype(dtype), 1)
    result = threshold_scores(str(tmp_path / "big_scores.tif"), MaskOutputs(str(tmp_path / "m.tif")), 0.003,
                              str(tmp_path / "big_gt.tif"))
    valid = np.isfinite(scores)
    assert result.valid_pixels == valid.sum() == 90_000 - 50 * 130
    asked = int(0.003 * valid.sum())
    order = np.sort(scores[valid])[::-1]
    assert result.threshold == order[asked]  # the (k+1)-th highest valid score
    mask = _read(tmp_path / "m.tif")[0]
    assert np.array_equal(mask == 255, ~valid) and np.array_equal(mask == 1, valid & (scores > result.threshold))
    assert result.mask_pixels == (mask == 1).sum() <= asked
    found = result.mask_detection
    assert {key: found[key] for key in _counts(scores, truth, result.threshold)} == \
        _counts(scores, truth, result.threshold)


def test_bad_input_stops_with_a_message_and_writes_nothing(rx_run, beach2, tmp_path):
    folder, _, gt = rx_run
    cube = beach2[0]
    scores = str(folder / "scores.tif")
    mask = tmp_path / "m.tif"
    cases = [
        ((str(cube), MaskOutputs(str(mask)), 0.01), "has 193 bands; give the one-band scores raster"),
        ((scores, MaskOutputs(str(mask)), 0.0), "above 0 and below 1, got 0.0"),
        ((scores, MaskOutputs(str(mask)), 1.0), "above 0 and below 1, got 1.0"),
        ((scores, MaskOutputs(scores), 0.01), "would replace the scores raster"),
        ((scores, MaskOutputs(str(tmp_path / "m.img")), 0.01), "give it a .tif name"),
        ((scores, MaskOutputs(str(mask), str(mask)), 0.01), "are one file"),
    ]
    for args, message in cases:
        with pytest.raises(RSLabError, match=message):
            threshold_scores(*args)
    # a reference of another size, neither georeferenced: no way to align them
    with rasterio.open(tmp_path / "small_gt.tif", "w", driver="GTiff", width=50, height=50, count=1,
                       dtype="uint8") as dst:
        dst.write(np.eye(50, dtype=np.uint8), 1)
    with pytest.raises(RSLabError, match="reference"):
        threshold_scores(scores, MaskOutputs(str(mask)), 0.01, str(tmp_path / "small_gt.tif"))
    # a reference without anomalies
    with rasterio.open(tmp_path / "empty_gt.tif", "w", driver="GTiff", width=100, height=100, count=1,
                       dtype="uint8") as dst:
        dst.write(np.zeros((100, 100), np.uint8), 1)
    with pytest.raises(RSLabError, match="marks no anomaly pixel"):
        threshold_scores(scores, MaskOutputs(str(mask)), 0.01, str(tmp_path / "empty_gt.tif"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty_gt.tif", "small_gt.tif"]


def test_a_cancel_leaves_no_mask(rx_run, tmp_path):
    folder, _, gt = rx_run
    seen = []
    threshold_scores(str(folder / "scores.tif"), MaskOutputs(str(tmp_path / "m.tif")), 0.01, str(gt),
                     progress=lambda fraction, text: seen.append((fraction, text)))
    fractions = [fraction for fraction, _ in seen]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    for phase in ("the false-alarm threshold", "the mask against the reference"):
        asked = []
        with pytest.raises(JobCancelled):
            threshold_scores(str(folder / "scores.tif"), MaskOutputs(str(tmp_path / "c.tif")), 0.01, str(gt),
                             progress=lambda fraction, text: asked.append(text), cancelled=lambda: phase in asked)
        assert not (tmp_path / "c.tif").exists()
