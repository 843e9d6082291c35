"""Overviews (pyramids) inside the GeoTIFFs a job writes, so large outputs draw fast in QGIS.

Without them QGIS reads and decompresses every full-resolution block the view
covers on each redraw: a whole 10,000 x 10,000 score map for a zoomed-out
view. GDAL builds them from the finished file in one pass that costs a small
share of the job (about 0.5 s for a 4096 x 4096 float32 raster here), and they
add up to a third to the file (16 % on a 10000 x 10000 score map). Small
rasters draw fast without them.
"""
from __future__ import annotations

import os
from typing import List, Optional

from .device import cpu_threads
from .errors import JobCancelled
from .gdal_exceptions import gdal_exceptions
from .job import JobMonitor
from .outputs import write_failed
from .raster_io import gdal_env

OVERVIEW_MIN_SIDE = 2048  # a raster whose longer side is at most this gets no overviews
OVERVIEW_LEAST_SIDE = 256  # levels are added until the longer side is at most this

# Every level keeps one full-resolution pixel of each block it stands for (nearest), never an average: QGIS
# takes the statistics it styles a layer with (the score map's 2-99 % cut) from a sample it reads at reduced
# size, that is from an overview, and the dock's histograms read both of two rasters decimated. Averaged
# levels shrank a score map's heavy tail (a cut of 20.9-58.9 for the pixels' 12.0-101.1) and paired each mask
# pixel with a 2 x 2 average of uncertainty; nearest levels are a sample of the pixels themselves (GDAL 3.6
# keeps each block's top-left pixel, where a plain decimated read takes one nearer its centre: a zoomed-out
# view sits up to half a block, about one screen pixel, off an input layer without overviews).
RESAMPLING = "NEAREST"


def overview_factors(width: int, height: int) -> List[int]:
    """Decimation factors 2, 4, 8, ... for a raster of this size; empty when it draws fast without them."""
    side = max(width, height)
    if side <= OVERVIEW_MIN_SIDE:
        return []
    factors = [2]
    while side / factors[-1] > OVERVIEW_LEAST_SIDE:
        factors.append(factors[-1] * 2)
    return factors


def add_overviews(path: str, monitor: Optional[JobMonitor] = None) -> List[int]:
    """Build internal overviews of the GeoTIFF at `path` (opened for update) and return their factors.

    Reports progress on `monitor` and stops on its cancel (JobCancelled; the
    file is the job's temporary output, discarded with it).
    """
    monitor = monitor or JobMonitor()
    cancelled = []

    def callback(fraction: float, _message: object, _data: object) -> int:
        try:
            monitor.step(fraction, "building overviews")
        except JobCancelled:
            cancelled.append(True)
            return 0
        return 1

    # GDAL's block cache bounded as in the jobs' reads and writes (raster_io.gdal_env): unbounded, the overviews of
    # a 20000 x 20000 mask took 233 MB more than the pass that wrote it (GDAL's default cache: 5 % of the RAM)
    with gdal_env(), gdal_exceptions() as gdal:
        # the levels' blocks compressed in as many threads as the file's own (raster_io.output_profile); set for
        # this thread only, as another plugin's GDAL calls may run beside it
        threads = gdal.GetThreadLocalConfigOption("GDAL_NUM_THREADS", None)
        gdal.SetThreadLocalConfigOption("GDAL_NUM_THREADS", str(cpu_threads()))
        try:
            ds = gdal.Open(os.fspath(path), gdal.GA_Update)
            try:
                factors = overview_factors(ds.RasterXSize, ds.RasterYSize)
                if factors:
                    ds.BuildOverviews(RESAMPLING, factors, callback=callback)
            finally:
                ds = None  # closes the file: the overviews are written now
        except RuntimeError as exc:
            if cancelled:
                raise JobCancelled() from exc
            # A full disk, mostly (the file was written a moment ago). The path is a job's temporary name, which
            # write_failed leaves out of the message.
            raise write_failed(path, exc, "could not add overviews to the output") from exc
        finally:
            gdal.SetThreadLocalConfigOption("GDAL_NUM_THREADS", threads)
    if cancelled:
        raise JobCancelled()
    return factors


def add_overviews_to(paths: List[str], monitor: Optional[JobMonitor] = None) -> None:
    """`add_overviews` for each path, sharing `monitor`'s range between them."""
    monitor = monitor or JobMonitor()
    for index, path in enumerate(paths):
        add_overviews(path, monitor.sub(index / len(paths), (index + 1) / len(paths)))
