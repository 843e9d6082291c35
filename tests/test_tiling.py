"""The windowed engine on real rasters: exact for per-pixel jobs, close for convolutions,
georeferencing and nodata kept, outputs only on success."""
from __future__ import annotations

import os
import shutil

import numpy as np
import pytest
from levir import LEVIR
import rasterio
from rasterio.crs import CRS
from rasterio.transform import from_origin
from scipy import ndimage

from rslab.core.errors import JobCancelled, RSLabError
from rslab.core.job import JobMonitor
from rslab.core import outputs
from rslab.core.outputs import PendingOutputs, work_folder
from rslab.core.raster_io import raster_info
from rslab.core.tiling import OutputSpec, TileSpec, partition, run_tiled, tile_grid


def _read(path):
    with rasterio.open(path) as ds:
        return ds.read(), ds.dataset_mask() > 0, ds.profile


def _run(inputs, out_path, fn, spec, count=1, dtype="float32", nodata=None, monitor=None):
    with PendingOutputs() as pending:
        run_tiled(inputs, [OutputSpec(pending.temp(out_path), count, dtype, nodata)], fn, spec, monitor)


@pytest.fixture()
def odd_geotiff(tmp_path, shared_data):
    """A real LEVIR tile cropped to an odd size (253 x 241) and written as GeoTIFF with an explicit CRS."""
    with rasterio.open(shared_data / LEVIR / "A" / "test_2_0000_0000.png") as src:
        data = src.read()[:, :241, :253]
    path = tmp_path / "levir_odd.tif"
    profile = dict(driver="GTiff", width=253, height=241, count=3, dtype="uint8",
                   crs=CRS.from_epsg(32650), transform=from_origin(500000.0, 3550000.0, 0.5, 0.5))
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
    return path


@pytest.mark.parametrize("height,width,size,overlap", [(718, 791, 128, 32), (100, 100, 256, 32), (257, 513, 256, 0), (5, 1000, 64, 16)])
def test_tiles_cover_every_pixel_once_by_core(height, width, size, overlap):
    tiles = tile_grid(height, width, TileSpec(size, overlap))
    owner = np.zeros((height, width), int)
    for t in tiles:
        r, c, h, w = int(t.core.row_off), int(t.core.col_off), int(t.core.height), int(t.core.width)
        owner[r : r + h, c : c + w] += 1
        # the read window contains the core and stays inside the raster
        assert t.read.row_off <= r and r + h <= t.read.row_off + t.read.height
        assert t.read.col_off <= c and c + w <= t.read.col_off + t.read.width
        assert t.read.row_off >= 0 and t.read.row_off + t.read.height <= height
        assert t.read.col_off >= 0 and t.read.col_off + t.read.width <= width
        assert t.read.height == min(size, height) and t.read.width == min(size, width)
    assert (owner == 1).all()


@pytest.mark.parametrize("height,width,size", [(718, 791, 128), (100, 100, 256), (257, 513, 256), (300, 300, 256)])
def test_partition_windows_cover_every_pixel_once(height, width, size):
    owner = np.zeros((height, width), int)
    windows = partition(height, width, size)
    for w in windows:
        assert 0 < w.height <= size and 0 < w.width <= size
        owner[int(w.row_off): int(w.row_off + w.height), int(w.col_off): int(w.col_off + w.width)] += 1
    assert (owner == 1).all() and len(windows) == -(-height // size) * -(-width // size)


def test_partition_tiles_compute_each_pixel_once(tmp_path, samples):
    """A per-pixel job tiled by `partition` sees 791 x 718 pixels once (centre tiles recompute the step-backs)."""
    src = str(samples / "rasterio_RGB.byte.tif")
    seen = {"centre": 0, "partition": 0}
    for stitch in seen:
        def count(arrays, valid, stitch=stitch):
            seen[stitch] += valid.size
            return [arrays[0][0].astype(np.float32)]

        _run([src], str(tmp_path / f"{stitch}.tif"), count, TileSpec(200, 0, stitch))
    assert seen["partition"] == 791 * 718 < seen["centre"] == 800 * 800
    assert np.array_equal(_read(str(tmp_path / "centre.tif"))[0], _read(str(tmp_path / "partition.tif"))[0],
                          equal_nan=True)
    with pytest.raises(RSLabError, match="do not overlap"):
        TileSpec(200, 10, "partition")


@pytest.mark.parametrize("stitch", ["centre", "blend", "partition"])
def test_per_pixel_job_is_exact_and_keeps_grid_and_nodata(tmp_path, samples, stitch):
    src = str(samples / "rasterio_RGB.byte.tif")
    out = str(tmp_path / "out.tif")

    def brightness(arrays, valid):
        return [arrays[0].astype(np.float32).sum(axis=0) / 3.0]

    _run([src], out, brightness, TileSpec(200, 0 if stitch == "partition" else 48, stitch))
    data, valid, profile = _read(src)
    result, out_valid, out_profile = _read(out)
    assert out_profile["crs"] == profile["crs"]
    assert out_profile["transform"] == profile["transform"]
    assert (out_profile["width"], out_profile["height"]) == (791, 718)
    assert np.array_equal(out_valid, valid)  # nodata carried through
    assert np.isnan(result[0][~valid]).all()
    expected = data.astype(np.float32).sum(axis=0) / 3.0
    np.testing.assert_allclose(result[0][valid], expected[valid], rtol=0, atol=1e-4 if stitch == "blend" else 0)


def test_convolution_on_odd_real_image_matches_whole_image(tmp_path, odd_geotiff):
    data, _, profile = _read(odd_geotiff)
    whole = ndimage.gaussian_filter(data.astype(np.float32), sigma=(0, 2, 2), mode="reflect", truncate=3.0)

    def blur(arrays, valid):
        return [ndimage.gaussian_filter(arrays[0].astype(np.float32), sigma=(0, 2, 2), mode="reflect", truncate=3.0)]

    centre = str(tmp_path / "centre.tif")
    _run([str(odd_geotiff)], centre, blur, TileSpec(96, 32, "centre"), count=3)
    result, _, out_profile = _read(centre)
    assert out_profile["crs"] == CRS.from_epsg(32650)
    assert out_profile["transform"] == profile["transform"]
    assert out_profile["interleave"] == "band"  # multi-band outputs: one block per band, not all bands in one
    # the kernel radius (6) is below half the overlap (16): centre-cropping is exact up to float rounding
    np.testing.assert_allclose(result, whole, atol=1e-3)

    blend = str(tmp_path / "blend.tif")
    _run([str(odd_geotiff)], blend, blur, TileSpec(96, 32, "blend"), count=3)
    blended, _, _ = _read(blend)
    error = np.abs(blended - whole)
    assert error.mean() < 0.05 and error.max() < 2.0

    no_overlap = str(tmp_path / "seams.tif")
    _run([str(odd_geotiff)], no_overlap, blur, TileSpec(96, 0, "centre"), count=3)
    seams, _, _ = _read(no_overlap)
    assert np.abs(seams - whole).max() > 1.0  # without overlap the tile seams do show: the check can fail


def test_two_inputs_and_integer_output_with_nodata(tmp_path, samples):
    src = str(samples / "rasterio_RGB.byte.tif")
    out = str(tmp_path / "mask.tif")

    def greener(arrays, valid):
        return [(arrays[1][1] > arrays[0][0]).astype(np.uint8)]

    _run([src, src], out, greener, TileSpec(256, 0), dtype="uint8", nodata=255)
    result, valid, profile = _read(out)
    assert profile["nodata"] == 255
    assert set(np.unique(result[0][valid])) <= {0, 1}
    assert (result[0][~valid] == 255).all()


def test_non_georeferenced_input_gives_output_without_geotransform(tmp_path, shared_data):
    from osgeo import gdal

    png = str(shared_data / LEVIR / "A" / "test_2_0000_0000.png")
    out = str(tmp_path / "gray.tif")
    _run([png], out, lambda a, v: [a[0].mean(axis=0)], TileSpec(100, 20))
    ds = gdal.Open(out)
    assert ds.GetGeoTransform(can_return_null=True) is None  # QGIS places it exactly like the PNG
    assert (ds.RasterXSize, ds.RasterYSize) == (256, 256)


def test_raster_smaller_than_a_tile(tmp_path, samples):
    src = str(samples / "stars_L7_ETMs.tif")
    out = str(tmp_path / "small.tif")
    _run([src], out, lambda a, v: [a[0][3].astype(np.float32)], TileSpec(1024, 64, "blend"))
    result, _, profile = _read(out)
    data, _, _ = _read(src)
    assert (profile["width"], profile["height"]) == (349, 352)
    assert np.array_equal(result[0], data[3].astype(np.float32))


def test_cancellation_leaves_no_file(tmp_path, samples):
    src = str(samples / "rasterio_RGB.byte.tif")
    out = tmp_path / "cancelled.tif"
    calls = {"n": 0}

    def cancelled():
        calls["n"] += 1
        return calls["n"] > 3

    with pytest.raises(JobCancelled):
        _run([src], str(out), lambda a, v: [a[0][0]], TileSpec(128, 0), monitor=JobMonitor(None, cancelled))
    assert os.listdir(tmp_path) == []


def test_error_in_tile_function_leaves_no_file(tmp_path, samples):
    def broken(arrays, valid):
        raise RSLabError("model failed")

    with pytest.raises(RSLabError, match="model failed"):
        _run([str(samples / "rasterio_RGB.byte.tif")], str(tmp_path / "x.tif"), broken, TileSpec(128, 0))
    assert os.listdir(tmp_path) == []


def test_existing_output_is_replaced_only_on_success(tmp_path, samples):
    src = str(samples / "rasterio_RGB.byte.tif")
    out = tmp_path / "out.tif"
    shutil.copy(samples / "stars_L7_ETMs.tif", out)
    before = out.read_bytes()
    with pytest.raises(JobCancelled):
        _run([src], str(out), lambda a, v: [a[0][0]], TileSpec(128, 0), monitor=JobMonitor(None, lambda: True))
    assert out.read_bytes() == before
    _run([src], str(out), lambda a, v: [a[0][0]], TileSpec(128, 0), dtype="uint8", nodata=0)
    assert raster_info(str(out)).count == 1


def test_names_at_the_file_system_limit_commit_and_cancel_cleanly(tmp_path, samples):
    """A legal 250-character name: its temporary name must fit too (it was 24 characters longer: 'File name too
    long' after the output was already in place, a raw OSError on cancel)."""
    src = str(samples / "rasterio_RGB.byte.tif")
    out = tmp_path / ("n" * 246 + ".tif")
    _run([src], str(out), lambda a, v: [a[0][0]], TileSpec(128, 0), dtype="uint8", nodata=0)
    assert os.listdir(tmp_path) == [out.name] and raster_info(str(out)).count == 1
    out.unlink()
    with pytest.raises(JobCancelled):
        _run([src], str(out), lambda a, v: [a[0][0]], TileSpec(128, 0), monitor=JobMonitor(None, lambda: True))
    assert os.listdir(tmp_path) == []
    for too_long in (tmp_path / ("n" * 252 + ".tif"), tmp_path / ("d" * 256) / "out.tif"):  # a file, a folder
        with pytest.raises(RSLabError, match="file names hold at most 255"):  # was OSError 'File name too long'
            _run([src], str(too_long), lambda a, v: [a[0][0]], TileSpec(128, 0))


def test_two_outputs_naming_one_file_are_refused(tmp_path):
    with PendingOutputs() as pending:
        pending.temp(tmp_path / "a.tif")
        with pytest.raises(RSLabError, match="two outputs name one file"):
            pending.temp(str(tmp_path / "sub" / ".." / "a.tif"))
        pending.discard()
    assert os.listdir(tmp_path) == []


def test_bad_inputs_raise_rslab_error(tmp_path, samples):
    with pytest.raises(RSLabError, match="not found"):
        raster_info(str(tmp_path / "missing.tif"))
    text = tmp_path / "notes.tif"
    text.write_text("this is not a raster")
    with pytest.raises(RSLabError, match="not a raster"):
        raster_info(str(text))
    with pytest.raises(RSLabError, match="folder"):
        raster_info(str(tmp_path))
    for bad in (dict(size=0), dict(size=64, overlap=64), dict(overlap=-1), dict(stitch="median")):
        with pytest.raises(RSLabError):
            TileSpec(**bad)
    with pytest.raises(RSLabError, match="one grid"):
        _run([str(samples / "stars_L7_ETMs.tif"), str(samples / "rasterio_RGB.byte.tif")],
             str(tmp_path / "x.tif"), lambda a, v: [a[0][0]], TileSpec(128, 0))
    assert not (tmp_path / "x.tif").exists()


def _free_space(monkeypatch, free_by_folder):
    """Pretend the disks behind these folders have this many bytes free (a full disk cannot be made here)."""
    real = shutil.disk_usage

    def disk_usage(path):
        usage = real(path)
        return usage._replace(free=free_by_folder.get(os.fspath(path), usage.free))

    monkeypatch.setattr(outputs.shutil, "disk_usage", disk_usage)


def test_work_files_go_to_the_temporary_folder_or_beside_the_outputs_or_nowhere(tmp_path, monkeypatch):
    system_temp, beside = tmp_path / "tmp", tmp_path / "outputs"
    system_temp.mkdir()
    beside.mkdir()
    monkeypatch.setattr(outputs.tempfile, "tempdir", str(system_temp))
    gb = 10**9
    _free_space(monkeypatch, {str(system_temp): 50 * gb, str(beside): 50 * gb})
    with work_folder("rslab-test-", 10 * gb, str(beside), "a job") as folder:
        assert os.path.dirname(folder) == str(system_temp) and os.path.isdir(folder)
    assert not os.path.exists(folder)

    _free_space(monkeypatch, {str(system_temp): 5 * gb, str(beside): 50 * gb})
    with work_folder("rslab-test-", 10 * gb, str(beside), "a job") as folder:
        assert os.path.dirname(folder) == str(beside)
    assert os.listdir(beside) == []  # removed with its files

    _free_space(monkeypatch, {str(system_temp): 5 * gb, str(beside): 8 * gb})
    with pytest.raises(RSLabError, match=r"a job needs up to 11\.1 GB of temporary disk space \(5\.0 GB free in "
                                         r".*tmp; 8\.0 GB free in .*outputs\)"):
        with work_folder("rslab-test-", 10 * gb, str(beside), "a job"):
            raise AssertionError("the job must not start")
    assert os.listdir(system_temp) == [] and os.listdir(beside) == []


def test_output_folders_that_cannot_take_the_file_are_refused_with_a_message(tmp_path, monkeypatch):
    """A file on the way, a folder this user may not enter (PermissionError from Path.exists, raw), and the
    root folder itself (StopIteration: '/' has no parents)."""
    from pathlib import Path

    from rslab.core.outputs import check_output_folder

    (tmp_path / "notes.txt").write_text("a file")
    with pytest.raises(RSLabError, match="notes.txt is a file, not a folder"):
        check_output_folder(str(tmp_path / "notes.txt" / "sub" / "out.tif"), "change mask")
    check_output_folder(str(tmp_path / "new" / "deeper" / "out.tif"))  # folders to be made under one that takes them
    check_output_folder("/")
    locked = tmp_path / "locked"
    real_exists = Path.exists

    def exists(self):
        if self == locked / "sub":
            raise PermissionError(13, "Permission denied")
        return real_exists(self)

    monkeypatch.setattr(Path, "exists", exists)
    with pytest.raises(RSLabError, match="may not be entered"):
        check_output_folder(str(locked / "sub" / "out.tif"))


@pytest.mark.parametrize("keep", [0.5, 0.95])
def test_a_geotiff_cut_short_is_not_renamed_into_place(tmp_path, keep):
    """A disk that fills while GDAL flushes its last blocks at close raises nothing through rasterio: a cut-off
    change mask was renamed into place and the job reported success. Now the commit checks every block is in
    the file; nothing is left, and the message names the output, not the temporary file."""
    from rslab.core.outputs import PARTIAL_PREFIX, PendingOutputs

    final = tmp_path / "change.tif"
    rng = np.random.default_rng(0)
    profile = dict(driver="GTiff", width=1024, height=1024, count=1, dtype="float32", tiled=True, blockxsize=256,
                   blockysize=256, compress="deflate")
    with pytest.raises(RSLabError, match=r"^change.tif was not written completely \(.*is the disk full\?$") as raised:
        with PendingOutputs() as pending:
            temp = pending.temp(final)
            with rasterio.open(temp, "w", **profile) as dst:
                dst.write(rng.random((1, 1024, 1024), dtype=np.float32))
            with open(temp, "r+b") as handle:
                handle.truncate(int(os.path.getsize(temp) * keep))
    assert PARTIAL_PREFIX not in str(raised.value) and os.listdir(tmp_path) == []
    # the check closed the file before the failed commit deleted it (the error's traceback held it open, and
    # Windows does not delete an open file)
    held = [os.readlink(f"/proc/self/fd/{fd}") for fd in os.listdir("/proc/self/fd")
            if os.path.exists(f"/proc/self/fd/{fd}")]
    assert not [path for path in held if PARTIAL_PREFIX in path]
    with PendingOutputs() as pending:  # the same file whole: committed
        with rasterio.open(pending.temp(final), "w", **profile) as dst:
            dst.write(rng.random((1, 1024, 1024), dtype=np.float32))
    assert os.listdir(tmp_path) == ["change.tif"]


def test_outputs_without_an_extension_or_not_rasters_named_tif_are_committed(tmp_path):
    """A checkpoint named without an extension got the temporary name '.rslab-partial-…', which torch.save
    refuses, after the whole job; a report or checkpoint named .tif was checked as a GeoTIFF and said to be
    'not written completely: is the disk full?'."""
    import torch

    from rslab.core.outputs import PendingOutputs

    with PendingOutputs() as pending:
        torch.save({"w": torch.ones(2)}, pending.temp(tmp_path / "model"))
        with open(pending.temp(tmp_path / "report.tif"), "w") as handle:
            handle.write("{}")
    assert sorted(os.listdir(tmp_path)) == ["model", "report.tif"]
    assert torch.equal(torch.load(tmp_path / "model")["w"], torch.ones(2))


def test_rs_lab_leaves_gdals_exception_setting_as_it_found_it(tmp_path, samples):
    """gdal.UseExceptions() stayed on after the first job: another plugin's gdal.Open('missing.tif') raised
    instead of returning None."""
    from osgeo import gdal

    from rslab.core.alignment import align_to
    from rslab.core.bands import band_subset
    from rslab.core.outputs import PendingOutputs
    from rslab.core.raster_io import raster_info

    before = gdal.GetUseExceptions()
    gdal.DontUseExceptions()
    try:
        source = str(samples / "rasterio_RGB.byte.tif")
        band_subset(source, [1, 2], str(tmp_path), "two")
        with rasterio.open(source) as ds:
            profile = dict(ds.profile, width=ds.width // 2, height=ds.height // 2,
                           transform=ds.transform * ds.transform.scale(2, 2))
        with rasterio.open(tmp_path / "coarse.tif", "w", **profile) as dst:
            dst.write(np.ones((profile["count"], profile["height"], profile["width"]), np.uint8))
        align_to(raster_info(source), str(tmp_path / "coarse.tif"), str(tmp_path), role="reference")
        with PendingOutputs() as pending:
            with rasterio.open(pending.temp(tmp_path / "out.tif"), "w", **profile) as dst:
                dst.write(np.ones((profile["count"], profile["height"], profile["width"]), np.uint8))
        assert gdal.GetUseExceptions() == 0
        assert gdal.Open(str(tmp_path / "missing.tif")) is None
    finally:
        if before:
            gdal.UseExceptions()


def test_gdal_exceptions_stay_on_until_the_last_of_two_jobs_blocks_ends():
    """Job A leaving its block switched exceptions off under job B still inside one (GDAL 3.6 keeps the setting
    per process): B's failed gdal.Translate then returned None silently and a VRT that was never written."""
    from osgeo import gdal

    from rslab.core.gdal_exceptions import gdal_exceptions

    before = gdal.GetUseExceptions()
    gdal.DontUseExceptions()
    try:
        first, second = gdal_exceptions(), gdal_exceptions()  # two jobs' blocks, interleaved as threads would
        first.__enter__()
        second.__enter__()
        first.__exit__(None, None, None)
        assert gdal.GetUseExceptions() == 1  # B still inside
        with pytest.raises(RuntimeError):
            gdal.Open("/nonexistent/rslab.tif")
        second.__exit__(None, None, None)
        assert gdal.GetUseExceptions() == 0
    finally:
        if before:
            gdal.UseExceptions()


def test_tiles_handed_over_in_batches_are_of_one_size_and_written_as_one_by_one(tmp_path, odd_geotiff):
    """With a batch function, up to `batch` consecutive tiles of one size go to it at once (a GPU model's pass);
    a tile of another size (the partition's far edges) starts a new batch. The file is the per-tile run's."""
    groups = []

    def one(arrays, valid):
        return [arrays[0].astype(np.float32).mean(axis=0) * valid]

    def many(tiles):
        groups.append([arrays[0].shape[1:] for arrays, _ in tiles])
        return [one(arrays, valid) for arrays, valid in tiles]

    for spec in (TileSpec(64, 0, "partition"), TileSpec(96, 32, "centre")):
        groups.clear()
        single, batched = str(tmp_path / "single.tif"), str(tmp_path / "batched.tif")
        _run([str(odd_geotiff)], single, one, spec)
        with PendingOutputs() as pending:
            run_tiled([str(odd_geotiff)], [OutputSpec(pending.temp(batched))], one, spec, batch_fn=many, batch=3)
        assert all(len(g) <= 3 and len(set(g)) == 1 for g in groups) and max(len(g) for g in groups) == 3
        if spec.stitch == "partition":  # the file's strips of 10 rows: the last, of 1 row, comes alone
            assert {s for g in groups for s in g} == {(10, 253), (1, 253)} and groups[-1] == [(1, 253)]
        else:
            assert sum(len(g) for g in groups) == len(tile_grid(241, 253, spec))
        with rasterio.open(single) as a, rasterio.open(batched) as b:
            assert np.array_equal(a.read(), b.read())
