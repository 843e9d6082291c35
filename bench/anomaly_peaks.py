"""Time and peak memory of listing the strongest anomalies (core/anomaly_peaks.py) on a large score raster.

What it measures
    `strongest_peaks` (20 peaks, 5-pixel separation: what every anomaly run
    adds) on a size x size float32 score raster, against one plain read pass
    over the same raster (`score_bounds`, the value range every run already
    takes) as the baseline, each in a fresh child process with its peak RSS.

Why
    The peaks pass reads each window with a 5-pixel margin and runs a 11 x 11
    maximum filter on it; it should cost about one more read pass, and its
    memory should not grow with the raster.

How
    The scores are real: global RX scores of ABU beach-2 (the sample bundled
    in resources/samples), repeated across the canvas and written strip by
    strip as a tiled, deflate-compressed float32 GeoTIFF, cached in the work
    folder.

    .venv/bin/python bench/anomaly_peaks.py [--size 20000] [--workdir DIR]
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import rasterio
from rasterio.windows import Window

from measure import MB, print_passes, spawn_child, timed_child  # bench/ is on sys.path

SAMPLE = Path(__file__).resolve().parent.parent / "resources" / "samples" / "abu-beach-2.mat"
DEFAULT_WORKDIR = Path(tempfile.gettempdir()) / "rslab-bench-peaks"
STRIP_ROWS = 500  # rows written at a time while building (a multiple of beach-2's 100)
BASELINE_PASS = "value range (one read pass, baseline)"


def build_scores(workdir: Path, size: int) -> Path:
    """RX scores of beach-2 repeated to size x size (cached)."""
    from rslab.core.anomaly import AnomalyOutputs, detect_anomalies
    from rslab.core.anomaly_params import AnomalyParams
    from rslab.core.import_cube import import_cube
    from rslab.core.outputs import PendingOutputs

    path = workdir / f"beach2_rx_scores_{size}.tif"
    if path.exists():
        return path
    cube = workdir / "beach-2.tif"
    if not cube.exists():
        import_cube(str(SAMPLE), str(cube))
    tile_path = workdir / "beach-2_rx.tif"
    detect_anomalies(str(cube), AnomalyOutputs(scores=str(tile_path)), AnomalyParams(method="rx"))
    with rasterio.open(tile_path) as src:
        tile = src.read(1)
    height, width = tile.shape
    profile = dict(driver="GTiff", width=size, height=size, count=1, dtype="float32", nodata=np.nan, tiled=True,
                   blockxsize=256, blockysize=256, compress="deflate", BIGTIFF="IF_SAFER")
    cols = np.arange(size) % width
    with PendingOutputs() as pending, rasterio.open(pending.temp(str(path)), "w", **profile) as dst:
        for top in range(0, size, STRIP_ROWS):
            rows = np.arange(top, min(top + STRIP_ROWS, size)) % height
            dst.write(tile[rows][:, cols], 1, window=Window(0, top, size, len(rows)))
    return path


def _peaks(path: str) -> list:
    from rslab.core.anomaly_peaks import strongest_peaks

    found = strongest_peaks(path)
    return [found[0].row, found[0].col, found[0].score, len(found)]


def read_pass(path: str) -> list:
    """One plain read pass over a score raster (its value range): the baseline pass."""
    from rslab.core.rx import score_bounds

    return list(score_bounds(path))


def child(job: str, path: str) -> None:
    timed_child(_peaks if job == "peaks" else read_pass, path)


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=20000, help="edge of the score raster in pixels")
    parser.add_argument("--workdir", default=str(DEFAULT_WORKDIR))
    parser.add_argument("--child", choices=("peaks", "bounds"))
    parser.add_argument("--path")
    args = parser.parse_args(argv)
    if args.child:
        child(args.child, args.path)
        return
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    path = build_scores(workdir, args.size)
    print(f"scores {path} ({args.size} x {args.size} float32, {path.stat().st_size / MB:.0f} MB on disk; "
          f"built or found in {time.perf_counter() - t0:.0f} s)", flush=True)
    figures = {job: spawn_child(__file__, ["--child", job, "--path", str(path)]) for job in ("bounds", "peaks")}
    megapixels = args.size * args.size / 1e6
    print_passes(figures, (("bounds", BASELINE_PASS), ("peaks", "strongest 20 peaks")), megapixels)
    print(f"  peaks / read pass: {figures['peaks']['seconds'] / figures['bounds']['seconds']:.2f}x; "
          f"uncompressed scores {4 * megapixels:.0f} MB; strongest {figures['peaks']['found'][:3]}, "
          f"{figures['peaks']['found'][3]} listed")


if __name__ == "__main__":
    main()
