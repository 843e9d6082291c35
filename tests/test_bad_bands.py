"""Bad bands left out of anomaly detection, on a real ABU scene: those an ENVI bad band list (bbl) flags, and
bands with no valid value at all."""
from __future__ import annotations

import os

import numpy as np
import pytest
import rasterio
from osgeo import gdal

from rslab.core.anomaly import AnomalyOutputs, detect_anomalies
from rslab.core.anomaly_params import AnomalyParams
from rslab.core.bands import bad_bands, band_ranges, good_bands
from rslab.core.checkpoint import read_card
from rslab.core.errors import RSLabError

BAD = [1, 2, 3, 4, 5, 100, 101, 102, 103, 104]


@pytest.fixture(scope="module")
def scene(tmp_path_factory, beach2):
    """ABU beach-2 as GeoTIFF and as ENVI whose BAD bands are overwritten with strong noise (like water-absorption
    bands): `noisy.img` flags them in its bbl, `unflagged.img` is the same file without the list."""
    folder = tmp_path_factory.mktemp("bbl")
    cube, gt = beach2
    with rasterio.open(cube) as src:
        data = src.read().astype(np.float32)
    rng = np.random.default_rng(0)
    for band in BAD:
        data[band - 1] = rng.normal(0, 50 * data.std(), data.shape[1:])
    good = [b for b in range(1, data.shape[0] + 1) if b not in BAD]
    paths = {"cube": cube, "gt": gt, "bands": data.shape[0]}
    for name, flags in (("noisy", True), ("unflagged", False)):
        path = folder / f"{name}.img"
        out = gdal.GetDriverByName("ENVI").Create(str(path), data.shape[2], data.shape[1], data.shape[0],
                                                  gdal.GDT_Float32)
        for i, band in enumerate(data):
            out.GetRasterBand(i + 1).WriteArray(band)
        out = None
        if flags:
            with open(folder / f"{name}.hdr", "a") as header:
                header.write("bbl = {" + ", ".join("0" if b in BAD else "1" for b in range(1, len(data) + 1)) + "}\n")
        paths[name] = path
    clean = folder / "good_bands.tif"  # the good bands alone, as a user would cut them by hand
    with rasterio.open(clean, "w", driver="GTiff", width=data.shape[2], height=data.shape[1], count=len(good),
                       dtype="float32") as dst:
        dst.write(data[[b - 1 for b in good]])
    paths["good"] = clean
    return paths


def test_the_bad_band_list_is_read_from_the_envi_header(scene, tmp_path):
    assert bad_bands(str(scene["noisy"])) == BAD
    assert bad_bands(str(scene["unflagged"])) == [] and bad_bands(str(scene["cube"])) == []
    good, count, note = good_bands(str(scene["noisy"]))
    assert count == scene["bands"] and good == [b for b in range(1, count + 1) if b not in BAD]
    assert f"10 of noisy.img's {scene['bands']} bands" in note and "bands 1-5, 100-104" in note
    assert good_bands(str(scene["cube"])) == (list(range(1, count + 1)), count, None)
    assert band_ranges([3, 4, 9]) == "3-4, 9"


@pytest.mark.parametrize("method", ["rx", "lrx"])
def test_flagged_bands_are_left_out_of_the_scores(scene, tmp_path, method):
    def run(name):
        outputs = AnomalyOutputs(scores=str(tmp_path / f"{name}.tif"))
        result = detect_anomalies(str(scene[name]), outputs, AnomalyParams(method=method), reference=str(scene["gt"]))
        with rasterio.open(outputs.scores) as ds:
            return result, ds.read(1)

    flagged, scores = run("noisy")
    by_hand, expected = run("good")
    unflagged, _ = run("unflagged")
    np.testing.assert_allclose(scores, expected, rtol=1e-5)  # the same as cutting the good bands by hand
    assert flagged.bands == scene["bands"] - len(BAD) and any("ENVI header (bbl)" in note for note in flagged.notes)
    # left in, the noisy bands cost accuracy
    assert flagged.metrics["auc_df"] > unflagged.metrics["auc_df"] + 0.2  # 0.91 vs 0.52 (rx), 0.94 vs 0.52 (lrx)
    assert not any("bbl" in note for note in unflagged.notes)


def test_bsdm_trains_on_the_good_bands_and_too_few_good_bands_stop_cleanly(scene, tmp_path):
    outputs = AnomalyOutputs(scores=str(tmp_path / "s.tif"), model=str(tmp_path / "bsdm.pt"))
    result = detect_anomalies(str(scene["noisy"]), outputs, AnomalyParams(method="bsdm_rx", iterations=2))
    good = scene["bands"] - len(BAD)
    assert result.bands == good and read_card(outputs.model).arguments["bands"] == good
    assert read_card(outputs.model).training["data"] == "noisy.img"

    header = tmp_path / "one.hdr"  # a copy whose list keeps a single band
    os.symlink(scene["noisy"], tmp_path / "one.img")
    text = (scene["noisy"].with_suffix(".hdr")).read_text().split("bbl")[0]
    header.write_text(text + "bbl = {" + ", ".join(["1"] + ["0"] * (scene["bands"] - 1)) + "}\n")
    out = tmp_path / "out"
    with pytest.raises(RSLabError, match=f"{scene['bands'] - 1} of one.img's {scene['bands']} bands are flagged bad "
                                         r"in its ENVI header \(bbl\): bands 2-193; 1 good band is too few"):
        detect_anomalies(str(tmp_path / "one.img"), AnomalyOutputs(scores=str(out / "s.tif")), AnomalyParams(method="rx"))
    assert not out.exists() or os.listdir(out) == []


@pytest.mark.parametrize("nodata", [float("nan"), -9999.0])
def test_a_band_with_no_valid_value_is_left_out_with_a_note(scene, tmp_path, nodata):
    """One band NaN (or nodata) in every pixel, as a masked water-vapour band: every pixel was invalid, and RX
    said 'the image has 0 valid pixels', BSDM 'the image is constant'."""
    with rasterio.open(scene["cube"]) as src:
        data = src.read().astype(np.float32)
        profile = dict(src.profile, dtype="float32", nodata=nodata)
    data[50] = nodata
    path = tmp_path / "nan_band.tif"
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
    with rasterio.open(tmp_path / "without.tif", "w", **dict(profile, count=len(data) - 1)) as dst:
        dst.write(np.delete(data, 50, axis=0))
    for method in ("rx", "bsdm_rx"):
        params = AnomalyParams(method=method, iterations=2)
        result = detect_anomalies(str(path), AnomalyOutputs(str(tmp_path / f"{method}.tif")), params,
                                  reference=str(scene["gt"]))
        assert result.bands == len(data) - 1
        assert any("1 of nan_band.tif's 193 bands hold no valid value (NaN or nodata in every pixel) and were "
                   "left out: band 51" in note for note in result.notes), result.notes
        alone = detect_anomalies(str(tmp_path / "without.tif"), AnomalyOutputs(str(tmp_path / f"w_{method}.tif")),
                                 params, reference=str(scene["gt"]))
        assert result.metrics["auc_df"] == alone.metrics["auc_df"]
    data[:] = nodata  # every band empty: a clear message, no output
    data[0] = 1.0
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
    with pytest.raises(RSLabError, match="192 of nan_band.tif's 193 bands hold no valid value .*: bands 2-193; 1 good band is too few"):
        detect_anomalies(str(path), AnomalyOutputs(str(tmp_path / "none.tif")), AnomalyParams(method="rx"))
    assert not (tmp_path / "none.tif").exists()


def test_an_empty_band_is_found_by_its_file_number_beside_an_alpha_band_that_comes_first(tmp_path):
    """Band numbers were counted as if the alpha band were last: with the alpha first, the scan looked at the
    alpha and missed an all-NaN band 4 (synthetic: a file layout, not image content, is under test)."""
    from rasterio.enums import ColorInterp

    data = np.random.default_rng(0).random((4, 50, 50)).astype("float32")
    data[0] = 255
    data[3] = np.nan
    path = tmp_path / "alpha_first.tif"
    with rasterio.open(path, "w", driver="GTiff", width=50, height=50, count=4, dtype="float32") as ds:
        ds.write(data)
        ds.colorinterp = [ColorInterp.alpha, ColorInterp.gray, ColorInterp.gray, ColorInterp.gray]
    good, count, note = good_bands(str(path))
    assert (good, count) == ([2, 3], 3) and "band 4" in note and "in every pixel" in note


def test_the_empty_band_scan_samples_a_large_image(tmp_path, monkeypatch):
    """An empty band used to be read to the end of the image (34 s on a 10000 x 512 x 200 cube): past the first
    window the bands still without a value are decided on a decimated read, and the note says how many pixels."""
    from rslab.core import bands

    monkeypatch.setattr(bands, "EMPTY_BAND_SAMPLE", 2500)
    data = np.random.default_rng(0).random((3, 400, 400)).astype("float32")
    data[1] = np.nan
    data[2, :256, :256] = np.nan  # valid only outside the first window
    path = tmp_path / "large.tif"
    with rasterio.open(path, "w", driver="GTiff", width=400, height=400, count=3, dtype="float32") as ds:
        ds.write(data)
    reads = []
    original = rasterio.io.DatasetReader.read

    def counted(self, *args, **kwargs):
        reads.append(kwargs.get("out_shape") or kwargs.get("window"))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(rasterio.io.DatasetReader, "read", counted)
    assert bands.empty_bands(str(path), [1, 2, 3]) == ([2], 2500)
    assert len(reads) == 2  # the first window, then one decimated read


def test_the_empty_band_scan_of_an_integer_cube_reads_no_band_masks(scene, tmp_path, monkeypatch):
    """The scan read every band's GDAL mask: on a striped, pixel-interleaved file (GDAL's default layout) that
    decodes each strip once per band, and RX sat at 0 % for 95 s of a 1200 x 1200 x 205 cube, deaf to Cancel.
    The masks now come from the pixels read (beach-2 as int16 with nodata -32768, band 7 empty, a nodata hole)."""
    from rslab.core import bands

    with rasterio.open(scene["cube"]) as src:
        data = np.clip(src.read(), -32767, 32767).astype(np.int16)
        profile = dict(src.profile, dtype="int16", nodata=-32768, tiled=False, interleave="pixel")
    data[6] = -32768
    data[:, 10:20, 10:20] = -32768
    path = tmp_path / "striped_int16.tif"
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
    mask_reads = []
    original = rasterio.io.DatasetReader.read_masks
    monkeypatch.setattr(rasterio.io.DatasetReader, "read_masks",
                        lambda self, *a, **k: mask_reads.append(a) or original(self, *a, **k))
    assert bands.empty_bands(str(path), list(range(1, len(data) + 1))) == ([7], None)
    assert mask_reads == []
