"""Global RX on a wide cube stored in strips (GDAL's default GeoTIFF layout) and in tiles; good bands of it.

What it measures
    `detect_anomalies` with `method="rx"` on one 4000 x 1000 x 200 int16 cube
    written twice: as GDAL writes a GeoTIFF by default (`gdal_translate -co
    COMPRESS=DEFLATE`: one-row strips, pixel-interleaved) and in the engine's
    own layout (256 x 256 tiles, band-interleaved, deflate). Each layout is
    read with the engine's windows (`core/tiling.windows_for`: full-width
    windows of whole strips for a striped file) and with the baseline, the
    256 x 256 windows the engine used for every file before 2026-12-03,
    measured in the same run. It prints seconds, peak memory and whether the
    scores agree.

Why
    A 256 x 256 window decodes every strip it touches whole; the strips under
    one row of windows (256 rows x 4000 x 200 values, 420 MB decoded) do not
    fit GDAL's 256 MB block cache, so each strip was decoded again for every
    one of the 16 windows across.

How
    The cube is four copies, side by side (every other one mirrored), of the
    1000 x 1000 x 200 mosaic of real ABU scenes that `bench/anomaly.py` builds
    and caches in the same work folder; the two layouts are written once and
    cached. Every run is a fresh child process (bench/measure.py) that reads
    the file once first, so each finds it in the page cache.

    .venv/bin/python bench/strip_layout.py [--workdir /tmp/rslab-bench-anomaly] [--part rx|good-bands|all]

Part good-bands: one statistics pass (`scene_statistics`, as RX's first
pass) over the first 256 rows of the striped cube with 10 of its 200 bands
left out (as an ENVI bad band list leaves them out): read from the file with
a band list (the engine) and through a VRT of the 190 bands (the engine
before 2026-12-03), each in a fresh process.

Measured on 2026-12-03: see README, Measured figures.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent))
from anomaly import BIG_BANDS, BIG_SIZE, DEFAULT_WORKDIR, big_path  # noqa: E402  (bench/ on sys.path)
from measure import own_hwm_bytes, spawn_child  # noqa: E402

MB = 1e6
COPIES = 4
LAYOUTS = ("strips (GDAL default)", "tiles (engine)")


def layout_path(workdir: Path, layout: str) -> Path:
    return workdir / "strips" / ("wide_strips.tif" if layout == LAYOUTS[0] else "wide_tiled.tif")


def build(workdir: Path) -> Dict[str, Any]:
    """The tiled wide cube from the big mosaic, then its striped copy by gdal_translate; cached."""
    import numpy as np
    import rasterio
    from rasterio.windows import Window

    tiled, striped = layout_path(workdir, LAYOUTS[1]), layout_path(workdir, LAYOUTS[0])
    tiled.parent.mkdir(parents=True, exist_ok=True)
    if not tiled.exists():
        profile = {"driver": "GTiff", "width": COPIES * BIG_SIZE, "height": BIG_SIZE, "count": BIG_BANDS,
                   "dtype": "int16", "tiled": True, "blockxsize": 256, "blockysize": 256, "compress": "deflate",
                   "interleave": "band", "BIGTIFF": "IF_SAFER"}
        partial = tiled.with_suffix(".partial.tif")
        with rasterio.open(big_path(workdir)) as src, rasterio.open(partial, "w", **profile) as dst:
            for r0 in range(0, BIG_SIZE, 256):
                rows = min(256, BIG_SIZE - r0)
                block = src.read(window=Window(0, r0, BIG_SIZE, rows))
                dst.write(np.concatenate([block if i % 2 == 0 else block[:, :, ::-1] for i in range(COPIES)], axis=2),
                          window=Window(0, r0, COPIES * BIG_SIZE, rows))
        partial.rename(tiled)
    if not striped.exists():
        partial = striped.with_suffix(".partial.tif")
        subprocess.run(["gdal_translate", "-q", "-co", "COMPRESS=DEFLATE", "-co", "BIGTIFF=IF_SAFER",
                        str(tiled), str(partial)], check=True)
        partial.rename(striped)
    return {"disk": {layout: layout_path(workdir, layout).stat().st_size for layout in LAYOUTS}}


GOOD_BANDS = [band for band in range(1, 201) if not 100 <= band < 110]  # 10 bands left out, mid-spectrum
CROP_ROWS = 256


def crop_path(workdir: Path) -> Path:
    return workdir / "strips" / f"wide_strips_{CROP_ROWS}rows.tif"


def build_crop(workdir: Path) -> None:
    """The first CROP_ROWS rows of the striped cube, striped as GDAL writes by default; cached."""
    crop = crop_path(workdir)
    if not crop.exists():
        partial = crop.with_suffix(".partial.tif")
        subprocess.run(["gdal_translate", "-q", "-co", "COMPRESS=DEFLATE", "-srcwin", "0", "0",
                        str(COPIES * BIG_SIZE), str(CROP_ROWS), str(layout_path(workdir, LAYOUTS[0])), str(partial)],
                       check=True)
        partial.rename(crop)


def good_bands_child(workdir: Path, baseline: bool) -> Dict[str, Any]:
    """One statistics pass over the good bands of the striped crop: by band list, or through a VRT (baseline)."""
    import tempfile

    import numpy as np

    from rslab.core.bands import band_subset
    from rslab.core.rx import scene_statistics

    path = str(crop_path(workdir))
    with open(path, "rb") as handle:
        while handle.read(1 << 24):
            pass
    with tempfile.TemporaryDirectory() as folder:
        t0 = time.perf_counter()
        if baseline:
            mean, cov, n = scene_statistics(band_subset(path, GOOD_BANDS, folder, "good"))
        else:
            mean, cov, n = scene_statistics(path, bands=GOOD_BANDS)
        seconds = time.perf_counter() - t0
    return {"seconds": seconds, "peak": own_hwm_bytes(), "checksum": float(np.abs(cov).sum()), "pixels": n}


def good_bands_main(workdir: Path) -> None:
    spawn_child(__file__, ["--child", "crop", "--workdir", str(workdir)])
    runs = [spawn_child(__file__, ["--child", "good-bands", "--workdir", str(workdir)] + (["--baseline"] * baseline))
            for baseline in (False, True)]
    engine, base = runs
    same = abs(engine["checksum"] - base["checksum"]) <= 1e-9 * base["checksum"] and engine["pixels"] == base["pixels"]
    print(f"scene statistics over {len(GOOD_BANDS)} of 200 bands of the striped {COPIES * BIG_SIZE} x {CROP_ROWS} "
          f"crop (fresh process each)\n  by band list {engine['seconds']:.1f} s (peak {engine['peak'] / MB:.0f} MB); "
          f"through a VRT {base['seconds']:.1f} s (peak {base['peak'] / MB:.0f} MB); ratio "
          f"{base['seconds'] / engine['seconds']:.1f}x; same statistics: {'yes' if same else 'NO'}", flush=True)


def run_child(workdir: Path, layout: str, baseline: bool) -> Dict[str, Any]:
    """RX on one layout in this fresh process: seconds, peak memory; the scores saved for the comparison."""
    import numpy as np
    import rasterio

    import rslab.core.tiling as tiling
    from rslab.core.anomaly import AnomalyOutputs, detect_anomalies
    from rslab.core.anomaly_params import AnomalyParams

    if baseline:  # the windows before 2026-12-03: 256 x 256 squares whatever the file's storage
        tiling.strip_rows = lambda ds, size: None
    path = layout_path(workdir, layout)
    with open(path, "rb") as handle:  # into the page cache, as for every other run
        while handle.read(1 << 24):
            pass
    output = workdir / "strips" / f"scores-{LAYOUTS.index(layout)}-{int(baseline)}.tif"
    t0 = time.perf_counter()
    detect_anomalies(str(path), AnomalyOutputs(scores=str(output)), AnomalyParams(method="rx"))
    seconds = time.perf_counter() - t0
    with rasterio.open(output) as ds:
        np.save(output.with_suffix(".npy"), ds.read(1))
    return {"seconds": seconds, "peak": own_hwm_bytes(), "scores": str(output.with_suffix(".npy"))}


def parent_main(workdir: Path) -> None:
    import numpy as np

    started = time.perf_counter()
    spawn_child(str(Path(__file__).with_name("anomaly.py")), ["--child", "build", "--workdir", str(workdir)])
    disk = spawn_child(__file__, ["--child", "build", "--workdir", str(workdir)])["disk"]
    print(f"global RX on a {COPIES * BIG_SIZE} x {BIG_SIZE} x {BIG_BANDS} int16 cube of real ABU scenes "
          "(fresh process per run)")
    print(f"  {'layout':<24} {'MB on disk':>10} {'engine s':>9} {'peak MB':>8} {'256 x 256 windows s':>20} "
          f"{'peak MB':>8} {'ratio':>7}  same scores")
    reference = None
    for layout in LAYOUTS:
        runs = [spawn_child(__file__, ["--child", "run", "--workdir", str(workdir), "--layout", layout]
                            + (["--baseline"] if baseline else [])) for baseline in (False, True)]
        scores = [np.load(run["scores"]).astype(np.float64) for run in runs]
        reference = scores[1] if reference is None else reference
        diff = max(float(np.nanmax(np.abs(s - reference)) / np.nanmax(reference)) for s in scores)
        engine, base = runs
        print(f"  {layout:<24} {disk[layout] / MB:>10.0f} {engine['seconds']:>9.1f} {engine['peak'] / MB:>8.0f} "
              f"{base['seconds']:>20.1f} {base['peak'] / MB:>8.0f} {base['seconds'] / engine['seconds']:>6.2f}x  "
              f"{'yes' if diff < 1e-6 else 'NO'} (max diff {diff:.1e} of max)", flush=True)
    print(f"  peak MB = the child's VmHWM (10^6 bytes); ratio = baseline s / engine s\ntotal "
          f"{time.perf_counter() - started:.0f} s")


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default=str(DEFAULT_WORKDIR), help="the bench/anomaly.py work folder")
    parser.add_argument("--part", choices=("rx", "good-bands", "all"), default="all")
    parser.add_argument("--child", choices=("build", "run", "crop", "good-bands"), help=argparse.SUPPRESS)
    parser.add_argument("--layout", choices=LAYOUTS, help=argparse.SUPPRESS)
    parser.add_argument("--baseline", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    workdir = Path(args.workdir)
    if args.child:
        import json

        if args.child == "build":
            result = build(workdir)
        elif args.child == "crop":
            result = build_crop(workdir) or {}
        elif args.child == "good-bands":
            result = good_bands_child(workdir, args.baseline)
        else:
            result = run_child(workdir, args.layout, args.baseline)
        print(json.dumps(result))
        return
    if args.part in ("rx", "all"):
        parent_main(workdir)
    if args.part in ("good-bands", "all"):
        if args.part == "good-bands":
            spawn_child(str(Path(__file__).with_name("anomaly.py")), ["--child", "build", "--workdir", str(workdir)])
            spawn_child(__file__, ["--child", "build", "--workdir", str(workdir)])
        good_bands_main(workdir)


if __name__ == "__main__":
    main()
