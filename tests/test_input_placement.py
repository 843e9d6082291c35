"""Inputs placed or stored in the less common ways real files are: south-up and rotated grids, georeferencing
and nodata in GDAL's .aux.xml sidecars, VRTs over files of mixed types, ENVI headers, control points."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
import rasterio
from rasterio.control import GroundControlPoint
from rasterio.transform import Affine

from rslab.core.anomaly import AnomalyOutputs, detect_anomalies
from rslab.core.anomaly_params import AnomalyParams
from rslab.core.errors import RSLabError
from rslab.core.import_cube import ImportCubeParams, import_cube
from rslab.core.raster_io import pixel_of

NORTH_UP = Affine(2.0, 0.0, 500000.0, 0.0, -2.0, 4600200.0)  # the scene's ground: 100 x 100 pixels of 2 m
SOUTH_UP = Affine(2.0, 0.0, 500000.0, 0.0, 2.0, 4600000.0)  # the same ground, rows from south to north
TURNED = Affine(0.0, 2.0, 500000.0, -2.0, 0.0, 4600200.0)  # the same ground, rows running east, columns south


def _write(path, data, transform=None, crs="EPSG:32633", nodata=None, **extra):
    profile = dict(driver="GTiff", width=data.shape[2], height=data.shape[1], count=data.shape[0],
                   dtype=data.dtype.name, nodata=nodata, **extra)
    if transform is not None:
        profile.update(transform=transform, crs=crs)
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
    return str(path)


@pytest.fixture(scope="module")
def beach2(tmp_path_factory, samples):
    """ABU beach-2 and its ground truth as arrays (the north-up ground)."""
    folder = tmp_path_factory.mktemp("placement")
    import_cube(str(samples / "abu-beach-2.mat"), str(folder / "cube.tif"), str(folder / "gt.tif"))
    with rasterio.open(folder / "cube.tif") as cube, rasterio.open(folder / "gt.tif") as gt:
        return cube.read(), gt.read()


def _rx_report(tmp_path, image, reference=None, name="run"):
    outputs = AnomalyOutputs(scores=str(tmp_path / f"{name}_scores.tif"), report=str(tmp_path / f"{name}.json"))
    detect_anomalies(image, outputs, AnomalyParams(method="rx"), reference=reference)
    with open(outputs.report) as handle:
        return json.load(handle), outputs.scores


@pytest.mark.parametrize("placement", ["south-up", "turned"])
def test_a_north_up_reference_is_resampled_onto_a_south_up_or_rotated_image(tmp_path, beach2, placement):
    """gdal.Warp made every output grid north-up: the reference came out mirrored (south-up) or turned against
    the image, and AUC(D,F) read 0.31 for 0.99 with a note that all was well."""
    cube, gt = beach2
    truth, _ = _rx_report(tmp_path, _write(tmp_path / "north.tif", cube, NORTH_UP),
                          _write(tmp_path / "gt_north.tif", gt, NORTH_UP), "north")
    if placement == "south-up":  # image row r is ground row 99 - r
        image = _write(tmp_path / "image.tif", cube[:, ::-1, :].copy(), SOUTH_UP)
    else:  # image pixel (r, c) is ground pixel (c, r)
        image = _write(tmp_path / "image.tif", cube.transpose(0, 2, 1).copy(), TURNED)
    report, _ = _rx_report(tmp_path, image, _write(tmp_path / "gt.tif", gt, NORTH_UP), placement)
    assert any("resampled (nearest)" in note for note in report["notes"])
    for key in ("auc_df", "auc_ftau", "anomaly_pixels", "background_pixels"):
        assert report["metrics"][key] == pytest.approx(truth["metrics"][key], abs=1e-9), key
    assert report["metrics"]["auc_df"] > 0.9


@pytest.mark.parametrize("transform", [SOUTH_UP, TURNED, NORTH_UP])
def test_a_map_point_finds_the_files_own_pixel(tmp_path, beach2, transform):
    """The dock's pixel pick read the layer's north-up view's row and column from the file: the mirrored pixel
    of a south-up image, and past the edge of a rotated one (an IndexError)."""
    cube, _ = beach2
    path = _write(tmp_path / "image.tif", cube[:3], transform)
    for row, col in ((10, 80), (0, 0), (99, 99)):
        x, y = transform * (col + 0.5, row + 0.5)
        assert pixel_of(path, x, y) == (row, col)
    outside = transform * (-0.5, 50.0)
    assert pixel_of(path, *outside) is None


def test_georeferencing_and_nodata_kept_in_an_aux_xml_sidecar_are_read(tmp_path, beach2):
    """A PROFILE=BASELINE GeoTIFF keeps its CRS, transform and nodata value in GDAL's .aux.xml sidecar, which
    QGIS reads: the engine read with sidecars off, so its scores came out without georeferencing and 1000
    nodata pixels were scored as data."""
    cube, _ = beach2
    data = cube.copy()
    data[:, :10, :] = -9999
    path = tmp_path / "baseline.tif"
    _write(path, data, NORTH_UP, nodata=-9999, PROFILE="BASELINE")
    assert (tmp_path / "baseline.tif.aux.xml").exists()
    report, scores = _rx_report(tmp_path, str(path))
    with rasterio.open(scores) as ds:
        assert ds.crs.to_epsg() == 32633 and ds.transform == NORTH_UP
        values = ds.read(1)
    assert np.isnan(values[:10]).all() and np.isfinite(values[10:]).all()
    before = sorted(os.listdir(tmp_path))
    _rx_report(tmp_path, str(path), name="again")  # reading leaves no new sidecar, beside the input or outputs
    assert sorted(set(os.listdir(tmp_path)) - set(before)) == ["again.json", "again_scores.tif"]


def test_an_output_over_a_file_behind_the_input_is_refused(tmp_path, beach2):
    """The check compared outputs with the input's own name only: scores named after the GeoTIFF behind a VRT
    input replaced it (the VRT then failed to open), and a report named after an ENVI header replaced it."""
    cube, _ = beach2
    source = _write(tmp_path / "cube.tif", cube[:20], NORTH_UP)
    vrt = str(tmp_path / "cube.vrt")
    from osgeo import gdal

    gdal.Translate(vrt, source, format="VRT")
    with pytest.raises(RSLabError, match=r"the scores raster would replace cube.tif, which the input image "
                                         r"\(cube.vrt\) reads"):
        detect_anomalies(vrt, AnomalyOutputs(scores=source), AnomalyParams(method="rx"))
    envi = str(tmp_path / "scene.img")
    gdal.Translate(envi, source, format="ENVI")
    with pytest.raises(RSLabError, match=r"the report would replace scene.hdr, which the input image"):
        detect_anomalies(envi, AnomalyOutputs(scores=str(tmp_path / "s.tif"), report=str(tmp_path / "scene.hdr")),
                         AnomalyParams(method="rx"))
    with rasterio.open(source) as ds:
        assert ds.count == 20
    assert "ENVI" in (tmp_path / "scene.hdr").read_text()
    with pytest.raises(RSLabError, match=r"^scene.hdr is an ENVI header, which describes the image; choose its "
                                         r"data file \(scene.img\)$"):
        detect_anomalies(str(tmp_path / "scene.hdr"), AnomalyOutputs(scores=str(tmp_path / "s.tif")),
                         AnomalyParams(method="rx"))


def test_a_vrt_stacking_bands_of_different_types_is_read_in_their_common_type(tmp_path, beach2):
    """rasterio refuses to read bands of different types at once ('more than one dtype found'): a VRT stacking
    a uint16 file and a float32 one failed with that raw error."""
    cube, _ = beach2
    whole = _write(tmp_path / "whole.tif", cube[:30].astype(np.float32), NORTH_UP)
    low = _write(tmp_path / "low.tif", cube[:15].astype(np.uint16), NORTH_UP)
    high = _write(tmp_path / "high.tif", cube[15:30].astype(np.float32), NORTH_UP)
    from osgeo import gdal

    parts = [str(tmp_path / f"band{index}.vrt") for index in range(30)]
    for index in range(30):
        gdal.Translate(parts[index], low if index < 15 else high, format="VRT", bandList=[index % 15 + 1])
    gdal.BuildVRT(str(tmp_path / "mixed.vrt"), parts, separate=True)
    with rasterio.open(tmp_path / "mixed.vrt") as ds:
        assert set(ds.dtypes) == {"uint16", "float32"}
    _, expected = _rx_report(tmp_path, whole, name="whole")
    _, mixed = _rx_report(tmp_path, str(tmp_path / "mixed.vrt"), name="mixed")
    with rasterio.open(expected) as a, rasterio.open(mixed) as b:
        np.testing.assert_allclose(b.read(1), a.read(1), rtol=1e-6)


def test_an_image_placed_by_control_points_with_a_reference_says_what_to_do(tmp_path, beach2):
    """'only one of the two rasters has a CRS: the image has none; set its CRS first' — but its control points
    have one, and setting a CRS would not help."""
    cube, gt = beach2
    image = _write(tmp_path / "gcp.tif", cube[:5])
    points = [GroundControlPoint(row, col, *(NORTH_UP * (col, row))) for row, col in ((0, 0), (0, 100), (100, 0))]
    with rasterio.open(image, "r+") as ds:
        ds.gcps = (points, rasterio.crs.CRS.from_epsg(32633))
    reference = _write(tmp_path / "gt.tif", gt[:, :50, :50].copy(), NORTH_UP)
    with pytest.raises(RSLabError, match=r"the image is placed by ground control points, not on a map grid.*warp "
                                         r"the image onto a map grid first"):
        detect_anomalies(image, AnomalyOutputs(scores=str(tmp_path / "s.tif")), AnomalyParams(method="rx"),
                         reference=reference)


def test_a_cube_saved_bands_first_is_named_so(tmp_path, beach2):
    import scipy.io

    cube, gt = beach2
    scipy.io.savemat(tmp_path / "bands_first.mat", {"data": cube[:, :, :90], "map": gt[0, :, :90]})
    with pytest.raises(RSLabError, match=r"'data' \(\d+ x 100 x 90\) looks stored bands first, \d+ bands of 100 x "
                                         r"90 pixels.*numpy.moveaxis\(cube, 0, -1\)"):
        import_cube(str(tmp_path / "bands_first.mat"), str(tmp_path / "c.tif"), str(tmp_path / "g.tif"),
                    ImportCubeParams(cube_key="data", gt_key="map"))


def test_a_reference_overlapping_by_a_sliver_is_not_said_to_cover_0_percent(tmp_path, beach2):
    from rslab.core.alignment import align_to
    from rslab.core.raster_io import raster_info

    cube, gt = beach2
    image = _write(tmp_path / "image.tif", cube[:3], NORTH_UP)
    sliver = _write(tmp_path / "gt.tif", gt, NORTH_UP * Affine.translation(99.7, 0))  # 0.3 pixel columns of 100
    _, note = align_to(raster_info(image), sliver, str(tmp_path), role="reference", labels=True, onto="image")
    assert note.endswith("it covers only 0.3 % of it: little of the result will be data")
    _, note = align_to(raster_info(image), _write(tmp_path / "half.tif", gt, NORTH_UP * Affine.translation(50, 0)),
                       str(tmp_path), role="reference", labels=True, onto="image")
    assert note.endswith("it covers 50 % of it")


def _strip_layout(path, target, rows_per_strip=1):
    """A copy of `path` as GDAL writes a GeoTIFF by default: pixel-interleaved deflate strips across the width."""
    from osgeo import gdal

    gdal.Translate(str(target), str(path), creationOptions=["COMPRESS=DEFLATE", f"BLOCKYSIZE={rows_per_strip}"])
    return str(target)


def test_a_file_stored_in_strips_is_read_in_full_width_windows_of_whole_strips(tmp_path, beach2):
    """256 x 256 windows decoded every strip once per window across whenever a row of windows' strips outgrew
    GDAL's cache: one read pass over a 4000 x 512 x 205 striped file took 24.8 s instead of 4.5 s tiled."""
    from rslab.core.tiling import partition, windows_for

    cube, _ = beach2
    row = np.concatenate([cube, cube[:, :, ::-1]] * 3, axis=2)
    wide = _write(tmp_path / "wide.tif", np.concatenate([row, row[:, ::-1], row], axis=1), NORTH_UP,
                  tiled=True, blockxsize=256, blockysize=256, compress="deflate")  # 600 x 300, in tiles
    striped = _strip_layout(wide, tmp_path / "strips.tif", rows_per_strip=3)
    with rasterio.open(striped) as ds:
        assert ds.block_shapes[0] == (3, 600)
        windows = windows_for(ds, 64)
    assert all(w.col_off == 0 and w.width == 600 and w.row_off % 3 == 0 for w in windows)
    assert [w.height for w in windows] == [6] * 50  # about 64 x 64 pixels a window, in whole 3-row strips
    with rasterio.open(wide) as ds:
        assert windows_for(ds, 64) == partition(300, 600, 64)
    tall = _strip_layout(wide, tmp_path / "tall.tif", rows_per_strip=300)  # one strip: windows of all of it
    with rasterio.open(tall) as ds:
        assert windows_for(ds, 64) == partition(300, 600, 64)

    outputs = {}
    for name, path in (("tiles", wide), ("strips", striped)):
        outputs[name] = AnomalyOutputs(scores=str(tmp_path / f"{name}_scores.tif"),
                                       mask=str(tmp_path / f"{name}_mask.tif"))
        detect_anomalies(path, outputs[name], AnomalyParams(method="rx", false_alarm_rate=0.01))
    with rasterio.open(outputs["tiles"].scores) as a, rasterio.open(outputs["strips"].scores) as b:
        np.testing.assert_allclose(b.read(1), a.read(1), rtol=1e-6)
        assert b.block_shapes[0] == (108, 600) and a.block_shapes[0] == (256, 256)  # written as it was read
    with rasterio.open(outputs["tiles"].mask) as a, rasterio.open(outputs["strips"].mask) as b:
        assert (a.read(1) != b.read(1)).sum() <= 1  # a score tied at the cut to float rounding, at most


def test_the_overlap_of_a_rotated_grid_is_measured_on_the_grid_not_its_bounding_box(tmp_path, beach2):
    """A reference covering half of a 45-degree image was said to cover all of it (the boxes around both)."""
    import math

    from rslab.core.alignment import overlap_fraction
    from rslab.core.raster_io import raster_info

    cube, gt = beach2
    c = math.sqrt(2.0)
    turned = Affine(c, c, 500000.0, c, -c, 4600000.0)  # 2 m pixels, rows running south-east
    image = _write(tmp_path / "image.tif", cube[:3], turned)
    left, bottom, right, top = 500000.0, 4600000.0 - 200 * c, 500000.0 + 200 * c, 4600000.0 + 200 * c
    half = _write(tmp_path / "half.tif", gt, Affine((right - left) / 2 / 100, 0, left, 0, -(top - bottom) / 100, top))
    whole = _write(tmp_path / "whole.tif", gt, Affine((right - left) / 100, 0, left, 0, -(top - bottom) / 100, top))
    assert overlap_fraction(raster_info(image), raster_info(whole)) == 1.0
    assert overlap_fraction(raster_info(image), raster_info(half)) == pytest.approx(0.5, abs=0.01)
    # in the box around the image, beside its top-left edge, but off the image itself (the box said 6 %)
    corner = _write(tmp_path / "corner.tif", gt, Affine(50 * c / 100, 0, left, 0, -50 * c / 100, 4600000.0 + 100 * c))
    assert overlap_fraction(raster_info(image), raster_info(corner)) == 0.0


def _grid(crs, transform, width, height):
    """A RasterInfo of a georeferenced grid: the overlap is a question of placements, not pixels."""
    from rasterio.crs import CRS

    from rslab.core.raster_io import RasterInfo

    return RasterInfo(path="grid.tif", width=width, height=height, count=1, dtype="uint8", nodata=None,
                      crs=CRS.from_epsg(crs), transform=transform, georeferenced=True)


def _dense_overlap(reference, other, points=1000):
    """The share of `points`^2 pixel centres of `reference` inside `other`: the truth to compare with."""
    from rasterio.warp import transform

    steps = (np.arange(points) + 0.5) / points
    cols, rows = np.meshgrid(steps * reference.width, steps * reference.height)
    xs, ys = reference.transform * (cols.ravel(), rows.ravel())
    if reference.crs != other.crs:
        xs, ys = transform(reference.crs, other.crs, xs, ys)
    col, row = ~other.transform * (np.asarray(xs), np.asarray(ys))
    return float(np.mean((col >= 0) & (col < other.width) & (row >= 0) & (row < other.height)))


def test_the_overlap_of_grids_a_crs_change_turns_is_measured_on_the_grid():
    """A north-up grid in polar stereographic (EPSG:3413, central meridian 45 W) lies turned by about 60
    degrees on a north-up UTM 33N grid at 70 N: the box around it, taken into UTM, said 43 % where 23 % was
    covered, and 1 % where none was (CVA then failed with 'no valid pixels')."""
    from rasterio.warp import transform, transform_bounds

    from rslab.core.alignment import overlap_fraction

    image = _grid(32633, Affine(100.0, 0, 500000.0, 0, -100.0, 7800000.0), 1000, 1000)  # 100 km, 100 m pixels
    (x,), (y,) = transform(image.crs, "EPSG:3413", [550000.0], [7750000.0])  # the image's centre
    cases = {"part": _grid(3413, Affine(100.0, 0, x, 0, -100.0, y), 700, 700),
             "beside": _grid(3413, Affine(100.0, 0, x, 0, -100.0, y - 80000.0), 800, 200)}
    for name, other in cases.items():
        truth = _dense_overlap(image, other)
        assert overlap_fraction(image, other) == pytest.approx(truth, abs=0.01), name
        box = transform_bounds(other.crs, image.crs, *other.transform * (0, other.height),
                               *other.transform * (other.width, 0), densify_pts=21)
        left, bottom, right, top = box
        boxed = (max(0.0, min(right, 600000.0) - max(left, 500000.0))
                 * max(0.0, min(top, 7800000.0) - max(bottom, 7700000.0))) / 1e10
        assert boxed > truth + 0.02, name  # the box around the grid, taken into UTM, said more in both cases
    assert _dense_overlap(image, cases["beside"]) == 0.0


def test_a_reference_smaller_than_the_sample_spacing_inside_a_rotated_image_overlaps_it():
    """The overlap of a rotated grid is sampled at 256 x 256 points: a reference of 2 x 2 pixels inside a
    20000 x 20000 rotated image fell between them and was refused as not overlapping the image."""
    import math

    from rslab.core.alignment import overlap_fraction

    c = math.sqrt(2.0)
    image = _grid(32633, Affine(c, c, 500000.0, c, -c, 4600000.0), 20000, 20000)  # 2 m pixels, turned 45 degrees
    x, y = image.transform * (10030.3, 9970.7)  # between sample points, well inside
    tiny = _grid(32633, Affine(2.0, 0, x, 0, -2.0, y), 2, 2)  # 4 x 4 m: four 2 m pixels of the image
    assert overlap_fraction(image, tiny) == pytest.approx(4 / 20000 ** 2, rel=1e-6)
    away = _grid(32633, Affine(2.0, 0, 400000.0, 0, -2.0, 4600000.0), 2, 2)
    assert overlap_fraction(image, away) == 0.0


def test_the_overlap_with_a_grid_partly_off_the_earth_is_measured_on_the_points_that_have_a_place():
    """A geostationary full disk's corners lie off the Earth: one point that could not be transformed made
    rasterio's transform raise for all, and the pair (aligned before) stopped with a raw GDAL error."""
    from pyproj import Transformer
    from rasterio.crs import CRS

    from rslab.core.alignment import overlap_fraction
    from rslab.core.raster_io import RasterInfo

    r = 5434894.0
    disk = RasterInfo(path="disk.tif", width=150, height=150, count=1, dtype="float32", nodata=None,
                      crs=CRS.from_string("+proj=geos +h=35786023 +lon_0=-75 +sweep=x +ellps=GRS80 +units=m +no_defs"),
                      transform=Affine(2 * r / 150, 0, -r, 0, -2 * r / 150, r), georeferenced=True)
    brazil = _grid(4326, Affine(0.2, 0, -70, 0, -0.2, 5), 150, 150)
    steps = (np.arange(600) + 0.5) / 600
    cols, rows = np.meshgrid(steps * 150, steps * 150)
    xs, ys = disk.transform * (cols.ravel(), rows.ravel())
    lon, lat = Transformer.from_crs(disk.crs.to_wkt(), "EPSG:4326", always_xy=True).transform(xs, ys, errcheck=False)
    col, row = ~brazil.transform * (np.asarray(lon), np.asarray(lat))
    truth = float(np.mean((col >= 0) & (col < 150) & (row >= 0) & (row < 150)))
    assert 0.02 < truth < 0.2
    assert overlap_fraction(disk, brazil) == pytest.approx(truth, abs=0.01)
