"""The strongest anomalies of a score raster: where an analyst looks first.

A score map answers "how anomalous is each pixel"; the question asked of it
is "what here does not belong", a short list of places. A peak is a valid
pixel whose score is the highest within `separation` pixels (a square
window); peaks are taken strongest first, each at least `separation + 1`
pixels (Chebyshev) from every stronger one taken, so one target of a few
pixels is listed once rather than once per pixel. Ties go to the upper-left
pixel, so the list is the same on every run.

By windows, so any raster fits in memory: each window is read with a margin
of `separation` pixels, so a pixel beside a window's edge is compared with
its neighbours across it. At most count x (2 separation + 1)^2 local maxima
are kept between windows: every maximum the greedy pass looks at before the
count-th peak is either taken or within the square of a taken one, so the
rest can never be reached.

`write_peaks` writes them as a point layer (GeoPackage or GeoJSON: one file
each, so it can be written under a temporary name and renamed into place)
for the map, for editing, or for a field team's GPS.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import List, Optional, Sequence

import numpy as np
from rasterio.windows import Window
from scipy import ndimage

from .errors import RSLabError
from .job import JobMonitor
from .raster_io import centres_of, gdal_env, open_raster, raster_info, read_window
from .tiling import windows_for

PEAK_COUNT = 20  # listed in the report and the dock
PEAK_SEPARATION = 5  # pixels: two maxima within this on both axes are one target (a car at ~1 m is 2 x 5 pixels)
PEAK_TILE = 1024  # windows of ~1024 x 1024 (three float64 arrays of it: ~25 MB)
PEAK_LAYER = "strongest_anomalies"
PEAK_FORMATS = {".gpkg": "GPKG", ".geojson": "GeoJSON"}  # single-file formats (a shapefile is four files)


@dataclass(frozen=True)
class Peak:
    """A local maximum of the scores: its pixel, score, and the pixel centre in the raster's CRS (None
    without georeferencing)."""

    row: int
    col: int
    score: float
    x: Optional[float] = None
    y: Optional[float] = None


def _grown(window: Window, margin: int, height: int, width: int) -> Window:
    """`window` with `margin` pixels more on every side, within the raster."""
    row0, col0 = max(window.row_off - margin, 0), max(window.col_off - margin, 0)
    row1 = min(window.row_off + window.height + margin, height)
    col1 = min(window.col_off + window.width + margin, width)
    return Window(col0, row0, col1 - col0, row1 - row0)


def _strongest_first(scores: np.ndarray, rows: np.ndarray, cols: np.ndarray, keep: int):
    """The `keep` strongest of the candidates, strongest first, ties by row then column."""
    order = np.lexsort((cols, rows, -scores))[:keep]
    return scores[order], rows[order], cols[order]


def strongest_peaks(scores: str, count: int = PEAK_COUNT, separation: int = PEAK_SEPARATION,
                    monitor: Optional[JobMonitor] = None) -> List[Peak]:
    """Up to `count` peaks of the first band of the raster at `scores`, strongest first (see the module)."""
    if count < 1 or separation < 0:
        raise ValueError(f"count must be at least 1 and separation at least 0, not {count} and {separation}")
    monitor = monitor or JobMonitor()
    keep = count * (2 * separation + 1) ** 2
    kept_scores, kept_rows, kept_cols = np.empty(0), np.empty(0, np.int64), np.empty(0, np.int64)
    with gdal_env(), open_raster(scores) as ds:
        windows = windows_for(ds, PEAK_TILE)
        for i, window in enumerate(windows):
            monitor.step(i / len(windows), "strongest anomalies")
            grown = _grown(window, separation, ds.height, ds.width)
            data, valid = read_window(ds, grown, [1])
            values = np.where(valid, data[0].astype(np.float64), -np.inf)
            highest = ndimage.maximum_filter(values, size=2 * separation + 1, mode="constant", cval=-np.inf)
            top, left = window.row_off - grown.row_off, window.col_off - grown.col_off
            core = (slice(top, top + window.height), slice(left, left + window.width))
            rows, cols = np.nonzero((values[core] == highest[core]) & valid[core])
            found = values[core][rows, cols]
            kept_scores, kept_rows, kept_cols = _strongest_first(
                np.concatenate([kept_scores, found]), np.concatenate([kept_rows, rows + window.row_off]),
                np.concatenate([kept_cols, cols + window.col_off]), keep)
    taken: List[int] = []
    for i in range(len(kept_scores)):
        near = (np.abs(kept_rows[taken] - kept_rows[i]) <= separation) & (np.abs(kept_cols[taken] - kept_cols[i])
                                                                          <= separation)
        if not near.any():
            taken.append(i)
            if len(taken) == count:
                break
    cells = [(int(kept_rows[i]), int(kept_cols[i])) for i in taken]
    centres = centres_of(scores, cells) or [(None, None)] * len(cells)
    monitor.step(1.0, "strongest anomalies")
    return [Peak(row, col, float(kept_scores[i]), x, y) for i, (row, col), (x, y) in zip(taken, cells, centres)]


def check_peaks_path(path: Optional[str], has_crs: bool = True) -> None:
    """RSLabError, before any work, for a point layer file of a format `write_peaks` does not write, or a
    GeoJSON file for an image without a CRS (GIS tools read GeoJSON as longitude and latitude)."""
    if not path:
        return
    suffix = os.path.splitext(path)[1].lower()
    if suffix not in PEAK_FORMATS:
        raise RSLabError(f"the strongest anomalies ({os.path.basename(path)}) are written as a GeoPackage or "
                         "GeoJSON: give the file a .gpkg or .geojson name")
    if suffix == ".geojson" and not has_crs:
        raise RSLabError(f"the strongest anomalies ({os.path.basename(path)}): GeoJSON coordinates are read as "
                         "longitude and latitude, and this image has no CRS; give the file a .gpkg name")


def write_peaks(path: str, peaks: Sequence[Peak], raster: str) -> None:
    """`peaks` as points (fields rank, row, col, score) in the CRS of the score raster `raster`.

    A raster without georeferencing gets its points where QGIS draws its
    pixels, x = col + 0.5 and y = -(row + 0.5), with no CRS, so they sit on
    the image there too.
    """
    from osgeo import ogr, osr

    crs = raster_info(raster).crs
    check_peaks_path(path, crs is not None)
    srs = None
    if crs is not None:
        srs = osr.SpatialReference()
        srs.ImportFromWkt(crs.to_wkt())
        srs.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)  # x east, y north, as the points are given
    driver = ogr.GetDriverByName(PEAK_FORMATS[os.path.splitext(path)[1].lower()])
    ds = driver.CreateDataSource(os.fspath(path))
    if ds is None:
        raise RSLabError(f"cannot write {os.path.basename(path)}: {ogr.GetLastErrorMsg() or 'GDAL refused it'}")
    try:
        layer = ds.CreateLayer(PEAK_LAYER, srs, ogr.wkbPoint)
        for name, kind in (("rank", ogr.OFTInteger), ("row", ogr.OFTInteger), ("col", ogr.OFTInteger),
                           ("score", ogr.OFTReal)):
            layer.CreateField(ogr.FieldDefn(name, kind))
        for rank, peak in enumerate(peaks, 1):
            feature = ogr.Feature(layer.GetLayerDefn())
            for name, value in (("rank", rank), ("row", peak.row), ("col", peak.col), ("score", peak.score)):
                feature.SetField(name, value)
            x, y = (peak.x, peak.y) if peak.x is not None else (peak.col + 0.5, -(peak.row + 0.5))
            point = ogr.Geometry(ogr.wkbPoint)
            point.AddPoint_2D(x, y)
            feature.SetGeometry(point)
            if layer.CreateFeature(feature) != 0:
                raise RSLabError(f"cannot write {os.path.basename(path)}: {ogr.GetLastErrorMsg()}")
    finally:
        ds = None  # closes (and flushes) the file
