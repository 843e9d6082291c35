"""GDAL's Python exceptions for RS Lab's own GDAL calls, and the process's setting as it was afterwards.

RS Lab's direct GDAL calls (gdal.Warp, gdal.Translate, the rasteriser) report
failures as RuntimeError. `gdal.UseExceptions()` switches that on for the whole
QGIS process, and called bare it stayed on after the first RS Lab job: another
plugin's `gdal.Open` that expected None for a missing file raised instead.
GDAL 3.6 keeps the setting per process, not per thread, so it is switched on
while any RS Lab block runs and restored when the last one ends
(core/shared_setting.py): with a plain save-and-restore, a job leaving its
block switched exceptions off under another job still inside one, whose
failed gdal.Translate then passed silently.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator

from .shared_setting import SharedSetting


def _use_exceptions(on: bool) -> None:
    from osgeo import gdal

    if on:
        gdal.UseExceptions()
    else:
        gdal.DontUseExceptions()


def _uses_exceptions() -> bool:
    from osgeo import gdal

    return bool(gdal.GetUseExceptions())


_EXCEPTIONS = SharedSetting(_uses_exceptions, _use_exceptions, True)


@contextmanager
def gdal_exceptions() -> Iterator[Any]:
    """`with gdal_exceptions() as gdal:` GDAL errors raise RuntimeError inside the block; the setting from
    before the first of the blocks running at once is restored when the last one ends."""
    from osgeo import gdal

    with _EXCEPTIONS.held():
        yield gdal
