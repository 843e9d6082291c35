"""What overviews in a large output cost to build and save when QGIS draws it.

What it measures
    A 10000 x 10000 float32 score raster, written as the engine writes its
    outputs (tiled 256 x 256, deflate level 1), drawn by QGIS's map renderer
    at 1200 x 900 pixels over its full extent (the view a user gets when the
    layer is added) and at 1:1 over a corner, with and without the internal
    overviews `rslab.core.overviews.add_overviews` builds; the seconds that
    building takes, and the file size before and after.

How
    The scores are global RX's on the bundled ABU beach-2 scene (real data),
    repeated across the canvas and written strip by strip. Each view is
    drawn once after GDAL's block cache is emptied (a first look at the
    layer; the file itself is in the OS's page cache) and three times more
    (their median: GDAL's cache, 5 % of RAM by default, then holds what the
    first draw decompressed, if it fits).

Measured on 2026-12-03 (2 CPU cores, GDAL 3.6.2, QGIS 3.22) with
`.venv/bin/python bench/overviews.py`: see README, Measured figures.
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import rasterio

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT.parent))
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")


def _link_package() -> None:
    """Import the checkout as the package `rslab` (the plugin folder's name once installed)."""
    link = Path(tempfile.gettempdir()) / "rslab-bench-pkg"
    link.mkdir(exist_ok=True)
    target = link / "rslab"
    if not target.exists():
        target.symlink_to(ROOT)
    sys.path.insert(0, str(link))


def _score_pattern(work: Path) -> np.ndarray:
    from rslab.core.anomaly import AnomalyOutputs, detect_anomalies
    from rslab.core.anomaly_params import AnomalyParams
    from rslab.core.import_cube import import_cube

    import_cube(str(ROOT / "resources" / "samples" / "abu-beach-2.mat"), str(work / "beach2.tif"))
    detect_anomalies(str(work / "beach2.tif"), AnomalyOutputs(scores=str(work / "scores.tif")),
                     AnomalyParams(method="rx"))
    with rasterio.open(work / "scores.tif") as ds:
        return ds.read(1)


def _write_large(pattern: np.ndarray, path: Path, size: int) -> None:
    from rslab.core.raster_io import open_output, output_profile, raster_info

    info = raster_info(str(ROOT / "resources" / "samples" / "rasterio_RGB.byte.tif"))  # a real CRS and grid
    info = type(info)(**{**info.__dict__, "width": size, "height": size})
    reps = -(-size // pattern.shape[1])
    with open_output(str(path), output_profile(info, 1, "float32", None)) as dst:
        for row in range(0, size, 256):
            rows = min(256, size - row)
            lines = np.arange(row, row + rows) % pattern.shape[0]
            dst.write(np.tile(pattern[lines], (1, reps))[None, :, :size], window=((row, row + rows), (0, size)))


def _draw_seconds(path: Path, lo: float, hi: float, full: bool) -> float:
    from qgis.core import (QgsContrastEnhancement, QgsMapRendererSequentialJob, QgsMapSettings, QgsRasterLayer,
                           QgsRectangle, QgsSingleBandGrayRenderer)
    from qgis.PyQt.QtCore import QSize

    layer = QgsRasterLayer(str(path), "scores")
    renderer = QgsSingleBandGrayRenderer(layer.dataProvider(), 1)
    stretch = QgsContrastEnhancement(layer.dataProvider().dataType(1))
    stretch.setContrastEnhancementAlgorithm(QgsContrastEnhancement.StretchToMinimumMaximum)
    stretch.setMinimumValue(lo)
    stretch.setMaximumValue(hi)
    renderer.setContrastEnhancement(stretch)
    layer.setRenderer(renderer)
    settings = QgsMapSettings()
    settings.setLayers([layer])
    settings.setDestinationCrs(layer.crs())
    settings.setOutputSize(QSize(1200, 900))
    extent = layer.extent()
    if full:
        settings.setExtent(extent)
    else:  # 1:1 over the top-left corner
        px = layer.rasterUnitsPerPixelX()
        settings.setExtent(QgsRectangle(extent.xMinimum(), extent.yMaximum() - 900 * px,
                                        extent.xMinimum() + 1200 * px, extent.yMaximum()))
    start = time.perf_counter()
    job = QgsMapRendererSequentialJob(settings)
    job.start()
    job.waitForFinished()
    return time.perf_counter() - start


def _empty_gdal_cache() -> None:
    """Drop GDAL's cached blocks, so the next draw reads the file as a first look at a layer does."""
    from osgeo import gdal

    size = gdal.GetCacheMax()
    gdal.SetCacheMax(0)
    gdal.SetCacheMax(size)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=10000)
    parser.add_argument("--work", default=None, help="work folder (default: a temporary one, removed after)")
    args = parser.parse_args()
    _link_package()
    from qgis.core import QgsApplication

    from rslab.core.overviews import add_overviews

    app = QgsApplication([], False)
    app.initQgis()
    work = Path(args.work or tempfile.mkdtemp(prefix="rslab-bench-overviews-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        pattern = _score_pattern(work)
        lo, hi = (float(v) for v in np.percentile(pattern, [2, 99]))
        plain, pyramids = work / "plain.tif", work / "overviews.tif"
        _write_large(pattern, plain, args.size)
        shutil.copy(plain, pyramids)
        start = time.perf_counter()
        factors = add_overviews(str(pyramids))
        build = time.perf_counter() - start
        print(f"{args.size} x {args.size} float32 scores; overviews {factors} built in {build:.1f} s; "
              f"file {plain.stat().st_size / 1e6:.0f} MB -> {pyramids.stat().st_size / 1e6:.0f} MB")
        print(f"{'view (1200 x 900 px)':18} {'draw':8} {'no overviews s':>15} {'overviews s':>12} {'ratio':>7}")
        for label, full in (("full extent", True), ("1:1, a corner", False)):
            times = {}
            for name, path in (("plain", plain), ("overviews", pyramids)):
                _empty_gdal_cache()
                first = _draw_seconds(path, lo, hi, full)
                times[name] = first, statistics.median(_draw_seconds(path, lo, hi, full) for _ in range(3))
            for index, draw in enumerate(("first", "again")):
                plain_s, pyramid_s = times["plain"][index], times["overviews"][index]
                print(f"{label:18} {draw:8} {plain_s:15.2f} {pyramid_s:12.2f} {plain_s / pyramid_s:6.1f}x")
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
        app.exitQgis()


if __name__ == "__main__":
    main()
