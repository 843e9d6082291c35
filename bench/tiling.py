"""Throughput and peak memory of the windowed engine (`run_tiled`) on a 20000 x 20000 raster.

What it measures
    A trivial per-pixel job (the mean of the three bands, written as float32)
    run by `rslab.core.tiling.run_tiled` inside `PendingOutputs`, the way the
    engine's jobs run, over a 20000 x 20000 x 3 uint8 GeoTIFF (400 megapixels,
    1200 MB uncompressed in, 1600 MB uncompressed out). It reports megapixels
    per second and the peak resident memory of the job, for both stitching
    modes, next to the same job done whole-image (read at once with rasterio)
    on smaller crops.

Why
    The engine's promise is that memory does not grow with the raster: a
    centre-cropped run holds about one tile plus GDAL's block cache (which
    `gdal_env` caps at 256 MB), a blended run one strip of tile height across
    the raster's width. A whole-image job grows with the area. The table
    makes this visible: the whole-image rows at 2500 and 5000 pixels grow
    about four-fold with the area, the tiled centre rows at 5000 and 20000
    pixels stay within the cache cap of each other although the area grows
    sixteen-fold, and the tiled peaks are a fraction of the raster's
    uncompressed size.

How
    The input repeats the real Landsat RGB sample bundled with the plugin
    (`resources/samples/rasterio_RGB.byte.tif`, 791 x 718, nodata 0,
    EPSG:32618) across the canvas, keeping its CRS, origin and pixel size. It
    is written strip by strip (never whole in memory), tiled and deflate
    compressed, and cached in the work folder: a later run reuses it. Smaller
    inputs are the top-left corner of the same pattern. Every measured job
    runs in a fresh child process (this script with `--child`), which reports
    `ru_maxrss` right after its imports (baseline) and at the end (peak), so
    the figures belong to that job alone. Times cover the job only (opening,
    reading, computing, writing, committing), not the interpreter start.

Measured on 2026-12-04 (2 CPU cores, AVX2-only AMD EPYC VM, GDAL 3.6.2, rasterio 1.3.5,
numpy 1.24.2) with `.venv/bin/python bench/tiling.py` (inputs cached):

    run                      pixels       s   MP/s  base MB  peak MB  job MB   in MB  out MB  peak/in  out disk MB
    whole-image              2500^2     0.3   24.7       76      170      94      19      25    9.1 x            6
    whole-image              5000^2     0.8   33.2       76      398     323      75     100    5.3 x           26
    tiled centre 1024/32     5000^2     0.8   32.5       76      294     218      75     100    3.9 x           26
    tiled centre 1024/32    20000^2    11.1   36.1       76      396     321    1200    1600   0.33 x          423
      the same, 1 thread    20000^2    13.5   29.7       76      395     319    1200    1600   0.33 x          423
    tiled blend 1024/32     20000^2    14.3   27.9       76      671     596    1200    1600   0.56 x          424

"1 thread" is the centre run with GDAL compressing the output's blocks in
one thread (RSLAB_THREADS=1), the baseline of the engine's NUM_THREADS (as
many compression threads as torch may use, core/raster_io.output_profile):
1.12-1.21 x over three runs that day on these two cores.

An earlier run, before output compression went to deflate level 1 and the
blending strips to float32 buffers reused in place, gave 10.4 MP/s for the
centre run (deflate level 6 was most of the time) and a 1174 MB peak for the
blend run.

MB are 10^6 bytes; "job MB" is the peak minus the baseline after imports;
"peak/in" is the peak over the uncompressed input. The centre run's growth
from 5000 to 20000 pixels is GDAL's block cache filling up to its 256 MB cap
(with the cap at 32 MB the two peaks were 151 and 159 MB). The blended run
holds float32 strips of tile height x raster width (accumulator and weights)
on top of the cache: linear in the width, not in the height.
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence

import numpy as np
import rasterio
from rasterio.transform import Affine
from rasterio.windows import Window

from rslab.core.device import cpu_threads
from rslab.core.outputs import PendingOutputs
from rslab.core.raster_io import gdal_env, open_output, output_profile, raster_info
from rslab.core.tiling import OutputSpec, TileSpec, run_tiled

from measure import max_rss_bytes, own_hwm_bytes, spawn_child  # bench/ is on sys.path

SAMPLE = Path(__file__).resolve().parent.parent / "resources" / "samples" / "rasterio_RGB.byte.tif"
DEFAULT_WORKDIR = Path(tempfile.gettempdir()) / "rslab-bench-tiling"
BUILD_STRIP_ROWS = 512  # rows written per window when building an input (a multiple of its 256 block)
OUT_DTYPE = "float32"
MB = 1e6


# ---------------------------------------------------------------- the job


def band_mean(arrays: List[np.ndarray], valid: np.ndarray) -> List[np.ndarray]:
    """The per-pixel job: mean of the input's bands as float32 (nodata is masked by the caller)."""
    return [arrays[0].mean(axis=0, dtype=np.float32)]


# ---------------------------------------------------------------- inputs


def build_input(path: Path, size: int) -> float:
    """Write a size x size x 3 GeoTIFF repeating the Landsat sample; return seconds spent (0 if cached)."""
    if _is_cached(path, size):
        return 0.0
    t0 = time.perf_counter()
    with rasterio.open(SAMPLE) as src:
        sample = src.read()
        profile = src.profile
    _, sample_h, sample_w = sample.shape
    t = profile["transform"]
    profile.update(
        width=size, height=size, tiled=True, blockxsize=256, blockysize=256,
        compress="deflate", predictor=2, interleave="pixel", BIGTIFF="IF_SAFER",
        transform=Affine(t.a, 0.0, t.c, 0.0, t.e, t.f),
    )
    cols = np.arange(size) % sample_w
    with rasterio.Env(GDAL_NUM_THREADS="ALL_CPUS", GDAL_CACHEMAX=128 * 1024 * 1024):
        with PendingOutputs() as pending, rasterio.open(pending.temp(path), "w", **profile) as dst:
            for top in range(0, size, BUILD_STRIP_ROWS):
                rows = np.arange(top, min(top + BUILD_STRIP_ROWS, size)) % sample_h
                strip = sample[:, rows][:, :, cols]
                dst.write(strip, window=Window(0, top, size, len(rows)))
    return time.perf_counter() - t0


def _is_cached(path: Path, size: int) -> bool:
    if not path.exists():
        return False
    try:
        info = raster_info(str(path))
    except Exception:
        return False
    return info.width == size and info.height == size and info.count == 3 and info.dtype == "uint8"


def input_path(workdir: Path, size: int) -> Path:
    return workdir / f"landsat_repeat_{size}.tif"


# ---------------------------------------------------------------- child side






def run_tiled_job(src: str, dst: str, tile: int, overlap: int, stitch: str) -> None:
    """The measured tiled job, written through PendingOutputs like the engine's jobs."""
    spec = TileSpec(size=tile, overlap=overlap, stitch=stitch)
    with PendingOutputs() as pending:
        out = OutputSpec(pending.temp(dst), count=1, dtype=OUT_DTYPE, descriptions=("band mean",))
        run_tiled([src], [out], band_mean, spec)


def run_whole_job(src: str, dst: str) -> None:
    """The same job with the whole raster read at once: memory grows with the area."""
    with gdal_env(), PendingOutputs() as pending:
        with rasterio.open(src) as ds:
            data = ds.read()
            valid = ds.dataset_mask() > 0
        info = raster_info(src)
        result = band_mean([data], valid)[0]
        result[~valid] = np.nan
        with open_output(pending.temp(dst), output_profile(info, 1, OUT_DTYPE, None)) as sink:
            sink.write(result[None])


def child_main(args: argparse.Namespace) -> None:
    """Run one job in this (fresh) process and print its figures as one JSON line."""
    if args.child == "build":
        print(json.dumps({"seconds": build_input(Path(args.dst), args.size)}))
        return
    baseline = max_rss_bytes()
    t0 = time.perf_counter()
    if args.child == "whole":
        run_whole_job(args.src, args.dst)
    else:
        run_tiled_job(args.src, args.dst, args.tile, args.overlap, args.child)
    seconds = time.perf_counter() - t0
    print(json.dumps({"seconds": seconds, "baseline": baseline, "peak": max_rss_bytes(), "hwm": own_hwm_bytes()}))


# ---------------------------------------------------------------- parent side


@dataclass(frozen=True)
class Run:
    label: str
    mode: str  # "whole", "centre" or "blend"
    size: int
    threads: Optional[int] = None  # RSLAB_THREADS for the child (GDAL's compression threads); None: the default


@dataclass(frozen=True)
class Figures:
    run: Run
    seconds: float
    baseline: int
    peak: int
    out_disk: int




def measure(run: Run, workdir: Path, tile: int, overlap: int) -> Figures:
    """Run `run` in a child process and collect its figures."""
    dst = workdir / f"out_{run.mode}_{run.size}.tif"
    result = spawn_child(__file__, [
        "--child", run.mode, "--src", str(input_path(workdir, run.size)), "--dst", str(dst),
        "--tile", str(tile), "--overlap", str(overlap),
    ], env={"RSLAB_THREADS": str(run.threads)} if run.threads else None)
    peak, hwm = int(result["peak"]), int(result["hwm"])
    if peak > 1.05 * hwm:
        print(f"  warning: ru_maxrss {peak / MB:.0f} MB exceeds the child's own peak {hwm / MB:.0f} MB "
              f"(inherited from the launcher); the figure is too high", flush=True)
    return Figures(run, result["seconds"], int(result["baseline"]), peak, dst.stat().st_size)


def plan(size: int, crop: int, tile: int, overlap: int, blend: bool) -> List[Run]:
    """Whole-image on two crops, tiled centre on a crop and the full size, blend on the full size."""
    crop = min(crop, size)
    tiled = f"{tile}/{overlap}"
    runs = [Run("whole-image", "whole", s) for s in sorted({max(crop // 2, 1), crop})]
    runs += [Run(f"tiled centre {tiled}", "centre", s) for s in sorted({crop, size})]
    runs.append(Run("  the same, 1 thread", "centre", size, threads=1))  # the baseline of parallel compression
    if blend:
        runs.append(Run(f"tiled blend {tiled}", "blend", size))
    return runs


HEADER = (
    f"{'run':<22} {'pixels':>8} {'s':>7} {'MP/s':>6} {'base MB':>8} {'peak MB':>8} {'job MB':>7} "
    f"{'in MB':>7} {'out MB':>7} {'peak/in':>8} {'out disk MB':>12}"
)


def format_row(f: Figures) -> str:
    pixels = f.run.size * f.run.size
    in_bytes = pixels * 3
    out_bytes = pixels * np.dtype(OUT_DTYPE).itemsize
    ratio = f.peak / in_bytes
    ratio_text = f"{ratio:.2f} x" if ratio < 1 else f"{ratio:.1f} x"
    return (
        f"{f.run.label:<22} {str(f.run.size) + '^2':>8} {f.seconds:>7.1f} {pixels / 1e6 / f.seconds:>6.1f} "
        f"{f.baseline / MB:>8.0f} {f.peak / MB:>8.0f} {(f.peak - f.baseline) / MB:>7.0f} "
        f"{in_bytes / MB:>7.0f} {out_bytes / MB:>7.0f} {ratio_text:>8} {f.out_disk / MB:>12.0f}"
    )


def cleanup(workdir: Path, runs: Sequence[Run]) -> None:
    """Remove the outputs (the cached inputs stay for the next run)."""
    for run in runs:
        (workdir / f"out_{run.mode}_{run.size}.tif").unlink(missing_ok=True)


def parent_main(args: argparse.Namespace) -> None:
    started = time.perf_counter()
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    runs = plan(args.size, args.crop, args.tile, args.overlap, not args.no_blend)
    print(f"work folder {workdir}; {os.cpu_count()} CPU cores; input repeats {SAMPLE.name}", flush=True)
    for size in sorted({r.size for r in runs}):
        path = input_path(workdir, size)
        seconds = spawn_child(__file__, ["--child", "build", "--size", str(size), "--dst", str(path)])["seconds"]
        state = f"built in {seconds:.1f} s" if seconds else "cached"
        print(f"input {size} x {size} x 3 uint8: {state}", flush=True)
    figures = []
    try:
        for run in runs:
            print(f"running {run.label} on {run.size} x {run.size} ...", flush=True)
            figures.append(measure(run, workdir, args.tile, args.overlap))
    finally:
        if not args.keep:
            cleanup(workdir, runs)
    print()
    print(HEADER)
    for f in figures:
        print(format_row(f))
    print(
        f"\nMB = 10^6 bytes; base = ru_maxrss after imports, peak = ru_maxrss at the end of the child; "
        f"job = peak - base; in/out MB uncompressed (out is {OUT_DTYPE}); "
        f"peak/in = peak over the uncompressed input; '1 thread': GDAL compresses the output's blocks in one "
        f"thread (RSLAB_THREADS=1), not in {cpu_threads()} (raster_io.output_profile's NUM_THREADS)."
    )
    removed = "" if args.keep else "; outputs removed (--keep keeps them)"
    print(f"total {time.perf_counter() - started:.0f} s{removed}")


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=20000, help="edge of the full input raster in pixels")
    parser.add_argument("--tile", type=int, default=1024, help="tile edge in pixels")
    parser.add_argument("--overlap", type=int, default=32, help="tile overlap in pixels")
    parser.add_argument("--crop", type=int, default=5000, help="edge of the crop for the whole-image baseline")
    parser.add_argument("--workdir", default=str(DEFAULT_WORKDIR), help="folder for the cached inputs and outputs")
    parser.add_argument("--keep", action="store_true", help="keep the output rasters")
    parser.add_argument("--no-blend", action="store_true", help="skip the blended run (the slowest)")
    parser.add_argument("--child", choices=("build", "whole", "centre", "blend"), help=argparse.SUPPRESS)
    parser.add_argument("--src", help=argparse.SUPPRESS)
    parser.add_argument("--dst", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> None:
    args = parse_args(argv)
    if args.child:
        child_main(args)
    else:
        parent_main(args)


if __name__ == "__main__":
    main()
