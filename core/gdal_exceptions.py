"""GDAL's Python exceptions for one block of RS Lab code, and the process's setting as it was afterwards.

RS Lab's direct GDAL calls (gdal.Warp, gdal.Translate, the rasteriser) report
failures as RuntimeError. `gdal.UseExceptions()` switches that on for the whole
QGIS process, and called bare it stayed on after the first RS Lab job: another
plugin's `gdal.Open` that expected None for a missing file raised instead.
GDAL 3.6 keeps the setting per process, not per thread, so it is switched on
only around RS Lab's own calls.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator


@contextmanager
def gdal_exceptions() -> Iterator[Any]:
    """`with gdal_exceptions() as gdal:` GDAL errors raise RuntimeError inside the block; the previous setting
    is restored after it."""
    from osgeo import gdal

    previous = gdal.GetUseExceptions()
    gdal.UseExceptions()
    try:
        yield gdal
    finally:
        if not previous:
            gdal.DontUseExceptions()
