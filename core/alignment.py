"""Putting a second raster on the grid of a first one, or saying clearly why we cannot.

Two-input jobs need pixel-aligned inputs. When the second raster is on
another grid (other CRS, pixel size, origin or size) we resample it onto the
first one's grid through a GDAL warped VRT: nothing is read until the job
reads its windows, so memory stays bounded, and pixels outside the second
raster's footprint become nodata (an alpha band). The caller reports the note
returned here ("the after image was resampled onto the before grid"). Rasters
that do not overlap at all, or where only one is georeferenced, stop with an
RSLabError.
"""
from __future__ import annotations

import os
import tempfile
from typing import Any, Optional, Tuple
from xml.etree import ElementTree

from rasterio.warp import transform, transform_bounds

from .errors import RSLabError
from .gdal_exceptions import gdal_exceptions
from .raster_io import RasterInfo, raster_info, same_grid

RESAMPLING = {"bilinear": "bilinear", "nearest": "near"}


def _bounds(info: RasterInfo) -> Tuple[float, float, float, float]:
    """(left, bottom, right, top) around the raster's four corners: rotated and south-up grids included."""
    corners = [info.transform * (col, row) for col in (0, info.width) for row in (0, info.height)]
    xs, ys = [x for x, _ in corners], [y for _, y in corners]
    return min(xs), min(ys), max(xs), max(ys)


def _onto_exact_grid(vrt: str, info: RasterInfo, gdal: Any) -> None:
    """Make the warped VRT's output grid `info`'s own geotransform.

    gdal.Warp takes an output grid as bounds and a size, which always makes a
    north-up grid: for a south-up or rotated image the reference came out
    mirrored or turned against it (AUC(D,F) 0.31 for 0.99). The warp's
    transformer reads the output grid from DstGeoTransform (and its inverse),
    so those and the dataset's GeoTransform are set to the image's.
    """
    geotransform = info.transform.to_gdal()
    text = {"GeoTransform": geotransform, "DstGeoTransform": geotransform,
            "DstInvGeoTransform": gdal.InvGeoTransform(geotransform)}
    tree = ElementTree.parse(vrt)
    found = set()
    for element in tree.getroot().iter():
        if element.tag in text:
            element.text = ", ".join(repr(float(value)) for value in text[element.tag])
            found.add(element.tag)
    if found != set(text):
        raise RSLabError(f"internal error: GDAL's warped VRT lacks {sorted(set(text) - found)}")
    tree.write(vrt)


OVERLAP_SAMPLES = 256  # points a side sampled over a rotated grid to measure the overlap


def _rotated(info: RasterInfo) -> bool:
    return info.transform.b != 0 or info.transform.d != 0


def _sampled_overlap(reference: RasterInfo, other: RasterInfo) -> float:
    """Share of `OVERLAP_SAMPLES`^2 points spread over the reference's pixels that fall inside the other
    raster: for rotated grids, whose bounding boxes overstate the overlap (twice the area at 45 degrees)."""
    import numpy as np

    steps = (np.arange(OVERLAP_SAMPLES) + 0.5) / OVERLAP_SAMPLES
    cols, rows = np.meshgrid(steps * reference.width, steps * reference.height)
    xs, ys = reference.transform * (cols.ravel(), rows.ravel())
    if reference.crs is not None and other.crs is not None and reference.crs != other.crs:
        xs, ys = transform(reference.crs, other.crs, xs, ys)
    col, row = ~other.transform * (np.asarray(xs), np.asarray(ys))
    return float(np.mean((col >= 0) & (col < other.width) & (row >= 0) & (row < other.height)))


def overlap_fraction(reference: RasterInfo, other: RasterInfo) -> float:
    """Share of the reference raster's area that the other raster covers (0 when they do not meet)."""
    if _rotated(reference) or _rotated(other):
        return _sampled_overlap(reference, other)
    left, bottom, right, top = _bounds(other)
    if reference.crs is not None and other.crs is not None and reference.crs != other.crs:
        left, bottom, right, top = transform_bounds(other.crs, reference.crs, left, bottom, right, top, densify_pts=21)
    rl, rb, rr, rt = _bounds(reference)
    w = max(0.0, min(right, rr) - max(left, rl))
    h = max(0.0, min(top, rt) - max(bottom, rb))
    area = (rr - rl) * (rt - rb)
    return (w * h) / area if area > 0 else 0.0


def align_to(
    reference: RasterInfo,
    path: str,
    workdir: str,
    role: str = "second raster",
    resampling: str = "bilinear",
    labels: bool = False,
    onto: str = "first raster",
) -> Tuple[str, Optional[str]]:
    """Return (path to read, note): `path` itself when it is on `reference`'s grid, else a warped VRT.

    `role` and `onto` name the two rasters in messages ("the reference", "the image").

    `labels`: `path` is a label or reference raster, whose nodata value 0 is often only there to draw a 0/1
    mask's background transparent (raster_io.read_label_window reads such 0s as the label 0). The warp
    must then carry those 0s across as values: left as nodata, they would come out under the VRT's alpha,
    which hides them like the pixels outside the source, and every background pixel would be lost.
    """
    other = raster_info(path)
    if same_grid(reference, other):
        return path, None
    if reference.georeferenced != other.georeferenced:
        which = f"the {onto}" if not reference.georeferenced else f"the {role}"
        raise RSLabError(
            f"{which} has no georeferencing while the other has; both must be georeferenced, "
            "or both plain images of the same size"
        )
    if not reference.georeferenced:
        raise RSLabError(
            f"the {role} is {other.width} x {other.height} pixels but the {onto} is "
            f"{reference.width} x {reference.height}; images without georeferencing must have the same size"
        )
    for name, info in ((onto, reference), (role, other)):
        if info.crs is None and info.transform.is_identity and (info.gcps[0] or info.rpcs is not None):
            how = "ground control points" if info.gcps[0] else "RPCs"
            raise RSLabError(
                f"the {name} is placed by {how}, not on a map grid, and the other raster cannot be resampled onto "
                f"or from such a placement here; give the {role} on the {onto}'s own pixel grid, or warp the "
                f"{name} onto a map grid first (Raster > Projections > Warp)")
    if (reference.crs is None) != (other.crs is None):
        which = f"the {onto}" if reference.crs is None else f"the {role}"
        raise RSLabError(f"only one of the two rasters has a CRS: {which} has none; set its CRS first")
    covered = overlap_fraction(reference, other)
    if covered <= 0:
        raise RSLabError(f"the two layers do not overlap: the {role} lies outside the {onto}'s extent")
    # a name of its own per call: the after image and the reference may share a file name in one work folder
    handle, vrt = tempfile.mkstemp(prefix=f"aligned_{os.path.splitext(os.path.basename(path))[0]}_", suffix=".vrt",
                                   dir=workdir)
    os.close(handle)
    left, bottom, right, top = _bounds(reference)
    with gdal_exceptions() as gdal:
        options = gdal.WarpOptions(
            format="VRT",
            outputBounds=(left, bottom, right, top),
            width=reference.width,
            height=reference.height,
            dstSRS=reference.crs.to_wkt() if reference.crs is not None else None,
            resampleAlg=RESAMPLING[resampling],
            dstAlpha=True,
            srcNodata="None" if labels and other.nodata == 0 else None,
        )
        try:
            gdal.Warp(vrt, path, options=options)
            _onto_exact_grid(vrt, reference, gdal)
        except RuntimeError as exc:
            raise RSLabError(f"could not resample the {role} onto the {onto}'s grid: {exc}") from exc
    # a sliver ('covers 0 %' read as none at all, beside a result that was nearly all nodata)
    share = f"{100 * covered:.0f} % of it" if covered >= 0.005 else \
        f"only {100 * covered:.2g} % of it: little of the result will be data"
    note = (
        f"the {role} ({other.width} x {other.height}, {other.crs or 'no CRS'}) was resampled ({resampling}) onto "
        f"the {onto}'s grid ({reference.width} x {reference.height}, {reference.crs or 'no CRS'}); it covers {share}"
    )
    return vrt, note
