"""Label polygons burnt onto an image's grid (core/change_labels.py), checked against the Landsat Nanjing reference."""
from __future__ import annotations

import numpy as np
import pytest
from levir import LEVIR
import rasterio
from osgeo import gdal, ogr, osr

from rslab.core.change_labels import burn_labels
from rslab.core.errors import RSLabError


@pytest.fixture()
def nanjing(shared_data):
    root = shared_data / "change" / "landsat_nanjing"
    return {"before": str(root / "Nanjing_t1_TM6b.tif"), "reference": str(root / "Nanjing_reference_0unl_1unch_2ch.tif")}


def polygonise(reference: str, output: str, field: str = "label") -> str:
    """The reference's labelled areas (1 no change, 2 change) as polygons in a GeoPackage, as a user would draw."""
    source = gdal.Open(reference)
    band = source.GetRasterBand(1)
    srs = osr.SpatialReference(wkt=source.GetProjection())
    data = ogr.GetDriverByName("GPKG").CreateDataSource(output)
    layer = data.CreateLayer("labels", srs, ogr.wkbPolygon)
    layer.CreateField(ogr.FieldDefn(field, ogr.OFTInteger))
    gdal.Polygonize(band, band, layer, 0)  # the band as its own mask: 0 (not labelled) gives no polygon
    data = None
    return output


def shapes(path: str, srs_epsg: int, features, field: str = "label", geometry=ogr.wkbPolygon) -> str:
    """A GeoPackage of (wkt, value) features."""
    srs = osr.SpatialReference()
    srs.ImportFromEPSG(srs_epsg)
    data = ogr.GetDriverByName("GPKG").CreateDataSource(path)
    layer = data.CreateLayer("drawn", srs, geometry)
    layer.CreateField(ogr.FieldDefn(field, ogr.OFTInteger))
    for wkt, value in features:
        feature = ogr.Feature(layer.GetLayerDefn())
        feature.SetGeometry(ogr.CreateGeometryFromWkt(wkt))
        feature.SetField(field, value)
        layer.CreateFeature(feature)
    data = None
    return path


def read(path: str) -> np.ndarray:
    with rasterio.open(path) as ds:
        return ds.read(1)


def test_polygons_of_the_reference_burn_back_to_it(nanjing, tmp_path):
    polygons = polygonise(nanjing["reference"], str(tmp_path / "labels.gpkg"))
    burnt = burn_labels(polygons, "label", nanjing["before"], str(tmp_path / "burnt.tif"))
    reference = read(nanjing["reference"])
    assert np.array_equal(read(burnt.path), reference)
    assert burnt.no_change_pixels == int((reference == 1).sum()) and burnt.change_pixels == int((reference == 2).sum())
    with rasterio.open(burnt.path) as out, rasterio.open(nanjing["before"]) as grid:
        assert out.transform == grid.transform and out.crs == grid.crs and out.dtypes[0] == "uint8"

    # the same polygons in geographic coordinates are reprojected onto the image's UTM grid first
    geographic = str(tmp_path / "labels_4326.gpkg")
    gdal.VectorTranslate(geographic, polygons, dstSRS="EPSG:4326", format="GPKG")
    assert np.array_equal(read(burn_labels(geographic, "label", nanjing["before"], str(tmp_path / "b2.tif")).path),
                          reference)


def square_without_crs(path: str) -> str:
    """A GeoPackage without a CRS holding one 'change' square over Nanjing's top-left 3 x 3 pixels (UTM metres)."""
    x0, y0 = 660585.0, 3551295.0
    square = f"POLYGON(({x0} {y0}, {x0 + 90} {y0}, {x0 + 90} {y0 - 90}, {x0} {y0 - 90}, {x0} {y0}))"
    data = ogr.GetDriverByName("GPKG").CreateDataSource(path)
    layer = data.CreateLayer("drawn", None, ogr.wkbPolygon)
    layer.CreateField(ogr.FieldDefn("label", ogr.OFTInteger))
    feature = ogr.Feature(layer.GetLayerDefn())
    feature.SetGeometry(ogr.CreateGeometryFromWkt(square))
    feature.SetField("label", 2)
    layer.CreateFeature(feature)
    data = None
    return path


def test_polygons_without_a_crs_are_taken_in_the_grids(nanjing, tmp_path):
    burnt = burn_labels(square_without_crs(str(tmp_path / "nocrs.gpkg")), "label", nanjing["before"],
                        str(tmp_path / "b.tif"))
    assert burnt.change_pixels == 9 and (read(burnt.path)[:3, :3] == 2).all()


def test_change_wins_where_polygons_overlap(nanjing, tmp_path):
    x0, y0 = 660585.0, 3551295.0  # the grid's top-left corner (30 m pixels)
    big = f"POLYGON(({x0} {y0}, {x0 + 300} {y0}, {x0 + 300} {y0 - 300}, {x0} {y0 - 300}, {x0} {y0}))"
    small = f"POLYGON(({x0 + 90} {y0 - 90}, {x0 + 150} {y0 - 90}, {x0 + 150} {y0 - 150}, {x0 + 90} {y0 - 150}, {x0 + 90} {y0 - 90}))"
    for order in ([(small, 2), (big, 1)], [(big, 1), (small, 2)]):
        path = shapes(str(tmp_path / f"o{order[0][1]}.gpkg"), 32650, order)
        burnt = read(burn_labels(path, "label", nanjing["before"], str(tmp_path / f"o{order[0][1]}.tif")).path)
        assert (burnt[:10, :10] == 1).sum() == 96 and (burnt[3:5, 3:5] == 2).all() and (burnt[10:, :] == 0).all()


def test_label_polygons_a_user_can_get_wrong(nanjing, shared_data, tmp_path):
    x0, y0 = 660585.0, 3551295.0
    square = f"POLYGON(({x0} {y0}, {x0 + 90} {y0}, {x0 + 90} {y0 - 90}, {x0} {y0 - 90}, {x0} {y0}))"
    output = tmp_path / "never.tif"
    good = shapes(str(tmp_path / "good.gpkg"), 32650, [(square, 2)])
    with pytest.raises(RSLabError, match="has no field 'change'; its fields are label"):
        burn_labels(good, "change", nanjing["before"], str(output))
    with pytest.raises(RSLabError, match="holds 3; label polygons take 1"):
        burn_labels(shapes(str(tmp_path / "three.gpkg"), 32650, [(square, 3)]), "label", nanjing["before"], str(output))
    x1 = x0 + 300  # a 0 = no change, 1 = change map: it burnt as 'unlabelled' and 'no change' (F1 0, unsaid)
    other = f"POLYGON(({x1} {y0}, {x1 + 90} {y0}, {x1 + 90} {y0 - 90}, {x1} {y0 - 90}, {x1} {y0}))"
    with pytest.raises(RSLabError, match="holds only 0 and 1: label polygons take 1 \\(no change\\) and 2 .*add 1"):
        burn_labels(shapes(str(tmp_path / "binary.gpkg"), 32650, [(square, 0), (other, 1)]), "label",
                    nanjing["before"], str(output))
    with pytest.raises(RSLabError, match="holds point features"):
        burn_labels(shapes(str(tmp_path / "points.gpkg"), 32650, [(f"POINT({x0 + 10} {y0 - 10})", 2)],
                           geometry=ogr.wkbPoint), "label", nanjing["before"], str(output))
    far = "POLYGON((0 0, 90 0, 90 -90, 0 -90, 0 0))"
    with pytest.raises(RSLabError, match="cover no pixel"):
        burn_labels(shapes(str(tmp_path / "far.gpkg"), 32650, [(far, 2)]), "label", nanjing["before"], str(output))
    levir = shared_data / LEVIR / "A" / "test_2_0000_0000.png"
    with pytest.raises(RSLabError, match="no georeferencing"):
        burn_labels(good, "label", str(levir), str(output))
    assert not output.exists()


def _copy_band(source: str, target: str, **changes) -> str:
    with rasterio.open(source) as src:
        with rasterio.open(target, "w", **dict(src.profile, count=1, **changes)) as dst:
            dst.write(src.read(1), 1)
    return target


def test_a_grid_without_a_crs_takes_polygons_without_one_in_its_coordinates(nanjing, tmp_path):
    grid = _copy_band(nanjing["before"], str(tmp_path / "no_crs.tif"), crs=None)
    burnt = burn_labels(square_without_crs(str(tmp_path / "nocrs.gpkg")), "label", grid, str(tmp_path / "b.tif"))
    assert burnt.change_pixels == 9 and (read(burnt.path)[:3, :3] == 2).all()
    # polygons with a CRS cannot be placed on it
    polygons = polygonise(nanjing["reference"], str(tmp_path / "labels.gpkg"))
    with pytest.raises(RSLabError, match="has no CRS but the polygons"):
        burn_labels(polygons, "label", grid, str(tmp_path / "c.tif"))
    assert not (tmp_path / "c.tif").exists()


def test_a_grid_placed_by_ground_control_points_only_is_refused(nanjing, tmp_path):
    from rasterio.control import GroundControlPoint

    grid = tmp_path / "gcps.tif"
    with rasterio.open(nanjing["before"]) as src:
        t = src.transform
        points = [GroundControlPoint(row, col, *(t * (col, row))) for row, col in ((0, 0), (0, 800), (800, 0), (800, 800))]
        profile = dict(src.profile, count=1, gcps=points, crs=src.crs)
        profile.pop("transform")
        with rasterio.open(grid, "w", **profile) as dst:
            dst.write(src.read(1), 1)
    polygons = polygonise(nanjing["reference"], str(tmp_path / "labels.gpkg"))
    with pytest.raises(RSLabError, match="ground control points"):
        burn_labels(polygons, "label", str(grid), str(tmp_path / "c.tif"))
    assert not (tmp_path / "c.tif").exists()
