"""Global RX inside QGIS's processes: numpy's `@` against `core/blas.py`, with GSL's CBLAS loaded first.

What it measures
    Global RX (`detect_anomalies`, METHOD rx) on the 1000 x 1000 x 200 int16
    mosaic of real ABU scenes that bench/anomaly.py builds (and caches), in
    four ways, each in a fresh process:
      1. plain Python, the engine as shipped (scipy's BLAS wrappers);
      2. with libgslcblas loaded first, as `qgis.bin` and `qgis_process.bin`
         have it, the engine as shipped;
      3. the same, with the engine's products put back to numpy's `@`
         (`x.T @ x`, `x @ inverse`: the code before core/blas.py), the
         baseline;
      4. through `/usr/bin/qgis_process.bin run rslab:detect_anomalies`
         (a throwaway profile with this checkout as its plugin), whole
         command timed, QGIS's start included.
    It prints the seconds of each and the ratio of 3 to 2, and the largest
    relative difference between the score rasters of 1, 2 and 3.
Why
    QGIS 3.22's binaries link GSL; its libgslcblas exports the `cblas_*`
    functions Debian's numpy calls for `@`, and being loaded first they
    replace OpenBLAS's in the whole process. A review measured RX on a
    1200 x 1200 x 205 cube at 225 s through qgis_process against 32 s in
    Python.
How
    .venv/bin/python bench/blas_in_qgis.py [--workdir /tmp/rslab-bench-anomaly]
"""
from __future__ import annotations

import argparse
import ctypes
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from anomaly import big_path  # noqa: E402  (bench/anomaly.py: bench/ is on sys.path)
from measure import spawn_child  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
ANOMALY_BENCH = REPO / "bench" / "anomaly.py"
GSL = "libgslcblas.so.0"
WAYS = {"python": "plain Python, shipped engine", "gsl": "GSL's CBLAS loaded first, shipped engine",
        "gsl_numpy": "GSL's CBLAS loaded first, numpy's @ (before)"}


def child(workdir: Path, way: str) -> None:
    if way.startswith("gsl"):
        ctypes.CDLL(GSL, mode=ctypes.RTLD_GLOBAL)  # before numpy, as in qgis.bin's link order
    import rslab.core.rx as engine  # RX's statistics (gram) and scores (matmul)
    from rslab.core.anomaly import AnomalyOutputs, detect_anomalies
    from rslab.core.anomaly_params import AnomalyParams

    if way == "gsl_numpy":
        engine.gram = lambda x: x.T @ x
        engine.matmul = lambda a, b: a @ b

    output = workdir / f"blas_{way}_scores.tif"
    t0 = time.perf_counter()
    detect_anomalies(str(big_path(workdir)), AnomalyOutputs(scores=str(output)), AnomalyParams(method="rx"))
    print(json.dumps({"seconds": time.perf_counter() - t0, "scores": str(output)}))


def compare(paths) -> None:
    import numpy as np
    import rasterio

    arrays = []
    for path in paths:
        with rasterio.open(path) as ds:
            arrays.append(ds.read(1).astype(np.float64))
    first = arrays[0]
    scale = np.nanmax(np.abs(first))
    print(json.dumps({"max_rel": [float(np.nanmax(np.abs(a - first)) / scale) for a in arrays[1:]]}))


def through_qgis_process(workdir: Path) -> float:
    with tempfile.TemporaryDirectory() as profile:
        plugins = Path(profile) / "profiles" / "default" / "python" / "plugins"
        plugins.mkdir(parents=True)
        (plugins / "rslab").symlink_to(REPO)
        env = dict(os.environ, QGIS_CUSTOM_CONFIG_PATH=profile, QT_QPA_PLATFORM="offscreen")
        subprocess.run(["/usr/bin/qgis_process.bin", "plugins", "enable", "rslab"], env=env, check=True,
                       capture_output=True)
        output = workdir / "blas_qgis_process_scores.tif"
        t0 = time.perf_counter()
        done = subprocess.run(["/usr/bin/qgis_process.bin", "run", "rslab:detect_anomalies", "--",
                               f"INPUT={big_path(workdir)}", "METHOD=1",
                               f"OUTPUT_SCORES={output}"], env=env, capture_output=True, text=True)
        seconds = time.perf_counter() - t0
        if done.returncode != 0:
            raise SystemExit(f"qgis_process failed:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
        output.unlink()
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", default="/tmp/rslab-bench-anomaly")
    parser.add_argument("--child", choices=sorted(WAYS) + ["compare"])
    parser.add_argument("paths", nargs="*")
    args = parser.parse_args()
    workdir = Path(args.workdir)
    if args.child == "compare":
        compare(args.paths)
        return
    if args.child:
        child(workdir, args.child)
        return
    workdir.mkdir(parents=True, exist_ok=True)
    built = spawn_child(str(ANOMALY_BENCH), ["--child", "build", "--workdir", str(workdir)])
    print(f"cube: mosaic of {', '.join(built['sources'])}, 1000 x 1000 x 200 int16, in {workdir}", flush=True)
    seconds, scores = {}, []
    for way, label in WAYS.items():
        d = spawn_child(__file__, ["--child", way, "--workdir", str(workdir)])
        seconds[way] = d["seconds"]
        scores.append(d["scores"])
        print(f"  {label:<48} {d['seconds']:7.1f} s (the detect_anomalies call)", flush=True)
    print(f"  numpy's @ / scipy's BLAS with GSL loaded: {seconds['gsl_numpy'] / seconds['gsl']:.1f}x; "
          f"shipped engine with / without GSL: {seconds['gsl'] / seconds['python']:.2f}x")
    diff = spawn_child(__file__, ["--child", "compare", "--workdir", str(workdir), *scores])["max_rel"]
    print(f"  scores against plain Python's: largest difference / largest score {diff[0]:.1e} (GSL loaded), "
          f"{diff[1]:.1e} (numpy's @)")
    for path in scores:
        os.unlink(path)
    print(f"  {'qgis_process.bin run rslab:detect_anomalies':<48} {through_qgis_process(workdir):7.1f} s "
          f"(the whole command, QGIS's start included)")


if __name__ == "__main__":
    main()
