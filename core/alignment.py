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
from typing import Optional, Tuple

from rasterio.warp import transform_bounds

from .errors import RSLabError
from .gdal_exceptions import gdal_exceptions
from .raster_io import RasterInfo, raster_info, same_grid

RESAMPLING = {"bilinear": "bilinear", "nearest": "near"}


def _bounds(info: RasterInfo) -> Tuple[float, float, float, float]:
    t = info.transform
    xs = [t.c, t.c + t.a * info.width]
    ys = [t.f, t.f + t.e * info.height]
    return min(xs), min(ys), max(xs), max(ys)


def overlap_fraction(reference: RasterInfo, other: RasterInfo) -> float:
    """Share of the reference raster's area that the other raster covers (0 when they do not meet)."""
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
        except RuntimeError as exc:
            raise RSLabError(f"could not resample the {role} onto the {onto}'s grid: {exc}") from exc
    note = (
        f"the {role} ({other.width} x {other.height}, {other.crs or 'no CRS'}) was resampled ({resampling}) onto "
        f"the {onto}'s grid ({reference.width} x {reference.height}, {reference.crs or 'no CRS'}); "
        f"it covers {100 * covered:.0f} % of it"
    )
    return vrt, note
