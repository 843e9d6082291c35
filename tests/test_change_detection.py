"""Change detection in core on real pairs: outputs, metrics, grids, nodata and bad input."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
from levir import LEVIR, levir_pair
import rasterio
from rasterio.crs import CRS
from rasterio.transform import Affine, from_origin
from rasterio.warp import Resampling, calculate_default_transform, reproject
from rasterio.windows import Window

from rslab.core.change_data import pairs_from_folder, split_validation
from rslab.core.change_detection import (
    ChangeOutputs,
    ChangeParams,
    detect_changes,
    evaluate_change,
    input_range_note,
    otsu_threshold,
)
from rslab.core.change_reference import reference_labels
from rslab.core.checkpoint import ModelCard, load_checkpoint, save_checkpoint
from rslab.core.errors import JobCancelled, RSLabError
from rslab.core.metrics import Confusion, HistogramAUC

PAIR = "test_102_0512_0000.png"


def _levir(shared_data, name=PAIR):
    """PAIR's before, after and label paths."""
    pair = levir_pair(shared_data, name)
    return pair.before, pair.after, pair.label


def _outputs(folder, report=True):
    return ChangeOutputs(str(folder / "change.tif"), str(folder / "prob.tif"), str(folder / "unc.tif"),
                         str(folder / "report.json") if report else None)


def _read(path):
    with rasterio.open(path) as ds:
        return ds.read(1), ds.profile


def test_cva_on_a_real_pair_with_reference(tmp_path, shared_data):
    before, after, label = _levir(shared_data)
    result = detect_changes(before, after, _outputs(tmp_path), ChangeParams(method="cva"), reference=label)
    change, profile = _read(tmp_path / "change.tif")
    prob, _ = _read(tmp_path / "prob.tif")
    unc, _ = _read(tmp_path / "unc.tif")
    assert profile["dtype"] == "uint8" and profile["nodata"] == 255 and change.shape == (256, 256)
    assert set(np.unique(change)) <= {0, 1}
    assert np.array_equal(change == 1, prob >= 0.5)
    assert 0 <= unc.min() and unc.max() <= 1
    assert result.metrics["f1"] > 0.5  # this LEVIR pair is bare land turning into buildings: CVA does well
    truth = _read(label)[0] > 0
    tp = int(((change == 1) & truth).sum())
    assert result.metrics["recall"] == pytest.approx(tp / truth.sum())
    # the uncertainty's AUC for finding the wrongly classified pixels, against the rank statistic
    from scipy.stats import mannwhitneyu

    wrong = (change == 1) != truth
    exact = mannwhitneyu(unc[wrong], unc[~wrong]).statistic / (wrong.sum() * (~wrong).sum())
    assert result.metrics["uncertainty_auc"] == pytest.approx(exact, abs=2e-3) and exact > 0.5
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["method"] == "cva" and report["metrics"]["f1"] == pytest.approx(result.metrics["f1"])
    # the files it read and wrote, as absolute paths: a saved report traces back to its inputs
    assert report["inputs"] == {"before": os.path.abspath(before), "after": os.path.abspath(after),
                                "reference": os.path.abspath(label)}
    assert report["outputs"]["change"] == str(tmp_path / "change.tif")
    assert report["timings"]["detect"] > 0 and report["device"] == "cpu (numpy)"


def test_cva_marks_exactly_the_pixels_whose_scaled_change_vector_passes_its_cut(tmp_path, shared_data):
    """CVA's magnitude computed here (each band's difference over that band's spread across both dates, the
    vector's length): F1 floors alone passed with the magnitude computed as a plain sum of differences."""
    before, after, _ = _levir(shared_data)
    result = detect_changes(before, after, _outputs(tmp_path, report=False), ChangeParams(method="cva"))
    with rasterio.open(before) as a, rasterio.open(after) as b:
        xa, xb = a.read().astype(np.float64), b.read().astype(np.float64)
    spread = np.concatenate([xa, xb], axis=2).reshape(len(xa), -1).std(axis=1)
    magnitude = np.sqrt((((xb - xa) / spread[:, None, None]) ** 2).sum(axis=0))
    change, _ = _read(tmp_path / "change.tif")
    cut = result.model["otsu_magnitude"]
    disagree = (change == 1) != (magnitude > cut)
    assert 0.01 < (change == 1).mean() < 0.5
    assert disagree.sum() <= 2 and np.allclose(magnitude[disagree], cut, rtol=1e-4)  # float32 at the cut


def test_arcdnet_with_a_checkpoint_keeps_grid_and_reports(tmp_path, shared_data, tiny_change_checkpoint):
    before, after, label = _levir(shared_data)
    result = detect_changes(before, after, _outputs(tmp_path), ChangeParams(model=tiny_change_checkpoint, tile=128, overlap=32),
                            reference=label)
    assert result.device.startswith("cpu") or result.device.startswith("cuda")
    assert result.model["architecture"] == "arcdnet" and result.model["task"] == "change_detection"
    for key in ("precision", "recall", "f1", "iou", "oa", "kappa", "uncertainty_auc"):
        assert key in result.metrics
    prob, profile = _read(tmp_path / "prob.tif")
    assert prob.dtype == np.float32 and np.isfinite(prob).all() and (0 <= prob).all() and (prob <= 1).all()
    # The map is the probability at the threshold, and the report's figures are those of the files written.
    change, _ = _read(tmp_path / "change.tif")
    truth = _read(label)[0] > 0
    assert np.array_equal(change == 1, prob >= ChangeParams().threshold)
    hits = int(((change == 1) & truth).sum())
    assert result.metrics["recall"] == pytest.approx(hits / truth.sum())
    assert result.metrics["precision"] == pytest.approx(hits / max(int((change == 1).sum()), 1))
    from osgeo import gdal

    assert gdal.Open(str(tmp_path / "change.tif")).GetGeoTransform(can_return_null=True) is None  # like the PNG


@pytest.fixture()
def oscd(shared_data):
    root = shared_data / "change" / "oscd_s2"
    return str(root / "rennes_t1_S2_13b_10m.tif"), str(root / "rennes_t2_S2_13b_10m.tif"), str(root / "rennes_cm.tif")


def test_georeferenced_multispectral_pair_with_after_on_another_grid(tmp_path, oscd):
    before, after, cm = oscd
    moved = tmp_path / "after_utm.tif"
    with rasterio.open(after) as src:
        dst_crs = CRS.from_epsg(32630)
        transform, width, height = calculate_default_transform(src.crs, dst_crs, src.width, src.height, *src.bounds)
        profile = dict(src.profile, crs=dst_crs, transform=transform, width=width, height=height)
        with rasterio.open(moved, "w", **profile) as dst:
            for band in range(1, src.count + 1):
                reproject(rasterio.band(src, band), rasterio.band(dst, band), resampling=Resampling.bilinear)
    result = detect_changes(before, str(moved), _outputs(tmp_path / "out"), ChangeParams(method="cva"), reference=cm)
    assert any("resampled" in n and "after image" in n for n in result.notes)
    with rasterio.open(before) as b, rasterio.open(tmp_path / "out" / "change.tif") as c:
        assert (c.crs, c.transform, c.width, c.height) == (b.crs, b.transform, b.width, b.height)
    assert result.metrics["pixels"] > 0.9 * result.width * result.height


@pytest.fixture()
def nanjing(shared_data):
    """The Landsat-5 Nanjing pair (6 bands, UTM 50N) and its partial reference: 0 unlabelled, 1 unchanged, 2 changed."""
    root = shared_data / "change" / "landsat_nanjing"
    return (str(root / "Nanjing_t1_TM6b.tif"), str(root / "Nanjing_t2_TM6b.tif"),
            str(root / "Nanjing_reference_0unl_1unch_2ch.tif"))


def test_a_partial_reference_is_scored_on_its_labelled_pixels_only(tmp_path, nanjing):
    before, after, reference = nanjing
    partial = detect_changes(before, after, _outputs(tmp_path / "partial"),
                             ChangeParams(method="cva", reference_coding="partial"), reference=reference)
    values = _read(reference)[0]
    change = _read(tmp_path / "partial" / "change.tif")[0] == 1
    labelled, truth = values > 0, values == 2
    expected = Confusion()
    expected.update(change[labelled], truth[labelled])
    assert partial.metrics["pixels"] == int(labelled.sum()) == 14756
    for key, value in expected.scores().items():
        assert partial.metrics[key] == pytest.approx(value)
    assert partial.metrics["f1"] > 0.7 and partial.notes == []  # CVA finds Nanjing's changes well
    report = json.loads((tmp_path / "partial" / "report.json").read_text())
    assert report["reference_coding"] == "partial"

    # read as binary (the default), every labelled pixel counts as change: meaningless scores, and a note says so
    binary = detect_changes(before, after, _outputs(tmp_path / "binary"), ChangeParams(method="cva"),
                            reference=reference)
    assert binary.metrics["pixels"] == 800 * 800 and binary.metrics["f1"] < 0.1
    assert any("partial coding" in note for note in binary.notes)
    # windows of a size that does not divide 800: every pixel still counted once
    for tile in (300, 256, 799):
        again = evaluate_change(str(tmp_path / "partial" / "change.tif"), reference, tile=tile, coding="partial")
        assert {k: again[k] for k in expected.scores()} == pytest.approx({k: partial.metrics[k] for k in expected.scores()})


def test_reference_codings_read_values():
    values = np.array([[0, 1, 2, 7]])
    changed, labelled = reference_labels(values, "binary")
    assert changed.tolist() == [[False, True, True, True]] and labelled.all()
    changed, labelled = reference_labels(values, "partial")
    assert changed.tolist() == [[False, False, True, False]] and labelled.tolist() == [[False, True, True, True]]
    with pytest.raises(RSLabError, match="binary, partial"):
        ChangeParams(reference_coding="0/1")


def test_a_reference_the_partial_coding_cannot_read_stops_before_any_output(tmp_path, nanjing):
    before, after, reference = nanjing
    with rasterio.open(reference) as src:
        values, profile = src.read(1), src.profile
    odd, empty = values.copy(), np.zeros_like(values)
    odd[400, 400] = 3
    cases = ((odd, "value 3 in the reference"), (empty, "no pixel of the reference is labelled"))
    for i, (data, message) in enumerate(cases):
        path = tmp_path / f"reference_{i}.tif"
        with rasterio.open(path, "w", **profile) as dst:
            dst.write(data, 1)
        out = tmp_path / f"out_{i}"
        with pytest.raises(RSLabError, match=message):
            detect_changes(before, after, _outputs(out), ChangeParams(method="cva", reference_coding="partial"),
                           reference=str(path))
        assert not out.exists() or os.listdir(out) == []


def test_a_16_bit_image_through_an_8_bit_model_gets_a_note(tmp_path, oscd, shared_data, tiny_change_checkpoint):
    """Sentinel-2 reflectance as an RGB composite (bands 4-3-2, uint16) runs, but a note says the values are off."""
    composite = []
    for i, path in enumerate(oscd[:2]):
        with rasterio.open(path) as src:
            data, profile = src.read([4, 3, 2]), dict(src.profile, count=3)
        composite.append(tmp_path / f"rgb_{i}.tif")
        with rasterio.open(composite[-1], "w", **profile) as dst:
            dst.write(data)
    result = detect_changes(str(composite[0]), str(composite[1]), _outputs(tmp_path / "out"),
                            ChangeParams(model=tiny_change_checkpoint, tile=256, overlap=32))
    notes = [n for n in result.notes if "far from those the model was trained on" in n]
    assert len(notes) == 1 and "8-bit, 0-255" in notes[0]
    # 8-bit pairs are in range: the LEVIR pair, the rasterio Landsat RGB (nodata 0 around the scene)
    before, after, _ = _levir(shared_data)
    imagenet = ([123.675, 116.28, 103.53], [58.395, 57.12, 57.375])
    assert input_range_note([before, after], *imagenet) is None
    landsat = str(shared_data / "georeferenced" / "rasterio_RGB.byte.tif")
    assert input_range_note([landsat, landsat], *imagenet) is None
    # the same reflectance as 0..1 floats: means within 2.1 stds of ImageNet's, but the spread is far too small
    with rasterio.open(composite[0]) as src:
        data, profile = src.read().astype(np.float32) / 10000, dict(src.profile, dtype="float32")
    with rasterio.open(tmp_path / "reflectance.tif", "w", **profile) as dst:
        dst.write(data)
    assert input_range_note([str(tmp_path / "reflectance.tif")], *imagenet) is not None
    # a 13-band model's statistics (not ImageNet's, another length): the note names the training range
    # (this raised a numpy broadcast error before)
    bercy = [str(shared_data / "change" / "oscd_s2" / f"bercy_{d}_S2_13b_10m.tif") for d in ("t1", "t2")]
    note = input_range_note(bercy, [100.0] * 13, [10.0] * 13)
    assert note is not None and "the range of its training images" in note


def test_an_after_image_covering_part_of_the_before_grid_leaves_nodata_outside(tmp_path, oscd):
    """The 13-band after image in UTM, cut to its western half: outside it every output is nodata, with all
    bands and with chosen ones (the warped VRT's alpha band marks it; GDAL alone ignores a 14th-band alpha)."""
    before, after, cm = oscd
    half = tmp_path / "after_west_utm.tif"
    with rasterio.open(after) as src:
        dst_crs = CRS.from_epsg(32630)
        transform, width, height = calculate_default_transform(src.crs, dst_crs, src.width, src.height, *src.bounds)
        profile = dict(src.profile, crs=dst_crs, transform=transform, width=width // 2, height=height)
        with rasterio.open(half, "w", **profile) as dst:
            for band in range(1, src.count + 1):
                reproject(rasterio.band(src, band), rasterio.band(dst, band), resampling=Resampling.bilinear)
    for bands in (None, (2, 3, 4, 8)):
        out = tmp_path / f"out_{bool(bands)}"
        result = detect_changes(before, str(half), _outputs(out), ChangeParams(method="cva", bands=bands), reference=cm)
        change, _ = _read(out / "change.tif")
        unc, _ = _read(out / "unc.tif")
        outside = change == 255
        assert 0.45 < outside.mean() < 0.55 and outside[:, -50:].all() and not outside[:, :50].any()
        assert np.isnan(unc[outside]).all() and np.isfinite(unc[~outside]).all()
        assert result.metrics["pixels"] == int((~outside).sum())


def test_chosen_bands_give_what_a_cut_by_hand_gives(tmp_path, oscd, tiny_change_checkpoint):
    before, after, cm = oscd
    bands = (8, 4, 3)  # near-infrared false colour, in that order
    cut = []
    for path in (before, after):
        with rasterio.open(path) as src:
            data, profile = src.read(list(bands)), dict(src.profile, count=len(bands))
        cut.append(tmp_path / f"cut_{os.path.basename(path)}")
        with rasterio.open(cut[-1], "w", **profile) as dst:
            dst.write(data)
    chosen = detect_changes(before, after, _outputs(tmp_path / "chosen"), ChangeParams(method="cva", bands=bands),
                            reference=cm)
    by_hand = detect_changes(str(cut[0]), str(cut[1]), _outputs(tmp_path / "by_hand"), ChangeParams(method="cva"),
                             reference=cm)
    assert chosen.bands == list(bands) and chosen.metrics == by_hand.metrics
    assert np.array_equal(_read(tmp_path / "chosen" / "prob.tif")[0], _read(tmp_path / "by_hand" / "prob.tif")[0])
    out = tmp_path / "bad"
    for wrong, message in (((0, 2), "there is no band 0"), ((2, 2), "names a band twice"),
                           ((2, 3, 4, 8), "trained for 3 bands .* but 4 bands are chosen")):
        params = ChangeParams(method="cva" if wrong != (2, 3, 4, 8) else "arcdnet", bands=wrong,
                              model=None if wrong != (2, 3, 4, 8) else tiny_change_checkpoint)
        with pytest.raises(RSLabError, match=message):
            detect_changes(before, after, _outputs(out), params)
    assert not out.exists() or os.listdir(out) == []


def test_bad_inputs_stop_with_clear_messages_and_no_files(tmp_path, shared_data, samples, oscd, tiny_change_checkpoint):
    before, after, _ = _levir(shared_data)
    out = tmp_path / "out"
    ms_before, ms_after, _ = oscd
    cases = [
        (before, ms_after, ChangeParams(method="cva"), "bands"),  # 3 vs 13 bands
        (ms_before, ms_after, ChangeParams(), r"trained for 3 bands .* have 13; choose the images' red, green, blue "
                                              r"bands, 4, 3, 2 \(BANDS\)"),
        (ms_before, ms_after, ChangeParams(model=tiny_change_checkpoint), "trained for 3 bands"),
        (before, after, ChangeParams(model=str(tmp_path / "nope.pt")), "not found"),
        (before, str(tmp_path / "missing.tif"), ChangeParams(method="cva"), "not found"),
    ]
    for b, a, params, message in cases:
        with pytest.raises(RSLabError, match=message):
            detect_changes(b, a, _outputs(out), params)
    # no overlap: the same image placed 100 km away
    far = tmp_path / "far.tif"
    with rasterio.open(ms_after) as src:
        t = src.transform
        with rasterio.open(far, "w", **dict(src.profile, transform=Affine(t.a, t.b, t.c + 1.0, t.d, t.e, t.f))) as dst:
            dst.write(src.read())
    with pytest.raises(RSLabError, match="do not overlap"):
        detect_changes(ms_before, str(far), _outputs(out), ChangeParams(method="cva"))
    # a checkpoint of another task
    other = tmp_path / "other.pt"
    ckpt = load_checkpoint(tiny_change_checkpoint)
    card = ModelCard(**dict(ckpt.card.__dict__, task="anomaly_detection"))
    save_checkpoint(str(other), ckpt.state_dict, card)
    with pytest.raises(RSLabError, match=r"is an anomaly detection \(BSDM denoiser\) checkpoint; this job needs a change detection model"):
        detect_changes(before, after, _outputs(out), ChangeParams(model=str(other)))
    # one georeferenced, one not
    with pytest.raises(RSLabError, match="georeferencing"):
        detect_changes(str(samples / "rasterio_RGB.byte.tif"), before, _outputs(out), ChangeParams(method="cva"))
    for bad in (dict(method="magic"), dict(threshold=1.0), dict(tile=100)):
        with pytest.raises(RSLabError):
            ChangeParams(**bad)
    assert not out.exists() or os.listdir(out) == []


def test_small_raster_and_nodata_areas(tmp_path, shared_data, tiny_change_checkpoint):
    before, after, _ = _levir(shared_data)
    paths = []
    for i, src_path in enumerate((before, after)):
        with rasterio.open(src_path) as src:
            data = src.read()[:, :45, :70].copy()
        data[:, :10, :20] = 0  # a nodata corner
        path = tmp_path / f"small_{i}.tif"
        with rasterio.open(path, "w", driver="GTiff", width=70, height=45, count=3, dtype="uint8", nodata=0,
                           crs=CRS.from_epsg(32650), transform=from_origin(0, 0, 0.5, 0.5)) as dst:
            dst.write(data)
        paths.append(str(path))
    for params in (ChangeParams(model=tiny_change_checkpoint), ChangeParams(method="cva")):
        detect_changes(paths[0], paths[1], _outputs(tmp_path / params.method, report=False), params)
        change, profile = _read(tmp_path / params.method / "change.tif")
        unc, _ = _read(tmp_path / params.method / "unc.tif")
        assert change.shape == (45, 70) and profile["crs"] == CRS.from_epsg(32650)
        assert (change[:10, :20] == 255).all() and np.isnan(unc[:10, :20]).all()
        assert set(np.unique(change[10:, 20:])) <= {0, 1} and np.isfinite(unc[10:, 20:]).all()


def test_cancel_leaves_no_output(tmp_path, shared_data):
    before, after, label = _levir(shared_data)
    calls = {"n": 0}

    def cancelled():
        calls["n"] += 1
        return calls["n"] > 5

    with pytest.raises(JobCancelled):
        detect_changes(before, after, _outputs(tmp_path), ChangeParams(method="cva", tile=64, overlap=0),
                       reference=label, cancelled=cancelled)
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("method", ["cva", "arcdnet"])
def test_progress_never_steps_back_and_the_sampling_reads_stop_on_cancel(tmp_path, shared_data, method,
                                                                         tiny_change_checkpoint, monkeypatch):
    """After the reference's survey (2 %) the sampling step reported 0 again; CVA's four decimated reads of both
    dates (6 s at 6000 x 6000) ran without a cancel check between them."""
    import rslab.core.change_data as change_data
    import rslab.core.change_detection as change_detection

    before, after, label = _levir(shared_data)
    params = ChangeParams(method=method, model=tiny_change_checkpoint if method == "arcdnet" else None)
    seen = []
    detect_changes(before, after, _outputs(tmp_path / "run"), params, reference=label,
                   progress=lambda fraction, text: seen.append((fraction, text)))
    fractions = [f for f, _ in seen]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    reads, real = [], change_detection.read_decimated

    def counted(*args, **kwargs):
        reads.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(change_detection, "read_decimated", counted)
    monkeypatch.setattr(change_data, "read_decimated", counted)
    asked = []
    with pytest.raises(JobCancelled):
        detect_changes(before, after, _outputs(tmp_path / "cancel"), params, reference=label,
                       progress=lambda fraction, text: asked.append(text),
                       cancelled=lambda: any(text.startswith("sampling both dates") for text in asked)
                       and len(reads) >= 2)
    assert len(reads) == 2  # stopped between the reads, not after all four (the model's sampling: both of two)
    assert not os.path.exists(tmp_path / "cancel") or os.listdir(tmp_path / "cancel") == []


def test_metrics_match_their_definitions(tmp_path, shared_data):
    rng = np.random.default_rng(0)
    _, _, label = _levir(shared_data)
    truth = _read(label)[0] > 0
    prediction = truth ^ (rng.random(truth.shape) < 0.1)
    confusion = Confusion()
    confusion.update(prediction, truth)
    s = confusion.scores()
    tp, fp = (prediction & truth).sum(), (prediction & ~truth).sum()
    fn, tn = (~prediction & truth).sum(), (~prediction & ~truth).sum()
    n = truth.size
    oa = (tp + tn) / n
    pe = ((tp + fn) * (tp + fp) + (tn + fp) * (tn + fn)) / n ** 2
    assert s["iou"] == pytest.approx(tp / (tp + fp + fn))
    assert s["kappa"] == pytest.approx((oa - pe) / (1 - pe))
    assert s["f1"] == pytest.approx(2 * tp / (2 * tp + fp + fn))
    # histogram AUC against the exact rank statistic (Mann-Whitney U)
    from scipy.stats import mannwhitneyu

    scores = np.clip(rng.normal(0.4, 0.15, truth.shape) + 0.2 * truth, 0, 1)
    auc = HistogramAUC()
    auc.update(scores, truth)
    exact = mannwhitneyu(scores[truth], scores[~truth]).statistic / (truth.sum() * (~truth).sum())
    assert auc.auc() == pytest.approx(exact, abs=1e-3)
    assert HistogramAUC().auc() is None
    # counts of a 4e9-pixel class: the int64 products overflowed (an AUC of 1.2); the same shares, the same AUC
    big = HistogramAUC(positives=auc.positives * 4_000_000, negatives=auc.negatives * 4_000_000)
    assert big.positives.sum() > 3e9 and big.auc() == pytest.approx(auc.auc(), abs=1e-12)


def test_otsu_and_validation_split(shared_data):
    values = np.concatenate([np.random.default_rng(0).normal(1, 0.2, 5000), np.random.default_rng(1).normal(5, 0.5, 1000)])
    assert 1.5 < otsu_threshold(values) < 4.0
    pairs = pairs_from_folder(str(shared_data / LEVIR))
    train, val = split_validation(pairs, 0.2, seed=3)
    assert len(val) == 2 and len(train) == 9 and not set(p.name for p in val) & set(p.name for p in train)
    assert split_validation(pairs, 0.2, seed=3) == (train, val)
    with pytest.raises(RSLabError, match="A/, B/ and label/"):
        pairs_from_folder(str(shared_data / "change" / "oscd_s2"))


def test_default_weights_never_saw_the_held_out_pairs():
    import importlib.util
    from pathlib import Path

    from rslab.core.checkpoint import read_card
    from rslab.core.weights import default_checkpoint

    script = Path(__file__).resolve().parent.parent / "scripts" / "train_default_change_detector.py"
    spec = importlib.util.spec_from_file_location("train_default", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    card = read_card(default_checkpoint("change_detection"))
    seen = set(card.training["train_pairs"]) | set(card.training["validation_pairs"])
    assert not seen & set(module.HELD_OUT)
    assert card.arguments["bands"] == 3 and card.task == "change_detection"
    size_mb = sum(p.stat().st_size for p in Path(default_checkpoint("change_detection")).parent.glob("*.pt")) / 1e6
    assert size_mb < 20  # all shipped weights together


def _reproject(source, target, dst_crs, resampling):
    with rasterio.open(source) as src:
        transform, width, height = calculate_default_transform(src.crs, dst_crs, src.width, src.height, *src.bounds)
        profile = dict(src.profile, crs=dst_crs, transform=transform, width=width, height=height)
        target.parent.mkdir(parents=True, exist_ok=True)
        with rasterio.open(target, "w", **profile) as dst:
            for band in range(1, src.count + 1):
                reproject(rasterio.band(src, band), rasterio.band(dst, band), resampling=resampling)
    return str(target)


def test_an_after_image_and_a_reference_of_one_file_name_are_each_resampled(tmp_path, oscd):
    """Both on another grid and both called scene.tif (B/ and label/, as LEVIR-style folders name them)."""
    before, after, cm = oscd
    utm = CRS.from_epsg(32630)
    same = [_reproject(after, tmp_path / "B" / "scene.tif", utm, Resampling.bilinear),
            _reproject(cm, tmp_path / "label" / "scene.tif", utm, Resampling.nearest)]
    apart = [_reproject(after, tmp_path / "other" / "after.tif", utm, Resampling.bilinear),
             _reproject(cm, tmp_path / "other" / "cm.tif", utm, Resampling.nearest)]
    results = [detect_changes(before, a, _outputs(tmp_path / f"out{i}"), ChangeParams(method="cva"), reference=r)
               for i, (a, r) in enumerate((same, apart))]
    assert results[0].metrics == results[1].metrics  # CVA finds little of Rennes' urban change: no score asserted
    assert np.array_equal(_read(tmp_path / "out0" / "change.tif")[0], _read(tmp_path / "out1" / "change.tif")[0])


def test_cva_of_two_identical_dates_marks_no_change(tmp_path, shared_data):
    before, _, label = _levir(shared_data)
    result = detect_changes(before, before, _outputs(tmp_path), ChangeParams(method="cva"), reference=label)
    change, prob, unc = (_read(tmp_path / name)[0] for name in ("change.tif", "prob.tif", "unc.tif"))
    assert (change == 0).all() and (prob == 0).all() and (unc == 0).all()
    assert any("no change threshold" in note for note in result.notes)
    assert result.metrics["recall"] == 0 and result.metrics["oa"] == pytest.approx(1 - (_read(label)[0] > 0).mean())


def test_a_binary_reference_with_nodata_0_still_counts_its_unchanged_pixels(tmp_path, shared_data):
    """GIS tools set nodata 0 on 0/1 masks to draw them transparent; 0 stays 'no change'. Other nodata is unlabelled."""
    before, after, label = _levir(shared_data)
    detect_changes(before, after, _outputs(tmp_path / "out"), ChangeParams(method="cva"))
    change = str(tmp_path / "out" / "change.tif")
    plain = evaluate_change(change, label)
    values = _read(label)[0]
    for nodata, expected_pixels in ((0, values.size), (255, int((values == 0).sum()))):
        copy = tmp_path / f"label_nodata{nodata}.tif"
        with rasterio.open(copy, "w", driver="GTiff", width=256, height=256, count=1, dtype="uint8",
                           nodata=nodata) as dst:
            dst.write(values, 1)
        scores = evaluate_change(change, str(copy))
        assert scores["pixels"] == expected_pixels
    assert evaluate_change(change, str(tmp_path / "label_nodata0.tif")) == plain


def test_a_crs_on_one_raster_only_names_the_one_without(tmp_path, oscd):
    before, after, _ = oscd
    bare = tmp_path / "before_no_crs.tif"
    with rasterio.open(before) as src:
        with rasterio.open(bare, "w", **dict(src.profile, crs=None)) as dst:
            dst.write(src.read())
    moved = _reproject(after, tmp_path / "after_utm.tif", CRS.from_epsg(32630), Resampling.bilinear)
    with pytest.raises(RSLabError, match="the before image's file has none; write one into it .*Assign Projection"):
        detect_changes(str(bare), moved, _outputs(tmp_path / "out"), ChangeParams(method="cva"))
    with pytest.raises(RSLabError, match="the after image.s file has none"):
        plain_after = tmp_path / "after_no_crs.tif"
        with rasterio.open(moved) as src:
            with rasterio.open(plain_after, "w", **dict(src.profile, crs=None)) as dst:
                dst.write(src.read())
        detect_changes(before, str(plain_after), _outputs(tmp_path / "out"), ChangeParams(method="cva"))


def test_outputs_naming_an_input_or_each_other_are_refused(tmp_path, nanjing):
    """The change mask used to replace the before image it was computed from (a 6-band scene became a 1-band mask)."""
    import shutil

    before, after, reference = (shutil.copy(path, tmp_path) for path in nanjing)
    kept = {path: open(path, "rb").read() for path in (before, after, reference)}
    cases = [(ChangeOutputs(before), "the change mask would replace the before image"),
             (ChangeOutputs(str(tmp_path / "c.tif"), uncertainty=reference), "the uncertainty raster would replace the reference"),
             (ChangeOutputs(str(tmp_path / "c.tif"), probability=str(tmp_path / "c.tif")),
              "the change mask and the probability raster are one file"),
             (ChangeOutputs(str(tmp_path / "c.img")), "give it a .tif name"),
             # a folder that is a file: the message named an internal temporary file, after the work was done
             (ChangeOutputs(str(tmp_path / "c.tif"), report=str(tmp_path / "notes.txt" / "r.json")),
              f"the report \\(r.json\\) cannot go into {tmp_path / 'notes.txt'}: {tmp_path / 'notes.txt'} is a file")]
    kept[str(tmp_path / "notes.txt")] = b"a file"
    (tmp_path / "notes.txt").write_bytes(b"a file")
    for outputs, message in cases:
        with pytest.raises(RSLabError, match=message):
            detect_changes(before, after, outputs, ChangeParams(method="cva"), reference=reference)
    assert all(open(path, "rb").read() == data for path, data in kept.items())
    assert sorted(os.listdir(tmp_path)) == sorted(os.path.basename(p) for p in kept)


@pytest.mark.parametrize("nodata", ["as shipped", 0])
def test_a_reference_covering_part_of_the_image_scores_only_there(tmp_path, oscd, nodata):
    """Rennes' reference cut to its left half (its own, smaller grid): resampled onto the before grid, the right
    half is outside it (the VRT's alpha). Those pixels are not labelled; they were read as 'no change' when 0
    stood for labelled no-change whatever masked it. With nodata 0 (a 0/1 mask drawn transparent) the left
    half's 0s stay labelled no-change: the warp had made them nodata, and the run refused the reference."""
    before, after, cm = oscd
    half = tmp_path / "cm_left.tif"
    with rasterio.open(cm) as src:
        width = src.width // 2
        profile = dict(src.profile, width=width) if nodata == "as shipped" else dict(src.profile, width=width,
                                                                                       nodata=nodata)
        with rasterio.open(half, "w", **profile) as dst:
            dst.write(src.read(window=Window(0, 0, width, src.height)))
        height = src.height
    result = detect_changes(before, after, _outputs(tmp_path / "out"), ChangeParams(method="cva"), reference=str(half))
    whole = evaluate_change(str(tmp_path / "out" / "change.tif"), cm)
    assert result.metrics["pixels"] == height * width < whole["pixels"]


def test_an_rgb_model_on_images_stored_blue_green_red_is_told_which_bands_to_read(tmp_path, bgr_pair, samples):
    """The shipped model (red, green, blue) on the bundled pair stored blue-green-red with its band descriptions:
    read as stored, F1 fell from 0.73 to 0 without a word; now a note names bands 3, 2, 1, and with them the
    map is the RGB pair's."""
    from rslab.core.bands import colour_bands, colour_order_note

    before, after, label = bgr_pair
    assert colour_bands(before) == (3, 2, 1)
    runs = {}
    for name, bands in (("as_stored", None), ("chosen", (3, 2, 1))):
        runs[name] = detect_changes(before, after, _outputs(tmp_path / name), ChangeParams(bands=bands),
                                    reference=label)
    rgb = detect_changes(str(samples / "levir_test_7_A.png"), str(samples / "levir_test_7_B.png"),
                         _outputs(tmp_path / "rgb"), ChangeParams(), reference=label)
    wrong = [n for n in runs["as_stored"].notes if "choose bands 3, 2, 1, in that order" in n]
    assert len(wrong) == 1 and "bands 1, 2, 3 were read" in wrong[0]
    assert not [n for n in runs["chosen"].notes if "choose bands" in n]
    assert runs["chosen"].metrics["f1"] == rgb.metrics["f1"] > runs["as_stored"].metrics["f1"] + 0.2
    # a model of other names, or an image that does not say, gets no such note
    assert colour_order_note(["B04", "B03", "B02"], before, None) is None
    assert colour_order_note(["red", "green", "blue"], str(samples / "levir_test_7_A.png"), None) is None


def test_colour_words_in_band_descriptions(tmp_path):
    from rslab.core.bands import colour_bands

    def described(names):
        path = str(tmp_path / f"{len(list(tmp_path.iterdir()))}.tif")
        with rasterio.open(path, "w", driver="GTiff", width=4, height=4, count=len(names), dtype="uint16") as dst:
            dst.descriptions = tuple(names)
        return path

    assert colour_bands(described(["B2 blue", "B3 green", "B4 red", "B8 NIR"])) == (3, 2, 1)
    assert colour_bands(described(["B2 Blue", "B3 Green", "B4 Red", "B5 Red Edge 1", "B8 NIR"])) == (3, 2, 1)
    assert colour_bands(described(["red", "red", "green", "blue"])) is None  # two reds: it does not say
    # Sentinel-2's names (OSCD's files, its products): the note and the dock's band choice missed them, F1 0
    assert colour_bands(described(["B01", "B02", "B03", "B04", "B8A"])) == (4, 3, 2)
    assert colour_bands(described(["B2", "B3", "B4"])) is None  # Landsat TM's B2 is green, Landsat 8's blue
    assert colour_bands(described(["band_blue", "band_green", "band_red"])) == (3, 2, 1)  # '_' is a word character
    assert colour_bands(described(["reddish", "greenery", "blueprint"])) is None


def test_colour_bands_by_wavelength_as_gdals_sentinel2_driver_writes_them(tmp_path):
    """GDAL's Sentinel-2 driver gives each band WAVELENGTH and WAVELENGTH_UNIT (not ENVI's wavelength_units):
    read without the unit, the wavelengths said nothing and a blue-green-red image ran with F1 0 unnoticed."""
    from rslab.core.bands import colour_bands

    path = str(tmp_path / "s2.tif")
    with rasterio.open(path, "w", driver="GTiff", width=4, height=4, count=3, dtype="uint16") as dst:
        for band, (name, nm) in enumerate((("B2", 490), ("B3", 560), ("B4", 665)), start=1):
            dst.set_band_description(band, f"{name}, central wavelength {nm} nm")
            dst.update_tags(band, WAVELENGTH=str(nm), WAVELENGTH_UNIT="nm")
    assert colour_bands(path) == (3, 2, 1)


def test_cva_says_when_its_cut_marks_almost_nothing(tmp_path, oscd):
    """OSCD Rennes with all 13 bands: Otsu's cut sat among a few extreme differences and marked 0.08 % changed
    (the reference 2.6 %, F1 0.001) without a word; with the 10 m bands (F1 0.485) there is nothing to say."""
    before, after, cm = oscd
    runs = {"all": ChangeParams(method="cva"), "ten_metre": ChangeParams(method="cva", bands=(2, 3, 4, 8))}
    notes = {}
    for name, params in runs.items():
        result = detect_changes(before, after, _outputs(tmp_path / name), params, reference=cm)
        notes[name] = [n for n in result.notes if n.startswith("CVA's cut")]
    assert len(notes["all"]) == 1 and "marks only 0.079 %" in notes["all"][0]
    assert "BANDS 2, 3, 4, 8" in notes["all"][0]
    assert notes["ten_metre"] == []


def test_a_plain_reference_image_of_the_images_size_is_read_pixel_for_pixel(tmp_path, oscd):
    """OSCD ships its change maps as plain PNGs (cm.png) beside georeferenced images: training read such a label
    pixel for pixel, detection refused it as a reference ('no georeferencing while the other has')."""
    before, after, cm = oscd
    with rasterio.open(cm) as src:
        label = src.read(1)
    png = tmp_path / "cm.png"
    with rasterio.open(png, "w", driver="PNG", width=label.shape[1], height=label.shape[0], count=1,
                       dtype="uint8") as dst:
        dst.write(label.astype("uint8"), 1)
    params = ChangeParams(method="cva", bands=(2, 3, 4, 8))
    plain = detect_changes(before, after, _outputs(tmp_path / "plain"), params, reference=str(png))
    placed = detect_changes(before, after, _outputs(tmp_path / "placed"), params, reference=cm)
    assert plain.metrics == placed.metrics and plain.metrics["f1"] > 0.4
    assert [n for n in plain.notes if "read pixel for pixel on the before image's grid" in n]
    cropped = tmp_path / "cropped.png"  # another size: no way to place it
    with rasterio.open(cropped, "w", driver="PNG", width=100, height=100, count=1, dtype="uint8") as dst:
        dst.write(label[:100, :100].astype("uint8"), 1)
    with pytest.raises(RSLabError, match="no georeferencing while the other has"):
        detect_changes(before, after, _outputs(tmp_path / "cropped"), params, reference=str(cropped))


def test_tiles_run_several_to_a_pass_give_the_maps_of_one_at_a_time(tmp_path, shared_data):
    """The default weights on a real pair in 128-pixel tiles, three to a forward pass (what a GPU runs) and one
    at a time (the CPU's default): the same probabilities (eval-mode BatchNorm keeps each tile its own)."""
    import torch

    from rslab.core.change_detection import ModelScorer, load_change_model

    before, after, label = _levir(shared_data)
    maps = {}
    for per_pass in (1, 3):
        folder = tmp_path / str(per_pass)
        result = detect_changes(before, after, _outputs(folder, report=False),
                                ChangeParams(tile=128, overlap=32, tiles_per_pass=per_pass, device="cpu"),
                                reference=label)
        maps[per_pass] = [_read(folder / name)[0] for name in ("prob.tif", "unc.tif")]
        assert result.metrics["f1"] > 0.8
    assert all(np.abs(a - b).max() < 1e-5 for a, b in zip(maps[1], maps[3]))
    with pytest.raises(RSLabError, match="tiles per pass must be 0"):
        ChangeParams(tiles_per_pass=-1)

    # a GPU without room for a pass of three: the pass is halved, and so are the later ones
    scorer = ModelScorer(load_change_model(None), "cpu")
    assert scorer.tiles_per_pass(512) == 1  # the CPU: one at a time
    model, passes = scorer.model, []

    def short_of_memory(a, b):
        passes.append(len(a))
        if len(a) > 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (a test)")
        return model(a, b)

    scorer.model, scorer.limit = short_of_memory, 3
    with rasterio.open(before) as x, rasterio.open(after) as y:
        a, b = x.read(window=Window(0, 0, 128, 128)), y.read(window=Window(0, 0, 128, 128))
    valid = np.ones((128, 128), bool)
    first = scorer.many([(a, b, valid)] * 3)
    second = scorer.many([(a, b, valid)] * 3)
    assert passes == [3, 2, 1, 2, 1] and scorer.limit == 2 and len(first) == len(second) == 3
    assert np.abs(first[0][0][:96, :96] - maps[1][0][:96, :96]).max() < 1e-5  # the first tile's core
