"""Change labels drawn as polygons, burnt onto an image's grid as a partial label raster.

Analysts label a scene by drawing polygons in QGIS, here and there: "no change"
(value 1) and "change" (value 2) in a numeric field. Training reads labels as
rasters, so the polygons are burnt onto the before image's grid with the
partial coding of core/change_reference.py: 0 where no polygon is (not
labelled), 1 and 2 inside. Polygons in another CRS are reprojected first
(polygons without one are taken to be in the image's); a pixel is inside a
polygon when its centre is. Where a change and a no-change
polygon overlap, change wins (the 2s are burnt after the 1s), so a change
drawn inside a larger no-change area needs no hole.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import List, Optional

from .errors import RSLabError
from .gdal_exceptions import gdal_exceptions
from .raster_io import gdal_env, open_raster, raster_info

NO_CHANGE, CHANGE = 1, 2


@dataclass
class BurntLabels:
    path: str
    no_change_pixels: int
    change_pixels: int
    polygons: int


def _open_layer(path: str, layer_name: Optional[str]):
    from osgeo import gdal

    try:
        source = gdal.OpenEx(path, gdal.OF_VECTOR)
    except RuntimeError:
        source = None
    if source is None:
        raise RSLabError(f"could not open the label polygons {os.path.basename(path)}")
    layer = source.GetLayerByName(layer_name) if layer_name else source.GetLayer(0)
    if layer is None:
        raise RSLabError(f"{os.path.basename(path)} has no layer {layer_name!r}")
    return source, layer


def _check_values(layer, field: str, name: str) -> int:
    """RSLabError unless every feature's `field` is 0, 1 or 2 and every geometry is a polygon; the feature count."""
    from osgeo import ogr

    definition = layer.GetLayerDefn()
    fields = [definition.GetFieldDefn(i).GetName() for i in range(definition.GetFieldCount())]
    if field not in fields:
        raise RSLabError(f"{name} has no field {field!r}; its fields are {', '.join(fields) or 'none'}")
    odd: List[str] = []
    seen = set()
    count = 0
    layer.ResetReading()
    for feature in layer:
        count += 1
        value = feature.GetField(field)
        seen.add(value)
        if value not in (0, NO_CHANGE, CHANGE) and len(odd) < 5:
            odd.append(repr(value))
        geometry = feature.GetGeometryRef()
        if geometry is not None and ogr.GT_Flatten(geometry.GetGeometryType()) not in (ogr.wkbPolygon,
                                                                                       ogr.wkbMultiPolygon):
            raise RSLabError(f"{name} holds {geometry.GetGeometryName().lower()} features; change labels are "
                             "polygons")
    layer.ResetReading()
    if odd:
        raise RSLabError(f"{name}'s field {field!r} holds {', '.join(odd)}; label polygons take 1 (no change) or "
                         "2 (change), 0 for none")
    if not count:
        raise RSLabError(f"{name} has no polygons")
    if seen == {0, NO_CHANGE}:  # a 0 = no change, 1 = change map: read as unlabelled and no change, F1 0, unsaid
        raise RSLabError(f"{name}'s field {field!r} holds only 0 and 1: label polygons take 1 (no change) and 2 "
                         "(change), 0 for none; if 1 means change there, add 1 to the field (Field Calculator: "
                         f"\"{field}\" + 1)")
    return count


def burn_labels(polygons: str, field: str, grid: str, output: str, layer_name: Optional[str] = None) -> BurntLabels:
    """Burn label polygons (`field`: 1 no change, 2 change) onto `grid`'s pixels as a uint8 GeoTIFF `output`.

    RSLabError, with no output, for a field or values the coding cannot read, non-polygon features, a grid
    without georeferencing, or polygons that cover no pixel of the grid.
    """
    with gdal_exceptions():
        return _burn_labels(polygons, field, grid, output, layer_name)


def _burn_labels(polygons: str, field: str, grid: str, output: str, layer_name: Optional[str]) -> BurntLabels:
    import numpy as np
    from osgeo import gdal, osr

    name = os.path.basename(polygons) + (f" ({layer_name})" if layer_name else "")
    info = raster_info(grid)
    if not info.georeferenced:
        raise RSLabError(f"{os.path.basename(grid)} has no georeferencing, so label polygons cannot be placed on it")
    if info.crs is None and info.transform.is_identity:
        raise RSLabError(f"{os.path.basename(grid)} is placed by ground control points (or RPCs) only, not on a "
                         "pixel grid the polygons can be burnt onto: warp it first (Raster > Projections > Warp)")
    source, layer = _open_layer(polygons, layer_name)
    count = _check_values(layer, field, name)
    srs = layer.GetSpatialRef()  # GeoPackages without one report an "Undefined geographic SRS"
    has_crs = srs is not None and not (srs.GetName() or "").startswith("Undefined")
    target = None
    if info.crs is not None:
        target = osr.SpatialReference()
        target.ImportFromWkt(info.crs.to_wkt())
        target.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
    elif has_crs:
        raise RSLabError(f"{os.path.basename(grid)} has no CRS but the polygons of {name} have one: set the "
                         "image's CRS first, so the polygons can be placed on it")
    # reprojected to the grid's CRS in memory (the rasteriser does not reproject); polygons without a CRS are
    # taken to be in the grid's, as QGIS draws them over it (and on a grid without a CRS, in its coordinates)
    projected = gdal.VectorTranslate("", source, format="Memory", dstSRS=target, reproject=has_crs,
                                     layers=[layer.GetName()], geometryType="PROMOTE_TO_MULTI")
    mem_layer = projected.GetLayer(0)
    counts = {NO_CHANGE: 0, CHANGE: 0}
    try:
        # burnt straight into a tiled GeoTIFF and counted by blocks: a label for a 10000 x 10000 image never
        # sits in memory whole
        raster = gdal.GetDriverByName("GTiff").Create(output, info.width, info.height, 1, gdal.GDT_Byte,
                                                      options=["COMPRESS=DEFLATE", "TILED=YES"])
        raster.SetGeoTransform(info.transform.to_gdal())
        if target is not None:
            raster.SetProjection(target.ExportToWkt())
        for value in (NO_CHANGE, CHANGE):  # change last: it wins where the two overlap
            mem_layer.SetAttributeFilter(f'"{field}" = {value}')
            gdal.RasterizeLayer(raster, [1], mem_layer, burn_values=[value])
        raster = None  # written and closed
        with gdal_env(), open_raster(output) as ds:
            for _, window in ds.block_windows(1):
                block = ds.read(1, window=window)
                for value in counts:
                    counts[value] += int(np.count_nonzero(block == value))
        if not any(counts.values()):
            raise RSLabError(f"the label polygons of {name} cover no pixel of {os.path.basename(grid)}")
    except (RSLabError, RuntimeError) as exc:
        raster = None
        if os.path.exists(output):
            os.remove(output)
        if isinstance(exc, RSLabError):
            raise
        raise RSLabError(f"could not burn the label polygons of {name}: {exc}") from exc
    return BurntLabels(output, counts[NO_CHANGE], counts[CHANGE], count)
