"""rslab:import_cube through processing.run on real ABU scenes, and its bad inputs."""
from __future__ import annotations

import os

import numpy as np
import pytest
import rasterio
import scipy.io

import processing
from osgeo import gdal
from qgis.core import QgsContrastEnhancement, QgsMultiBandColorRenderer, QgsProcessingException, QgsProject

from rslab.core.bands import true_colour_bands
from rslab.core.errors import RSLabError
from rslab.core.import_cube import ImportCubeParams, import_cube
from rslab.core.raster_io import band_wavelengths


@pytest.mark.parametrize("scene", ["abu-airport-4.mat", "abu-beach-1.mat"])
def test_processing_run_round_trips_a_real_scene(tmp_path, shared_data, provider, scene):
    source = shared_data / "anomaly" / "abu" / scene
    out_cube, out_gt = str(tmp_path / "cube.tif"), str(tmp_path / "gt.tif")
    result = processing.run("rslab:import_cube", {
        "INPUT": str(source), "CUBE_KEY": "data", "GT_KEY": "map",
        "OUTPUT_CUBE": out_cube, "OUTPUT_GT": out_gt,
    })
    assert result["OUTPUT_CUBE"] == out_cube and result["OUTPUT_GT"] == out_gt
    mat = scipy.io.loadmat(str(source))
    with rasterio.open(out_cube) as ds:
        cube = ds.read()
        assert ds.count == mat["data"].shape[2]
        assert ds.dtypes[0] == mat["data"].dtype.name
        assert ds.nodata is None
    assert np.array_equal(np.moveaxis(cube, 0, 2), mat["data"])
    with rasterio.open(out_gt) as ds:
        assert np.array_equal(ds.read(1), mat["map"])


def test_defaults_and_optional_ground_truth(tmp_path, samples, provider):
    out_cube = str(tmp_path / "cube.tif")
    processing.run("rslab:import_cube", {"INPUT": str(samples / "abu-beach-2.mat"), "OUTPUT_CUBE": out_cube})
    assert sorted(os.listdir(tmp_path)) == ["cube.tif"]
    with rasterio.open(out_cube) as ds:
        assert (ds.width, ds.height, ds.count) == (100, 100, 193)


def test_band_wavelengths_are_written_as_gdal_band_metadata(tmp_path, shared_data):
    """MUUFL Gulfport's sub-image carries 72 wavelengths in nm; they become each band's `wavelength` item."""
    source = shared_data / "classification" / "muufl_hsi_subimages" / "an_hsi_image_sub_for_demo.mat"
    expected = scipy.io.loadmat(str(source))["wavelengths"].ravel()
    result = import_cube(str(source), str(tmp_path / "c.tif"), params=ImportCubeParams("hsi_img_sub"))
    assert result.wavelength_unit == "Nanometers" and "band wavelengths from 'wavelengths'" in result.note
    with rasterio.open(tmp_path / "c.tif") as ds:
        assert ds.tags(1) == {"wavelength": "367.7", "wavelength_units": "Nanometers"}
        assert ds.descriptions[0] == "367.7 nanometers"
        values, unit = band_wavelengths(ds)
    assert unit == "nm" and np.allclose(values, expected, atol=1e-3)

    cube = np.arange(2 * 3 * 4, dtype=np.uint16).reshape(2, 3, 4)  # micrometres, and a vector of the wrong length
    scipy.io.savemat(tmp_path / "um.mat", {"data": cube, "Wavelength": [[0.45, 0.55, 0.65, 0.85]]})
    scipy.io.savemat(tmp_path / "bad.mat", {"data": cube, "wavelengths": [[450, 550, 650]]})
    assert import_cube(str(tmp_path / "um.mat"), str(tmp_path / "um.tif")).wavelength_unit == "Micrometers"
    with rasterio.open(tmp_path / "um.tif") as ds:
        values, unit = band_wavelengths(ds)
    assert unit == "µm" and np.allclose(values, [0.45, 0.55, 0.65, 0.85])
    bad = import_cube(str(tmp_path / "bad.mat"), str(tmp_path / "bad.tif"))
    assert bad.wavelength_unit is None and "not one finite wavelength per band" in bad.note
    with rasterio.open(tmp_path / "bad.tif") as ds:
        assert ds.tags(1) == {} and band_wavelengths(ds) is None


def test_float_cube_keeps_nan_as_nodata(tmp_path):
    cube = np.linspace(0, 1, 6 * 5 * 4, dtype=np.float32).reshape(6, 5, 4)
    cube[2, 3, :] = np.nan
    source = tmp_path / "float.mat"
    scipy.io.savemat(source, {"cube": cube, "gt": np.eye(6, 5, dtype=np.uint8)})
    result = import_cube(str(source), str(tmp_path / "c.tif"), str(tmp_path / "g.tif"), ImportCubeParams("cube", "gt"))
    assert result.bands == 4 and result.dtype == "float32"
    with rasterio.open(tmp_path / "c.tif") as ds:
        assert np.isnan(ds.nodata)
        assert not (ds.dataset_mask() > 0)[2, 3]
        assert np.array_equal(np.moveaxis(ds.read(), 0, 2), cube, equal_nan=True)


def test_bad_inputs_give_clear_errors_and_no_files(tmp_path, samples, provider):
    scene = str(samples / "abu-beach-2.mat")
    out = str(tmp_path / "c.tif")
    with pytest.raises(RSLabError, match="no variable 'cube'.*data \\(100, 100, 193\\)"):
        import_cube(scene, out, params=ImportCubeParams(cube_key="cube"))
    with pytest.raises(RSLabError, match="no variable 'truth'"):
        import_cube(scene, out, str(tmp_path / "g.tif"), ImportCubeParams(gt_key="truth"))
    with pytest.raises(RSLabError, match="not found"):
        import_cube(str(tmp_path / "missing.mat"), out)
    text = tmp_path / "fake.mat"
    text.write_text("hello")
    with pytest.raises(RSLabError, match="not a MATLAB"):
        import_cube(str(text), out)
    mismatch = tmp_path / "mismatch.mat"
    scipy.io.savemat(mismatch, {"data": np.zeros((4, 5, 3), np.uint16), "map": np.zeros((5, 4), np.uint8)})
    with pytest.raises(RSLabError, match="must match"):
        import_cube(str(mismatch), out, str(tmp_path / "g.tif"))
    with pytest.raises(RSLabError, match="the cube and the ground truth are one file"):
        import_cube(scene, out, out)  # the ground truth used to replace the cube, silently
    with pytest.raises(RSLabError, match=r"the ground truth \(g.img\) is written as a GeoTIFF"):
        import_cube(scene, out, str(tmp_path / "g.img"))
    with pytest.raises(RSLabError, match="cannot be empty"):
        ImportCubeParams(cube_key="")
    with pytest.raises(QgsProcessingException, match="no variable 'cube'"):
        processing.run("rslab:import_cube", {"INPUT": scene, "CUBE_KEY": "cube", "OUTPUT_CUBE": out})
    assert sorted(os.listdir(tmp_path)) == ["fake.mat", "mismatch.mat"]


def test_cancelling_leaves_no_file(tmp_path, samples):
    from rslab.core.errors import JobCancelled

    calls = {"n": 0}

    def cancelled():
        calls["n"] += 1
        return calls["n"] > 4

    with pytest.raises(JobCancelled):
        import_cube(str(samples / "abu-beach-2.mat"), str(tmp_path / "c.tif"), str(tmp_path / "g.tif"), cancelled=cancelled)
    assert os.listdir(tmp_path) == []


def test_a_file_without_data_is_read_from_its_only_cube_and_the_ground_truth_is_never_guessed(tmp_path, shared_data,
                                                                                              provider):
    """MUUFL Gulfport's target-detection sub-image: `hsi_sub` (36 x 36 x 72) and `gtImg_sub`, no `data` or `map`."""
    source = str(shared_data / "classification" / "muufl_hsi_subimages" / "an_hsi_img_for_tgt_det_demo.mat")
    mat = scipy.io.loadmat(source)
    out_cube, out_gt = str(tmp_path / "cube.tif"), str(tmp_path / "gt.tif")
    result = import_cube(source, out_cube)
    assert "cube read from 'hsi_sub', the file's only 3-D array (it has no 'data')" in result.note
    with rasterio.open(out_cube) as ds:
        assert np.array_equal(np.moveaxis(ds.read(), 0, 2), mat["hsi_sub"])

    # the default ground-truth name is absent: an error naming the 36 x 36 candidate, no file
    with pytest.raises(RSLabError, match="no variable 'map' for the ground truth.*GT_KEY \\(36 x 36: gtImg_sub\\)"):
        import_cube(source, str(tmp_path / "again.tif"), out_gt)
    assert not os.path.exists(tmp_path / "again.tif") and not os.path.exists(out_gt)

    # through Processing, with the ground truth named
    outputs = processing.run("rslab:import_cube", {"INPUT": source, "GT_KEY": "gtImg_sub",
                                                   "OUTPUT_CUBE": str(tmp_path / "p.tif"), "OUTPUT_GT": out_gt})
    assert outputs["OUTPUT_GT"] == out_gt
    with rasterio.open(out_gt) as ds:
        assert np.array_equal(ds.read(1), mat["gtImg_sub"])


def test_the_cube_is_guessed_only_for_the_default_name_and_only_when_one_array_fits(tmp_path):
    one, two = np.zeros((4, 5, 3), np.uint16), np.ones((4, 5, 6), np.float32)
    scipy.io.savemat(tmp_path / "two.mat", {"radiance": one, "reflectance": two, "mask": np.ones((4, 5), np.uint8)})
    scipy.io.savemat(tmp_path / "one.mat", {"radiance": one, "wavelengths": [[450, 550, 650]]})
    out = str(tmp_path / "c.tif")
    with pytest.raises(RSLabError, match="no variable 'data'.*it has 2 3-D arrays; name the cube with CUBE_KEY"):
        import_cube(str(tmp_path / "two.mat"), out)
    with pytest.raises(RSLabError, match="no variable 'cube'.*name the cube with CUBE_KEY"):
        import_cube(str(tmp_path / "one.mat"), out, params=ImportCubeParams(cube_key="cube"))  # a name given: kept
    with pytest.raises(RSLabError, match="no variable 'map'.*none is 4 x 5 like the cube"):
        import_cube(str(tmp_path / "one.mat"), out, str(tmp_path / "g.tif"))
    with pytest.raises(RSLabError, match="'mask' in two.mat is 2-D \\(4 x 5\\): a table of pixels by bands or a "
                                         "single-band image, not an H x W x B cube"):  # it wrote a one-band image
        import_cube(str(tmp_path / "two.mat"), out, params=ImportCubeParams(cube_key="mask"))
    assert sorted(os.listdir(tmp_path)) == ["one.mat", "two.mat"]
    result = import_cube(str(tmp_path / "one.mat"), out)
    assert result.bands == 3 and "'radiance'" in result.note and result.wavelength_unit == "Nanometers"
    two_result = import_cube(str(tmp_path / "two.mat"), out, params=ImportCubeParams(cube_key="reflectance"))
    assert two_result.bands == 6 and two_result.dtype == "float32" and "only 3-D array" not in two_result.note


MUUFL_SUB = ("classification", "muufl_hsi_subimages", "an_hsi_image_sub_for_demo.mat")


def test_true_colour_bands_come_from_the_band_wavelengths(tmp_path, shared_data, samples):
    """MUUFL's 72 bands (367.7-1043 nm): red, green, blue are bands 30, 20, 12; nm and µm both read; a cube
    without wavelengths, or one that does not reach the visible, has none; bands flagged bad are passed over."""
    source = shared_data.joinpath(*MUUFL_SUB)
    wavelengths = scipy.io.loadmat(str(source))["wavelengths"].ravel()
    import_cube(str(source), str(tmp_path / "muufl.tif"), params=ImportCubeParams("hsi_img_sub"))
    assert true_colour_bands(str(tmp_path / "muufl.tif")) == (30, 20, 12)
    assert [round(wavelengths[b - 1], 1) for b in (30, 20, 12)] == [643.8, 548.6, 472.5]

    cube = np.arange(2 * 3 * 4, dtype=np.uint16).reshape(2, 3, 4)
    scipy.io.savemat(tmp_path / "um.mat", {"data": cube, "wavelengths": [[0.45, 0.55, 0.65, 0.85]]})
    scipy.io.savemat(tmp_path / "swir.mat", {"data": cube, "wavelengths": [[1500, 1600, 1700, 1800]]})
    for name in ("um", "swir"):
        import_cube(str(tmp_path / f"{name}.mat"), str(tmp_path / f"{name}.tif"))
    assert true_colour_bands(str(tmp_path / "um.tif")) == (3, 2, 1)
    assert true_colour_bands(str(tmp_path / "swir.tif")) is None
    import_cube(str(samples / "abu-beach-2.mat"), str(tmp_path / "abu.tif"))
    assert true_colour_bands(str(tmp_path / "abu.tif")) is None  # ABU files carry no wavelengths

    # the same MUUFL cube as ENVI, its header flagging band 30 (643.8 nm) bad: red is band 29 (634.2 nm)
    gdal.Translate(str(tmp_path / "muufl.img"), str(tmp_path / "muufl.tif"), format="ENVI")
    with open(tmp_path / "muufl.hdr", "a") as header:
        header.write("wavelength units = Nanometers\n")
        header.write("wavelength = {" + ", ".join(f"{w:g}" for w in wavelengths) + "}\n")
        header.write("bbl = {" + ", ".join("0" if b == 30 else "1" for b in range(1, 73)) + "}\n")
    assert true_colour_bands(str(tmp_path / "muufl.img")) == (29, 20, 12)


def test_an_imported_cube_with_wavelengths_loads_in_true_colour(tmp_path, shared_data, provider, qgis_app):
    """runAndLoadResults, as the Processing dialog does: MUUFL is drawn from bands 30, 20, 12, stretched; ABU
    (no wavelengths) keeps QGIS's own drawing of bands 1, 2, 3."""
    project = QgsProject.instance()
    project.clear()
    try:
        muufl = processing.runAndLoadResults("rslab:import_cube", {
            "INPUT": str(shared_data.joinpath(*MUUFL_SUB)), "CUBE_KEY": "hsi_img_sub",
            "OUTPUT_CUBE": str(tmp_path / "muufl.tif")})
        abu = processing.runAndLoadResults("rslab:import_cube", {
            "INPUT": str(shared_data / "anomaly" / "abu" / "abu-beach-2.mat"), "OUTPUT_CUBE": str(tmp_path / "abu.tif")})
        loaded = {layer.source(): layer for layer in project.mapLayers().values()}
        renderer = loaded[muufl["OUTPUT_CUBE"]].renderer()
        assert isinstance(renderer, QgsMultiBandColorRenderer)
        assert (renderer.redBand(), renderer.greenBand(), renderer.blueBand()) == (30, 20, 12)
        red = renderer.redContrastEnhancement()
        assert red.contrastEnhancementAlgorithm() == QgsContrastEnhancement.StretchToMinimumMaximum
        with rasterio.open(muufl["OUTPUT_CUBE"]) as ds:
            low, high = np.percentile(ds.read(30), [2, 98])
        assert red.minimumValue() == pytest.approx(low, rel=0.005) and red.maximumValue() == pytest.approx(high, rel=0.005)
        plain = loaded[abu["OUTPUT_CUBE"]].renderer()
        assert (plain.redBand(), plain.greenBand(), plain.blueBand()) == (1, 2, 3)
    finally:
        project.clear()


@pytest.mark.parametrize("header", [b"MATLAB 7.3 MAT-file, Platform: GLNXA64", b""])
def test_a_matlab_v73_file_is_read_through_hdf5(tmp_path, samples, header):
    """MATLAB -v7.3 saves HDF5 after a 512-byte user block (its header text, or anything): a cube stored
    column-major comes back H x W x B; int8 values are stored as int16, with a note."""
    import h5py

    scene = scipy.io.loadmat(samples / "abu-beach-2.mat")
    cube, truth = scene["data"], scene["map"]
    path = tmp_path / "v73.mat"
    with h5py.File(path, "w", userblock_size=512) as handle:
        handle["data"] = cube.transpose(2, 1, 0)  # MATLAB's column-major order, as HDF5 sees it
        handle["map"] = truth.T.astype(np.int8)
    with open(path, "r+b") as handle:
        handle.write(header.ljust(128, b" "))
    result = import_cube(str(path), str(tmp_path / "cube.tif"), str(tmp_path / "gt.tif"))
    with rasterio.open(tmp_path / "cube.tif") as ds:
        assert np.array_equal(ds.read(), np.moveaxis(cube, -1, 0))
    with rasterio.open(tmp_path / "gt.tif") as ds:
        assert ds.dtypes[0] == "int16" and np.array_equal(ds.read(1), truth)
    assert "int8 stored as int16" in result.note
