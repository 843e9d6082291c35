"""Global RX on one 1000 x 1000 x 200 cube stored in the layouts users bring: does the file layout slow the windowed engine?

What it measures
    `detect_anomalies` with `method="rx"` (two windowed passes: statistics,
    then scores) on the same pixels written as: the bench's int16
    band-interleaved GeoTIFF; float32 and float64 pixel-interleaved deflate
    GeoTIFFs with NaN declared as nodata (GDAL's default interleave for a
    multi-band GeoTIFF); and float32 ENVI files in BSQ, BIL and BIP order
    with nodata -9999 (the usual hyperspectral exchange format). For each it
    prints seconds and the job's peak memory twice: with the engine's read
    path (`core/raster_io.read_window`, which derives a nodata mask from the
    pixels it has read) and with the baseline the engine used before, rasterio's
    `dataset_mask` (which reads every band's mask band, that is every band a
    second time), measured in the same run. It also checks that every layout
    gives the same scores as the first.

Why
    A user's hyperspectral file is rarely the engine's own tiled,
    band-interleaved GeoTIFF. On a pixel-interleaved, compressed GeoTIFF a
    read of one band decompresses the whole 256 x 256 x 200 block, and once
    GDAL's 256 MB block cache (`gdal_env`) is full the per-band mask reads
    do that again.

How
    The cube is the mosaic of real ABU scenes that `bench/anomaly.py` builds
    (its `build_big`, cached in the same work folder); the other layouts are
    written from it window by window with rasterio, once, and cached. Each
    measured run is a fresh child process (bench/measure.py); the file is read
    once before so that every run finds it in the page cache.

    .venv/bin/python bench/read_layouts.py [--layouts ...] [--workdir /tmp/rslab-bench-anomaly]

Measured on 2026-12-02 (2 CPU cores, AMD EPYC, 24 GB RAM; GDAL 3.6.2,
rasterio 1.3.5, numpy 1.24.2), 466 s in all, writing the five layouts
included:

  layout                                   MB on disk  engine s  peak MB  dataset_mask s  peak MB   ratio  same scores
  GeoTIFF int16, band-interleaved, deflate        253      12.1      974            12.9      993   1.07x  reference
  GeoTIFF float32, pixel, deflate, NaN            324      15.0     1045            15.9     1047   1.06x  yes
  GeoTIFF float64, pixel, deflate, NaN            355      20.4     1156           204.3     1156  10.02x  yes
  ENVI float32 BSQ, nodata -9999                  800      11.0     1023            12.5     1023   1.14x  yes
  ENVI float32 BIL, nodata -9999                  800      13.4     1023            13.2      972   0.99x  yes
  ENVI float32 BIP, nodata -9999                  800      11.9      968            13.9      968   1.17x  yes

The float64 pixel-interleaved file is the one that hurt: its 256 x 256 x 200
blocks are 105 MB each, and as far as we can tell GDAL's 256 MB cache cannot
keep what one window's data read and its 200 per-band mask reads pull in,
so the baseline decompresses blocks again and again (10x slower; the float32
file, with 52 MB blocks, is not slowed). Elsewhere the two
read paths are within this machine's run-to-run noise (about 10 %: the
int16 row, where neither path reads more than the pixels, shows it).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent))
from anomaly import BIG_BANDS, BIG_SIZE, DEFAULT_WORKDIR, big_path, read_scores  # noqa: E402
from measure import own_hwm_bytes, spawn_child  # noqa: E402

MB = 1e6
NAN = float("nan")
# name -> (file name, driver, dtype, creation options, nodata); None: the bench's own mosaic, as built.
# ENVI writes its header beside the data file with the extension replaced, so the stems must differ.
LAYOUTS: Dict[str, Any] = {
    "GeoTIFF int16, band-interleaved, deflate": None,
    "GeoTIFF float32, pixel, deflate, NaN": (
        "f32_pixel.tif", "GTiff", "float32",
        {"tiled": True, "blockxsize": 256, "blockysize": 256, "interleave": "pixel", "compress": "deflate"}, NAN),
    "GeoTIFF float64, pixel, deflate, NaN": (
        "f64_pixel.tif", "GTiff", "float64",
        {"tiled": True, "blockxsize": 256, "blockysize": 256, "interleave": "pixel", "compress": "deflate",
         "BIGTIFF": "YES"}, NAN),
    "ENVI float32 BSQ, nodata -9999": ("f32_bsq.img", "ENVI", "float32", {"interleave": "bsq"}, -9999.0),
    "ENVI float32 BIL, nodata -9999": ("f32_bil.img", "ENVI", "float32", {"interleave": "bil"}, -9999.0),
    "ENVI float32 BIP, nodata -9999": ("f32_bip.img", "ENVI", "float32", {"interleave": "bip"}, -9999.0),
}


def layout_path(workdir: Path, name: str) -> Path:
    spec = LAYOUTS[name]
    return big_path(workdir) if spec is None else workdir / "layouts" / spec[0]


def build_layout(workdir: Path, name: str) -> Dict[str, Any]:
    """Write the mosaic in one layout, 256 rows at a time (cached); its size on disk."""
    import rasterio
    from rasterio.windows import Window

    from rslab.core.raster_io import gdal_env, open_raster

    path = layout_path(workdir, name)
    done = path.with_name(path.name + ".done")  # written last: a half-written layout is rebuilt
    if LAYOUTS[name] is not None and not done.exists():
        _, driver, dtype, options, nodata = LAYOUTS[name]
        path.parent.mkdir(parents=True, exist_ok=True)
        with gdal_env(), open_raster(str(big_path(workdir))) as src:
            profile = {"driver": driver, "width": src.width, "height": src.height, "count": src.count,
                       "dtype": dtype, "nodata": nodata, **options}
            with rasterio.open(path, "w", **profile) as dst:
                for r0 in range(0, src.height, 256):
                    window = Window(0, r0, src.width, min(256, src.height - r0))
                    dst.write(src.read(window=window).astype(dtype), window=window)
        done.touch()
    header = path.with_suffix(".hdr")  # ENVI's header beside the data
    return {"disk": path.stat().st_size + (header.stat().st_size if header.exists() else 0)}


def scores_path(workdir: Path, name: str, baseline: bool) -> Path:
    """Where a run leaves its scores for the parent's comparison."""
    return workdir / "layouts" / f"scores-{list(LAYOUTS).index(name)}-{int(baseline)}.npy"


def run_child(workdir: Path, name: str, baseline: bool) -> Dict[str, Any]:
    """RX on one layout in this fresh process: seconds, peak memory and the scores (saved for the comparison)."""
    import numpy as np

    import rslab.core.raster_io as raster_io
    from rslab.core.anomaly import AnomalyOutputs, detect_anomalies
    from rslab.core.anomaly_params import AnomalyParams

    if baseline:  # the read path before 2026-12-02: rasterio's dataset mask, which reads every band's mask band
        raster_io._dataset_mask = lambda ds, bands, data, **where: ds.dataset_mask(**where) > 0
    path = layout_path(workdir, name)
    with open(path, "rb") as f:  # into the page cache, as for every other run
        while f.read(1 << 24):
            pass
    base = own_hwm_bytes()
    output = workdir / "layouts" / f"scores-{'baseline' if baseline else 'engine'}.tif"
    t0 = time.perf_counter()
    detect_anomalies(str(path), AnomalyOutputs(scores=str(output)), AnomalyParams(method="rx"))
    seconds, peak = time.perf_counter() - t0, own_hwm_bytes()
    np.save(scores_path(workdir, name, baseline), read_scores(str(output)))
    return {"seconds": seconds, "base": base, "peak": peak}


def parent_main(workdir: Path, names: List[str]) -> None:
    import numpy as np

    started = time.perf_counter()
    spawn_child(str(Path(__file__).with_name("anomaly.py")), ["--child", "build", "--workdir", str(workdir)])
    print(f"global RX on a {BIG_SIZE} x {BIG_SIZE} x {BIG_BANDS} cube of real ABU scenes, in several layouts "
          f"(fresh process per run; engine = our read path, dataset_mask = rasterio's, the earlier one)")
    print(f"  {'layout':<40} {'MB on disk':>10} {'engine s':>9} {'peak MB':>8} {'dataset_mask s':>15} "
          f"{'peak MB':>8} {'ratio':>7}  same scores")
    reference = None
    for name in names:
        disk = spawn_child(__file__, ["--child", "build", "--workdir", str(workdir), "--layouts", name])["disk"]
        runs = [spawn_child(__file__, ["--child", "run", "--workdir", str(workdir), "--layouts", name]
                            + (["--baseline"] if baseline else [])) for baseline in (False, True)]
        scores = [np.load(scores_path(workdir, name, baseline)) for baseline in (False, True)]
        if not np.array_equal(scores[0], scores[1], equal_nan=True):
            raise SystemExit(f"{name}: the engine's and the baseline's scores differ")
        if reference is None:
            reference, same = scores[0], "reference"
        else:
            diff = float(np.nanmax(np.abs(scores[0].astype(np.float64) - reference)) / np.nanmax(reference))
            same = "yes" if diff == 0 else f"max diff {diff:.1e} of max"
        engine, base = runs
        print(f"  {name:<40} {disk / MB:>10.0f} {engine['seconds']:>9.1f} {engine['peak'] / MB:>8.0f} "
              f"{base['seconds']:>15.1f} {base['peak'] / MB:>8.0f} {base['seconds'] / engine['seconds']:>6.2f}x  {same}",
              flush=True)
    print(f"  peak MB = the child's VmHWM (10^6 bytes); ratio = dataset_mask s / engine s\ntotal "
          f"{time.perf_counter() - started:.0f} s")


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layouts", nargs="+", default=list(LAYOUTS), choices=list(LAYOUTS), metavar="LAYOUT",
                        help=f"layouts to time (default all: {'; '.join(LAYOUTS)})")
    parser.add_argument("--workdir", default=str(DEFAULT_WORKDIR), help="the bench/anomaly.py work folder")
    parser.add_argument("--child", choices=("build", "run"), help=argparse.SUPPRESS)
    parser.add_argument("--baseline", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    workdir = Path(args.workdir)
    if args.child == "build":
        print(json.dumps(build_layout(workdir, args.layouts[0])))
    elif args.child == "run":
        print(json.dumps(run_child(workdir, args.layouts[0], args.baseline)))
    else:
        parent_main(workdir, args.layouts)


if __name__ == "__main__":
    main()
