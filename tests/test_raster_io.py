"""read_window and read_decimated derive nodata masks from the pixels they read: the same mask as GDAL's (the
dataset's mask band where it has one, else the OR of the band masks, as rasterio's dataset_mask computes it but
reading every band a second time), on every kind of mask a GeoTIFF can carry."""
from __future__ import annotations

import threading

import numpy as np
import pytest
import rasterio
from rasterio.enums import ColorInterp
from rasterio.windows import Window

from rslab.core.raster_io import band_masks, band_wavelengths, read_bands, read_decimated, read_window


def _write(path, data, nodata=None, interleave="pixel", photometric=None, alpha=False, internal_mask=None):
    count, height, width = data.shape
    profile = dict(driver="GTiff", width=width, height=height, count=count, dtype=data.dtype.name, nodata=nodata,
                   tiled=True, blockxsize=16, blockysize=16, interleave=interleave, compress="deflate")
    if photometric:
        profile["photometric"] = photometric
    if alpha:
        profile["alpha"] = "YES"
    with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True):
        with rasterio.open(path, "w", **profile) as ds:
            ds.write(data)
            if alpha:
                ds.colorinterp = [ColorInterp.red, ColorInterp.green, ColorInterp.blue, ColorInterp.alpha]
            if internal_mask is not None:
                ds.write_mask(internal_mask.astype(np.uint8) * 255)
    return path


def _expected(ds, **where):
    """GDAL's masks, plus read_window's rule that a NaN or infinite band makes a pixel invalid.

    rasterio's dataset_mask, except for a 4-band image tagged RGB whose 4th band is not alpha: rasterio takes
    band 4's mask alone there (as if it were alpha), GDAL and QGIS each band's."""
    bands = [i for i, ci in enumerate(ds.colorinterp, 1) if ci != ColorInterp.alpha]
    if ds.count == 4 and len(bands) == 4:
        valid = np.any([ds.read_masks(b, **where) > 0 for b in bands], axis=0)
    else:
        valid = ds.dataset_mask(**where) > 0
    data = ds.read(bands, **where)
    if np.issubdtype(data.dtype, np.floating):
        valid &= np.isfinite(data).all(axis=0)
    return valid


def _cube(dtype, bands=5, size=40, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.random((bands, size, size)) * 1000).astype(dtype)


def _cases(tmp_path):
    """(name, path, expected number of invalid pixels in the whole raster)."""
    f32 = _cube(np.float32)
    f32[:, 3, 4] = np.nan  # every band nodata: invalid
    f32[0, 5, 6] = np.nan  # one band NaN: valid for GDAL's mask, invalid for read_window (not finite)
    f32[:, 7, 8] = np.inf  # not nodata, not finite
    f64 = _cube(np.float64)
    f64[:, 1, 1] = -9999.0
    f64[2, 2, 2] = -9999.0  # one band at nodata: GDAL ORs the band masks, so the pixel stays valid
    f64[:, 9, 9] = -9999.001  # GDAL's float comparison takes it for -9999 (2 float32 epsilons, relative)
    f64[:, 9, 10] = -9999.01  # but not this
    f32_near = _cube(np.float32)
    f32_near[:, 4, 4] = np.float32(-3.4e38)  # a float32 nodata given as float64 metadata
    u16 = _cube(np.uint16)
    u16[:, 0, :] = 0
    u16[1, 20, 20] = 0
    rgb = _cube(np.uint8, bands=3)
    rgb[:, 10:12, 10:12] = 0
    rgba = _cube(np.uint8, bands=4)
    rgba[3] = 255
    rgba[3, 30:, 30:] = 0
    masked = _cube(np.int16, bands=6)
    keep = np.ones(masked.shape[1:], bool)
    keep[:5, :5] = False
    rgbn = _cube(np.uint16, bands=4)  # red first, 4 bands, the 4th not alpha: each band's nodata counts
    rgbn[3, 6, 6] = 7  # NIR at nodata only (deep water): data
    rgbn[:3, 8, 8] = 7
    rgbn[:, 2, 2] = 7
    return [
        ("float32 NaN nodata, pixel-interleaved", _write(tmp_path / "a.tif", f32, nodata=float("nan")), 3),
        ("float64 nodata -9999, band-interleaved", _write(tmp_path / "b.tif", f64, -9999.0, interleave="band"), 2),
        ("float32 nodata -3.4e38", _write(tmp_path / "c.tif", f32_near, nodata=-3.4e38), 1),
        ("uint16 nodata 0", _write(tmp_path / "d.tif", u16, nodata=0), 40),
        ("RGB uint8 nodata 0", _write(tmp_path / "e.tif", rgb, nodata=0, photometric="RGB"), 4),
        ("RGBA alpha band", _write(tmp_path / "f.tif", rgba, photometric="RGB", alpha=True), 100),
        ("int16 internal mask", _write(tmp_path / "g.tif", masked, internal_mask=keep), 25),
        ("no nodata", _write(tmp_path / "h.tif", _cube(np.float32)), 0),
        ("RGB+NIR uint16 nodata 7", _write(tmp_path / "i.tif", rgbn, nodata=7, photometric="RGB"), 1),
    ]


def test_windowed_masks_equal_rasterios_dataset_mask(tmp_path):
    windows = [Window(0, 0, 40, 40), Window(0, 0, 16, 16), Window(13, 5, 20, 31), Window(39, 39, 1, 1)]
    for name, path, invalid in _cases(tmp_path):
        with rasterio.open(path) as ds:
            _, whole = read_window(ds, windows[0])
            assert int((~whole).sum()) == invalid, name
            for window in windows:
                data, valid = read_window(ds, window)
                assert valid.shape == data.shape[1:] == (window.height, window.width), name
                assert np.array_equal(valid, _expected(ds, window=window)), f"{name}, {window}"


def test_band_masks_equal_rasterios_read_masks_without_reading_them(tmp_path, monkeypatch):
    """band_masks gives each band's mask as read_masks does, from the pixels read (read_masks decoded a
    pixel-interleaved strip once per band: 113 s for one window of a striped 205-band cube); a mask band or
    alpha band is read once, as the dataset mask."""
    cases = _cases(tmp_path)
    expected = {}
    for name, path, _ in cases:
        with rasterio.open(path) as ds:
            bands = list(range(1, ds.count + 1))
            expected[name] = [(where, ds.read_masks(bands, **where) > 0)
                              for where in ({"window": Window(0, 0, 40, 40)}, {"window": Window(13, 5, 20, 31)},
                                            {"out_shape": (len(bands), 9, 7)})]
    mask_reads = []
    original = rasterio.io.DatasetReader.read_masks
    monkeypatch.setattr(rasterio.io.DatasetReader, "read_masks",
                        lambda self, *a, **k: mask_reads.append(a) or original(self, *a, **k))
    for name, path, _ in cases:
        with rasterio.open(path) as ds:
            bands = list(range(1, ds.count + 1))
            for where, masks in expected[name]:
                data = read_bands(ds, bands, **where)
                given = dict(where, out_shape=where["out_shape"][1:]) if "out_shape" in where else where
                del mask_reads[:]
                assert np.array_equal(band_masks(ds, bands, data, **given), masks), f"{name}, {where}"
                # Only rasterio's dataset_mask reads a mask: band 1's, which is the mask band or the alpha band.
                assert mask_reads == ([(1,)] if name in ("RGBA alpha band", "int16 internal mask") else []), name


def test_an_alpha_band_gdal_does_not_use_as_the_mask_still_masks(tmp_path):
    """Six bands, the last one alpha (as a warped VRT adds to a multispectral image): GDAL takes alpha as the mask
    only for gray + alpha and RGB + alpha, and rasterio's dataset_mask calls every pixel valid; transparent
    pixels are nodata here, in windows and in decimated reads, and through a band subset."""
    from rslab.core.bands import band_subset

    cube = _cube(np.uint16, bands=6)
    cube[5] = 65535
    cube[5, :, 25:] = 0  # the last 15 columns transparent
    cube[:5, 3, 3] = 9  # nodata 9 in every data band
    path = tmp_path / "alpha.tif"
    with rasterio.open(path, "w", driver="GTiff", width=40, height=40, count=6, dtype="uint16", nodata=9) as ds:
        ds.write(cube)
        ds.colorinterp = [ColorInterp.gray] + [ColorInterp.undefined] * 4 + [ColorInterp.alpha]
    expected = np.ones((40, 40), bool)
    expected[:, 25:] = False
    expected[3, 3] = False
    with rasterio.open(path) as ds:
        assert (ds.dataset_mask() > 0).all()  # what rasterio alone would say
        data, valid = read_window(ds, Window(0, 0, 40, 40))
        assert data.shape == (5, 40, 40) and np.array_equal(valid, expected)
        _, valid = read_window(ds, Window(20, 0, 10, 5))
        assert np.array_equal(valid, expected[:5, 20:30])
        data, decimated = read_decimated(ds, 400)
        alpha = ds.read(6, out_shape=decimated.shape)  # GDAL picks the same pixels for every band
        assert (~decimated).sum() >= 20 * 7 and np.array_equal(decimated, (alpha > 0) & (data != 9).any(axis=0))
    with rasterio.open(band_subset(str(path), [4, 2], str(tmp_path), "subset")) as ds:
        data, valid = read_window(ds, Window(0, 0, 40, 40))
        assert np.array_equal(data, cube[[3, 1]]) and np.array_equal(valid, expected)
    with rasterio.open(path) as ds:  # the same bands by band list: the alpha band still masks
        data, valid = read_window(ds, Window(0, 0, 40, 40), [4, 2])
        assert np.array_equal(data, cube[[3, 1]]) and np.array_equal(valid, expected)


def test_a_band_list_reads_those_bands_and_their_validity_alone(tmp_path):
    """Anomaly detection reads an image's good bands by band list: a band left out (all NaN, as a masked
    water-vapour band) must not make every pixel invalid, and a NaN in a band read still does."""
    cube = _cube(np.float32, bands=3)
    cube[1] = np.nan
    cube[2, 5, 6] = np.nan
    path = tmp_path / "nan_band.tif"
    with rasterio.open(path, "w", driver="GTiff", width=40, height=40, count=3, dtype="float32") as ds:
        ds.write(cube)
    with rasterio.open(path) as ds:
        assert not read_window(ds, Window(0, 0, 40, 40))[1].any()
        data, valid = read_window(ds, Window(0, 0, 40, 40), [3, 1])
    assert np.array_equal(data, cube[[2, 0]], equal_nan=True)
    assert int((~valid).sum()) == 1 and not valid[5, 6]


def test_decimated_masks_equal_rasterios_dataset_mask(tmp_path):
    for name, path, _ in _cases(tmp_path):
        with rasterio.open(path) as ds:
            for max_pixels in (1600, 400, 90):
                data, valid = read_decimated(ds, max_pixels)
                assert np.array_equal(valid, _expected(ds, out_shape=valid.shape)), f"{name}, {max_pixels}"
                assert data.shape[1:] == valid.shape


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_nan_nodata_marks_only_all_nan_pixels_and_the_rest_follows_finiteness(tmp_path, dtype):
    cube = _cube(dtype, bands=3, size=16)
    cube[:, 2, 3] = np.nan
    cube[1, 4, 5] = np.nan
    with rasterio.open(_write(tmp_path / "n.tif", cube, nodata=float("nan"))) as ds:
        _, valid = read_window(ds, Window(0, 0, 16, 16))
    assert not valid[2, 3] and not valid[4, 5] and valid.sum() == 16 * 16 - 2


def test_band_wavelengths_come_from_an_envi_header(tmp_path):
    """GDAL's ENVI driver reports a header's wavelengths per band; all bands or none are used."""
    path = tmp_path / "cube.img"
    with rasterio.open(path, "w", driver="ENVI", width=4, height=2, count=3, dtype="float32") as dst:
        dst.write(np.zeros((3, 2, 4), np.float32))
    header = tmp_path / "cube.hdr"
    base = header.read_text()
    header.write_text(base + "wavelength units = Micrometers\nwavelength = {0.45, 0.55, 2.2}\n")
    with rasterio.open(path) as ds:
        values, unit = band_wavelengths(ds)
    assert unit == "µm" and np.allclose(values, [0.45, 0.55, 2.2])
    header.write_text(base + "wavelength = {450, 550, 2200}\n")  # no unit: the axis says "wavelength"
    with rasterio.open(path) as ds:
        values, unit = band_wavelengths(ds)
    assert unit == "" and np.allclose(values, [450, 550, 2200])
    from rslab.core.bands import true_colour_bands  # without a unit, read as import_cube reads a .mat's

    for written in ("{0.64, 0.55, 0.47}", "{640, 550, 470}"):  # µm values without a unit had no true colour
        header.write_text(base + f"wavelength = {written}\n")
        assert true_colour_bands(str(path)) == (1, 2, 3), written
    header.write_text(base)
    with rasterio.open(path) as ds:
        assert band_wavelengths(ds) is None


@pytest.mark.parametrize("dtype, nodata, value", [("int16", 32767.5, 32767), ("int16", -32768.5, -32768),
                                                   ("uint16", 65535.7, 65535)])
def test_a_nodata_value_rasterio_cannot_report_still_masks_as_gdal_does(tmp_path, dtype, nodata, value):
    """GDAL masks a fractional nodata value on a 16-bit band (at its truncation); rasterio reports None for it."""
    from osgeo import gdal

    data = _cube(np.dtype(dtype), bands=2, size=20)
    data[:, 3, 4] = value
    path = str(tmp_path / "odd.tif")
    with rasterio.open(path, "w", driver="GTiff", width=20, height=20, count=2, dtype=dtype) as ds:
        ds.write(data)
    handle = gdal.Open(path, gdal.GA_Update)
    for b in (1, 2):
        handle.GetRasterBand(b).SetNoDataValue(nodata)
    handle = None
    with rasterio.open(path) as ds:
        assert ds.nodatavals == (None, None)
        _, valid = read_window(ds, Window(0, 0, 20, 20))
        _, decimated = read_decimated(ds, 400)
    gdal_ds = gdal.Open(path)  # held: a band outlives a dataset only while it is referenced
    expected = gdal_ds.GetRasterBand(1).GetMaskBand().ReadAsArray() > 0
    assert np.array_equal(valid, expected) and np.array_equal(decimated, expected) and (~valid).sum() == 1


def test_outputs_of_an_image_placed_by_rpcs_keep_them_and_no_geotransform(tmp_path):
    """A satellite L1 product placed by RPCs only: outputs carry the RPCs, so QGIS places them as it places it."""
    from osgeo import gdal

    from rslab.core.tiling import OutputSpec, TileSpec, run_tiled

    source = str(tmp_path / "l1.tif")
    handle = gdal.GetDriverByName("GTiff").Create(source, 30, 40, 2, gdal.GDT_Float32)
    zeros = ["0"] * 17
    handle.SetMetadata({"LINE_OFF": "20", "SAMP_OFF": "15", "LAT_OFF": "50", "LONG_OFF": "10", "HEIGHT_OFF": "0",
                        "LINE_SCALE": "20", "SAMP_SCALE": "15", "LAT_SCALE": "0.01", "LONG_SCALE": "0.01",
                        "HEIGHT_SCALE": "100", "LINE_NUM_COEFF": " ".join(["0", "0", "-1"] + zeros),
                        "LINE_DEN_COEFF": " ".join(["1"] + zeros + ["0", "0"]),
                        "SAMP_NUM_COEFF": " ".join(["0", "1", "0"] + zeros),
                        "SAMP_DEN_COEFF": " ".join(["1"] + zeros + ["0", "0"])}, "RPC")
    for b in (1, 2):
        handle.GetRasterBand(b).WriteArray(_cube(np.float32, bands=1, size=40)[0][:, :30])
    handle = None
    output = str(tmp_path / "out.tif")
    run_tiled([source], [OutputSpec(output, 1)], lambda arrays, valid: [arrays[0][0]], TileSpec(16, 0, "partition"))
    written, original = gdal.Open(output), gdal.Open(source)
    assert written.GetGeoTransform(can_return_null=True) is None
    assert written.GetMetadata("RPC") == original.GetMetadata("RPC")


def test_jobs_that_overlap_share_the_block_cache_bound_and_give_qgis_its_own_back():
    """GDAL's block cache size is one for the whole process, QGIS's map included: two jobs that overlapped (A in,
    B in, A out, B out) each put back what they found, and B had found A's 256 MB: QGIS kept it for good."""
    from osgeo import gdal

    from rslab.core.raster_io import GDAL_CACHE_MB, gdal_env

    bound, qgis_own = GDAL_CACHE_MB * 1024 * 1024, 777 * 1024 * 1024
    before = gdal.GetCacheMax()
    gdal.SetCacheMax(qgis_own)
    try:
        a_in, b_in, a_out = threading.Event(), threading.Event(), threading.Event()
        seen = {}

        def job_a():
            with gdal_env():
                seen["a"] = gdal.GetCacheMax()
                a_in.set()
                b_in.wait(10)
            a_out.set()

        def job_b():
            a_in.wait(10)
            with gdal_env():
                b_in.set()
                a_out.wait(10)
                seen["b after a"] = gdal.GetCacheMax()
                with gdal_env():  # nested, as a job's helpers enter it again
                    seen["nested"] = gdal.GetCacheMax()
                seen["b after nested"] = gdal.GetCacheMax()

        threads = [threading.Thread(target=job_a), threading.Thread(target=job_b)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        assert seen == {"a": bound, "b after a": bound, "nested": bound, "b after nested": bound}
        assert gdal.GetCacheMax() == qgis_own
    finally:
        gdal.SetCacheMax(before)
