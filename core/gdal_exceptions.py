"""GDAL's Python exceptions for RS Lab's own GDAL calls, and the process's setting as it was afterwards.

RS Lab's direct GDAL calls (gdal.Warp, gdal.Translate, the rasteriser) report
failures as RuntimeError. `gdal.UseExceptions()` switches that on for the whole
QGIS process, and called bare it stayed on after the first RS Lab job: another
plugin's `gdal.Open` that expected None for a missing file raised instead.
GDAL 3.6 keeps the setting per process, not per thread, so it is switched on
while any RS Lab block runs and restored when the last one ends: with a plain
save-and-restore, a job leaving its block switched exceptions off under
another job still inside one, whose failed gdal.Translate then passed silently.
"""
from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Any, Iterator

_LOCK = threading.Lock()
_inside = 0  # RS Lab blocks running now, in any thread
_previous = False  # the process's setting before the first of them


@contextmanager
def gdal_exceptions() -> Iterator[Any]:
    """`with gdal_exceptions() as gdal:` GDAL errors raise RuntimeError inside the block; the setting from
    before the first of the blocks running at once is restored when the last one ends."""
    global _inside, _previous
    from osgeo import gdal

    with _LOCK:
        if _inside == 0:
            _previous = bool(gdal.GetUseExceptions())
            gdal.UseExceptions()
        _inside += 1
    try:
        yield gdal
    finally:
        with _LOCK:
            _inside -= 1
            if _inside == 0 and not _previous:
                gdal.DontUseExceptions()
