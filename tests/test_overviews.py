"""Overviews in the large rasters the jobs write, so QGIS draws them without reading every full-size block."""
from __future__ import annotations

import os

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin

from rslab.core.anomaly import AnomalyOutputs, detect_anomalies
from rslab.core.anomaly_params import AnomalyParams
from rslab.core.change_detection import ChangeOutputs, ChangeParams, detect_changes
from rslab.core.errors import JobCancelled, RSLabError
from rslab.core.import_cube import import_cube
from rslab.core.job import JobMonitor
from rslab.core.outputs import PendingOutputs
from rslab.core.overviews import add_overviews, overview_factors


def _overviews(path, band=1):
    with rasterio.open(path) as ds:
        return ds.overviews(band)


def _strip(source, target, copies):
    """`copies` copies of a real image side by side, georeferenced (a raster wider than QGIS draws fast)."""
    with rasterio.open(source) as ds:
        data = np.concatenate([ds.read()] * copies, axis=2)
    profile = dict(driver="GTiff", width=data.shape[2], height=data.shape[1], count=data.shape[0],
                   dtype=data.dtype.name, crs="EPSG:32633", transform=from_origin(500000, 4000000, 1, 1),
                   tiled=True, blockxsize=256, blockysize=256, compress="deflate")
    with rasterio.open(target, "w", **profile) as dst:
        dst.write(data)
    return str(target)


def test_overview_levels_go_down_to_one_tile_and_small_rasters_get_none():
    assert overview_factors(2048, 2048) == []
    assert overview_factors(100, 2049) == [2, 4, 8, 16]
    assert overview_factors(10000, 7000) == [2, 4, 8, 16, 32, 64]
    assert 10000 / 64 <= 256 < 10000 / 32


def test_large_anomaly_outputs_carry_overviews_and_small_ones_none(tmp_path, samples):
    """A 2100 x 100 strip of ABU beach-2 copies: the scores and the mask carry overviews of their own pixels
    (nearest); the 100 x 100 scene's outputs do not."""
    import_cube(str(samples / "abu-beach-2.mat"), str(tmp_path / "cube.tif"))
    strip = _strip(tmp_path / "cube.tif", tmp_path / "strip.tif", 21)
    with rasterio.open(strip, "r+") as ds:  # a nodata column: NaN scores, nodata in the mask
        ds.nodata = 0
        ds.write(np.zeros((ds.count, 100, 1), dtype=ds.dtypes[0]), window=((0, 100), (5, 6)))
    outputs = AnomalyOutputs(scores=str(tmp_path / "scores.tif"), mask=str(tmp_path / "mask.tif"))
    detect_anomalies(strip, outputs, AnomalyParams(method="rx", false_alarm_rate=0.01))
    assert _overviews(outputs.scores) == [2, 4, 8, 16] and _overviews(outputs.mask) == [2, 4, 8, 16]
    with rasterio.open(outputs.scores) as ds:
        full = ds.read(1)
        half = ds.read(1, out_shape=(50, 1050))  # read from the first overview
        assert ds.crs.to_epsg() == 32633
    assert np.isnan(full[:, 5]).all() and np.isfinite(np.delete(full, 5, axis=1)).all()
    _assert_each_pixel_from_its_block(full, half)
    with rasterio.open(outputs.mask) as ds:
        assert set(np.unique(ds.read(1, out_shape=(50, 1050)))) <= {0, 1, 255}

    small = AnomalyOutputs(scores=str(tmp_path / "small.tif"))
    detect_anomalies(str(tmp_path / "cube.tif"), small, AnomalyParams(method="rx"))
    assert _overviews(small.scores) == []


def test_large_change_outputs_carry_overviews(tmp_path, samples):
    """Nine copies of the LEVIR pair side by side (2304 x 256): the mask keeps its classes, the probability and
    uncertainty are averaged."""
    before = _strip(samples / "levir_test_7_A.png", tmp_path / "a.tif", 9)
    after = _strip(samples / "levir_test_7_B.png", tmp_path / "b.tif", 9)
    outputs = ChangeOutputs(change=str(tmp_path / "change.tif"), probability=str(tmp_path / "p.tif"),
                            uncertainty=str(tmp_path / "u.tif"))
    detect_changes(before, after, outputs, ChangeParams(method="cva"))
    for path in (outputs.change, outputs.probability, outputs.uncertainty):
        assert _overviews(path) == [2, 4, 8, 16], path
    assert not list(tmp_path.glob("*.aux.xml"))  # inside the GeoTIFFs, not in sidecars
    with rasterio.open(outputs.change) as ds:
        full, half = ds.read(1), ds.read(1, out_shape=(128, 1152))
    assert set(np.unique(half)) <= set(np.unique(full)) <= {0, 1, 255}
    with rasterio.open(outputs.probability) as ds:
        full, half = ds.read(1), ds.read(1, out_shape=(128, 1152))
    _assert_each_pixel_from_its_block(full, half)
    # the dock's uncertainty histogram reads the mask and the uncertainty decimated, from their overviews now:
    # averaged uncertainty levels, paired with a nearest mask, erased the histogram's high tail
    from osgeo import gdal

    from rslab.ui.change_dock import uncertainty_histogram

    plain = [str(tmp_path / f"plain_{name}.tif") for name in ("change", "u")]
    for source, target in zip((outputs.change, outputs.uncertainty), plain):
        gdal.Translate(target, source)  # the same pixels without overviews
    averaged = [str(tmp_path / f"averaged_{name}.tif") for name in ("change", "u")]
    for source, target, method in zip(plain, averaged, ("NEAREST", "AVERAGE")):
        gdal.Translate(target, source)
        ds = gdal.Open(target, gdal.GA_Update)
        ds.BuildOverviews(method, [2, 4, 8, 16])
        ds = None
    truth, ours, average = (uncertainty_histogram(*paths, max_pixels=60_000) for paths in
                            (plain, (outputs.change, outputs.uncertainty), averaged))

    def distance(a, b):  # of the changed pixels' histograms, as a share of their count
        return float(np.abs(np.asarray(a.changed) - np.asarray(b.changed)).sum() / np.sum(b.changed))

    assert distance(ours, truth) < 0.3 < distance(average, truth)


def _assert_each_pixel_from_its_block(full, half):
    """Every pixel of a factor-2 overview is one of the four full-resolution pixels it stands for."""
    h, w = half.shape
    blocks = full[:2 * h, :2 * w].reshape(h, 2, w, 2).transpose(0, 2, 1, 3).reshape(h, w, 4)
    same = (blocks == half[..., None]) | (np.isnan(blocks) & np.isnan(half)[..., None])
    assert same.any(axis=2).all()


def test_a_large_score_maps_colour_stretch_is_that_of_its_pixels(tmp_path, samples):
    """QGIS fits the score ramp's 2-98 % cut on a sample it reads at reduced size, that is from an overview:
    averaged overviews shrank the heavy tail (a cut of 20.9-58.9 for the pixels' 12.0-101.1)."""
    from qgis.core import QgsRasterLayer

    from rslab.ui.layers import STRETCH_SAMPLE

    import_cube(str(samples / "abu-beach-2.mat"), str(tmp_path / "cube.tif"))
    with rasterio.open(tmp_path / "cube.tif") as ds:
        cube = ds.read(list(range(1, 11)))
    mosaic = np.tile(np.concatenate([cube, cube[:, ::-1]], axis=1), (1, 10, 21))[:, :2100, :2100]
    profile = dict(driver="GTiff", width=2100, height=2100, count=10, dtype=mosaic.dtype.name, tiled=True,
                   blockxsize=256, blockysize=256, compress="deflate", crs="EPSG:32633",
                   transform=from_origin(500000, 4000000, 1, 1))
    with rasterio.open(tmp_path / "mosaic.tif", "w", **profile) as dst:
        dst.write(mosaic)
    scores = str(tmp_path / "scores.tif")
    detect_anomalies(str(tmp_path / "mosaic.tif"), AnomalyOutputs(scores=scores), AnomalyParams(method="rx"))
    assert _overviews(scores) == [2, 4, 8, 16]
    with rasterio.open(scores) as ds:
        lo, hi = np.percentile(ds.read(1), [2, 98])
    layer = QgsRasterLayer(scores, "scores")
    cut = layer.dataProvider().cumulativeCut(1, 0.02, 0.98, layer.extent(), STRETCH_SAMPLE)
    assert cut[0] == pytest.approx(lo, rel=0.1) and cut[1] == pytest.approx(hi, rel=0.1), (cut, lo, hi)


def _float_raster(path, size=4096):
    profile = dict(driver="GTiff", width=size, height=size, count=1, dtype="float32", tiled=True, blockxsize=256,
                   blockysize=256, compress="deflate")
    with rasterio.open(path, "w", **profile) as dst:  # noise: compresses little, so overviews take many blocks
        dst.write(np.random.default_rng(0).random((1, size, size), dtype=np.float32))


def test_cancel_while_building_overviews_stops_the_job(tmp_path):
    path = tmp_path / "scores.tif"
    _float_raster(path)
    calls = []

    def cancelled():
        calls.append(1)
        return len(calls) > 3

    with pytest.raises(JobCancelled):
        add_overviews(str(path), JobMonitor(cancelled=cancelled))
    assert 3 < len(calls) < 50  # GDAL asked again and again and stopped at the first 'cancel'


def test_an_overview_cut_short_is_found_before_the_commit(tmp_path):
    """The overviews are written last, at the end of the file: a disk that fills then cut off overview blocks
    while every full-size block was whole, and the check looked at those only."""
    final = tmp_path / "scores.tif"
    with pytest.raises(RSLabError, match=r"^scores.tif was not written completely \(block .* of overview"):
        with PendingOutputs() as pending:
            temp = pending.temp(final)
            _float_raster(temp)
            add_overviews(temp)
            with open(temp, "r+b") as handle:
                handle.truncate(os.path.getsize(temp) - 1000)
    assert os.listdir(tmp_path) == []


def test_outputs_and_their_overviews_are_compressed_in_several_threads_to_the_same_pixels(tmp_path, samples,
                                                                                          monkeypatch):
    """GDAL compresses an output's blocks, and its overviews', in as many threads as torch may use (RSLAB_THREADS
    here): the pixels are those one thread writes, and the calling thread's own GDAL setting comes back."""
    from osgeo import gdal

    from rslab.core.raster_io import output_profile, raster_info
    from rslab.core.tiling import OutputSpec, TileSpec, run_tiled

    src = _strip(samples / "rasterio_RGB.byte.tif", tmp_path / "strip.tif", 3)  # 2373 x 718: it gets overviews
    pixels = {}
    for threads in ("1", "2"):
        monkeypatch.setenv("RSLAB_THREADS", threads)
        assert output_profile(raster_info(src), 1, "float32", None)["num_threads"] == threads
        out = str(tmp_path / f"mean_{threads}.tif")
        with PendingOutputs() as pending:
            run_tiled([src], [OutputSpec(pending.temp(out), 1, "float32")], lambda a, v: [a[0].mean(axis=0)],
                      TileSpec(512, 0, "partition"))
        gdal.SetThreadLocalConfigOption("GDAL_NUM_THREADS", "3")
        try:
            assert add_overviews(out)
            assert gdal.GetThreadLocalConfigOption("GDAL_NUM_THREADS", None) == "3"
        finally:
            gdal.SetThreadLocalConfigOption("GDAL_NUM_THREADS", None)
        with rasterio.open(out) as ds:
            pixels[threads] = (ds.read(1), ds.read(1, out_shape=(ds.height // 4, ds.width // 4)))
    assert np.isfinite(pixels["1"][0]).any()
    assert all(np.array_equal(a, b, equal_nan=True) for a, b in zip(pixels["1"], pixels["2"]))


def test_overviews_are_built_under_the_jobs_bound_on_gdals_block_cache(tmp_path):
    """Outside the bound, GDAL's cache (5 % of the RAM by default) grew by 233 MB while the overviews of a
    20000 x 20000 mask were built (bench/anomaly_mask.py); the process's own setting is put back after."""
    from osgeo import gdal

    from rslab.core.raster_io import GDAL_CACHE_MB

    path = str(tmp_path / "mask.tif")
    with rasterio.open(path, "w", driver="GTiff", width=4100, height=300, count=1, dtype="uint8", tiled=True,
                       blockxsize=256, blockysize=256) as dst:
        dst.write((np.arange(4100 * 300).reshape(300, 4100) % 7 == 0).astype(np.uint8), 1)
    before = gdal.GetCacheMax()
    gdal.SetCacheMax(1 << 30)
    try:
        seen = []
        assert add_overviews(path, JobMonitor(lambda fraction, text: seen.append(gdal.GetCacheMax())))
        assert seen and max(seen) <= GDAL_CACHE_MB << 20
        assert gdal.GetCacheMax() == 1 << 30
    finally:
        gdal.SetCacheMax(before)
