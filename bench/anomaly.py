"""Accuracy, speed and memory of hyperspectral anomaly detection (`detect_anomalies`): BSDM + RX, RX, LRX.

What it measures
    1. Accuracy and time on the ten ABU scenes in shared/data/anomaly/abu
       (airport 1-4, beach 1-3, urban 1-3; 100 x 100 pixels, beach-1
       150 x 150; 188-207 bands). Each .mat is imported with the Processing
       algorithm `rslab:import_cube` (cube and ground truth as GeoTIFFs,
       cached in the work folder; a child process with QGIS), and
       each method runs through `detect_anomalies` exactly as a user's job
       does, with the ground truth as its reference: BSDM + RX (500
       iterations, seed 0, the defaults), the same with a denoiser trained
       for one iteration (`bsdm_rx_1it`, an ablation: does training
       matter?), global RX, and local dual-window RX (inner 3, outer 11). It prints AUC(D,F), AUC(F,tau) and AUC_BS
       (the engine's own, from min-max normalised scores), the wall time of
       the `detect_anomalies` call, and for BSDM the training time from
       `result.timings` and the first and last training loss. Each AUC(D,F)
       is re-computed exactly (rank statistic, ties counted half) from the
       written score raster, and the largest difference from the engine's
       own (also exact) AUC is printed. Then the mean per method, the published
       BSDM figures (METHODS.md section 2) beside ours, and the issue's
       targets, each marked met or not.
    2. Determinism: BSDM + RX runs again on the first selected scene
       (`--repeats` times, 1 by default), each in a fresh process with the
       same seed, and each score raster is compared with the first run's
       exactly (bit for bit, NaN included). With several repeats the time
       target is also judged on the median of all runs on that scene, as
       this machine's timing varies by +-15 % between identical runs.
    3. An independent check of our global RX: on every selected scene, the
       `rx` score raster against `spectral.rx` (Spectral Python, installed by
       `make setup` from requirements-dev.txt) on the whole cube in memory;
       the largest relative difference per scene must stay under 1e-6 (our
       scores are stored as float32, whose rounding alone is ~6e-8).
    4. Global RX on a 1000 x 1000 x 200 int16 cube (400 MB uncompressed):
       seconds, and the child process's peak RSS next to the cube's size,
       to show that memory is bounded (the engine reads 256 x 256 windows).

Why
    The issue asks for BSDM + RX with mean AUC(D,F) >= 0.97 over the scenes
    and above global RX, identical scores for the same seed, BSDM training +
    inference under 60 s for a 100 x 100 x ~200 scene on this 2-core machine,
    and RX in bounded memory on large images.

How
    The large cube is a mosaic of the REAL ABU scenes that have at least 200
    bands (airport-1, -2, -3, urban-1, -2; their first 200 bands): the
    100 x 100 tile at tile-row i, tile-column j is scene (7 i + 3 j) mod 5,
    so neighbours always differ. It is written 256 rows at a time (never
    whole in memory) as a tiled (256), band-interleaved, deflate GeoTIFF and
    cached in the work folder. Every heavy step runs in a fresh child process
    (this script with `--child`; see bench/measure.py): Linux carries a
    launcher's peak RSS into its child's ru_maxrss, so this parent only
    parses options, waits and prints. The big-RX child reports its own VmHWM
    right after its imports (baseline) and at the end (peak). Times cover the
    `detect_anomalies` call only (with the reference, so they include the
    AUC evaluation, a few ms here), not the interpreter start or imports.
    Score rasters are kept in WORKDIR/scores.

    nice -n 19 .venv/bin/python bench/anomaly.py [--scenes abu-beach-2 ...]
        [--methods bsdm_rx bsdm_rx_1it rx lrx] [--iterations 500]
        [--precision auto|float32|bfloat16] [--repeats 1] [--skip-big] [--big-methods rx lrx bsdm_rx]
        [--workdir /tmp/rslab-bench-anomaly]

Measured on 2026-12-02 (2 CPU cores, AMD EPYC of CPU family 26 with
AVX512-BF16, no AMX, 24 GB RAM; GDAL 3.6.2, rasterio 1.3.5, numpy 1.24.2,
scipy 1.10.1, torch 2.13.0+cpu, spectral 0.25) with `.venv/bin/python
bench/anomaly.py --repeats 3 --skip-big` (all ten scenes, all methods, 500
iterations, nothing else running), 545 s in all:

    scene (H x W x B)          BSDM + RX (bfloat16)        BSDM 1 it.          RX (global)        LRX 3/11
                               AUC(D,F) AUC(F,tau)   s     AUC(D,F) AUC(F,tau) AUC(D,F) AUC(F,tau)  AUC(D,F) AUC(F,tau)
    abu-airport-1 100x100x205  0.8854   0.0260    33.7     0.8872   0.0227     0.8221   0.0423      0.9368   0.0063
    abu-airport-2 100x100x205  0.9466   0.0232    33.5     0.9570   0.0148     0.8404   0.0515      0.8377   0.0030
    abu-airport-3 100x100x205  0.9272   0.0115    35.9     0.9263   0.0150     0.9288   0.0144      0.9068   0.0023
    abu-airport-4 100x100x191  0.9784   0.0188    34.9     0.9870   0.0181     0.9526   0.0247      0.8673   0.0036
    abu-beach-1   150x150x188  0.9826   0.0062    70.3     0.9881   0.0086     0.9807   0.0065      0.9301   0.0025
    abu-beach-2   100x100x193  0.9099   0.0271    34.6     0.9216   0.0284     0.9106   0.0488      0.9427   0.0025
    abu-beach-3   100x100x188  0.9997   0.0142    36.9     0.9992   0.0211     0.9998   0.0259      0.9995   0.0027
    abu-urban-1   100x100x204  0.9920   0.0351    39.4     0.9894   0.0313     0.9907   0.0555      0.9730   0.0062
    abu-urban-2   100x100x207  0.9958   0.0122    39.3     0.9954   0.0137     0.9946   0.0135      0.7984   0.0001
    abu-urban-3   100x100x191  0.9601   0.0335    38.4     0.9665   0.0307     0.9513   0.0350      0.9819   0.0038
    mean                       0.9578   0.0208    39.7     0.9618   0.0204     0.9372   0.0318      0.9174   0.0033
    published BSDM + RX: ~0.98-0.99 on airport-4 and beach-1; 0.988 / 0.014 mean over HAD-100

    (BSDM seconds are the whole detect_anomalies call; training alone
    32.9-38.7 s on the 100 x 100 scenes, 68.5 s on beach-1 (20000 sampled
    pixels). RX and LRX took 0.1 s per scene; BSDM 1 it. 0.8-2.4 s.)

Targets: BSDM + RX mean AUC(D,F) 0.9578 >= 0.97: NOT met. Above global
RX's mean 0.9372: met (+2.06 points). Same seed, same scores: met
(abu-airport-1 three more times, each in a fresh process: bit-identical
scores). BSDM under 60 s on 100 x 100 x ~200: met (slowest 39.4 s, mean
36.3 s over the nine 100 x 100 scenes; airport-1 median 35.5 s over four
runs). RX against spectral.rx: largest relative difference 5.9e-08 over all
ten scenes (the float32 rounding of the stored scores; tolerance 1e-6:
met). The engine's AUC(D,F) (exact, by windows) equals scipy's rank
statistic to 2.2e-16; before it was exact it came from a 65536-bin
histogram and was 2.4e-3 off on abu-urban-2 LRX (max score ~13000x the
median: the bins crowded the background together).

The same bench on the 2-core Intel Xeon with AMX of 2026-11-25 (643 s):
BSDM + RX 49.1-52.1 s per 100 x 100 scene, 95.7 s on beach-1, mean AUC(D,F)
0.9576 (per scene within 0.0031 of the table).

The ablation: a denoiser trained for ONE iteration gives a higher mean
(0.9618) than the 500-iteration one. The training loss ends at the variance
of the pseudo noise (0.0100 vs 0.0103 on airport-1): with AdamW 1e-4 and
500 full-batch steps the denoiser learns the noise's mean and little more,
so what lifts BSDM above RX here is RX on the network's (near-initial)
nonlinear spectral transform. The 0.97 target is not reachable by training
the METHODS.md recipe better (see README, "Hyperspectral anomaly
detection").

Float32 training for comparison (`--methods bsdm_rx --precision float32
--skip-big`, on the Intel machine, 762 s): 60.6-62.4 s per 100 x 100 scene (the
60 s target NOT met in float32), 128.9 s on beach-1; AUC(D,F) within
0.0012 of the bfloat16 run on every scene (largest: airport-3 0.9259 vs
0.9271), mean 0.9575 vs 0.9576; the repeat run was bit-identical too.

Global RX on the 1000 x 1000 x 200 int16 mosaic (400 MB uncompressed,
253 MB on disk): 8.4 s, peak RSS 976 MB (91 MB after imports; 2.44x the
int16 cube, 61 % of the 1600 MB the cube takes as float64; Intel, 2026-11-25:
9.6 s, 995 MB). The peak is the
256 MB GDAL block cache plus a few float64 copies of one 256 x 256 x 200
window (105 MB each); none of it scales with the image, but one size alone
does not prove that.

On another machine (earlier on 2026-12-02: an AMD EPYC of an older family,
2 cores, AVX512-BF16, no AMX), `--methods bsdm_rx --skip-big`, 898 s: BSDM +
RX mean AUC(D,F) 0.9578 (per scene within 0.0031 of the Intel run: other
CPU kernels), 59.0-93.3 s per
100 x 100 scene (mean 73.0 s: the 60 s target NOT met on that CPU), 137.7 s
on beach-1; the repeat run on airport-1 was bit-identical (69.8 s). There,
`--scenes abu-airport-1 --methods bsdm_rx --skip-big --repeats 4` later
that day: median 72.4 s over five runs (70.1-77.1 s), all bit-identical.

All three methods on the mosaic (`--scenes abu-beach-2 --methods rx
--big-methods rx lrx bsdm_rx`, 2026-12-02): RX 11.6 s, peak 995 MB; LRX 3/11
25.2 s, 690 MB; BSDM + RX 267.4 s, 1405 MB (bsdm_train 132.2 s on the
20,000-pixel sample, bsdm_suppress 116.9 s, detect 18.1 s); on the CPU of
the table above, that evening: BSDM + RX 152.2 s, 1387 MB (bsdm_suppress
68.5 s), and 146.5 s, 1403 MB (bsdm_suppress 56.7 s) with the denoiser's
float32 tanh as 2 sigmoid(2x) - 1 (models/layers.Float32Tanh). The same run
before the suppressed cube became float32 and band-interleaved and the
denoiser ran 4096 pixels at a time: 618.3 s, 1992 MB (detect 291.2 s).
"""
from __future__ import annotations

import argparse
import atexit
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from statistics import median
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Sequence, Tuple

from measure import max_rss_bytes, own_hwm_bytes, spawn_child  # bench/ is on sys.path

# numpy, rasterio, torch and the engine are imported inside the child-side
# functions only: the parent must stay small (see "How" above).
if TYPE_CHECKING:
    import numpy as np

ROOT = Path(__file__).resolve().parent.parent
ABU = ROOT.parent / "shared" / "data" / "anomaly" / "abu"  # ../shared beside the checkout
DEFAULT_WORKDIR = Path(tempfile.gettempdir()) / "rslab-bench-anomaly"
MB = 1e6
METHODS = ("bsdm_rx", "bsdm_rx_1it", "rx", "lrx")
LABELS = {"bsdm_rx": "BSDM + RX", "bsdm_rx_1it": "BSDM 1 it.", "rx": "RX (global)", "lrx": "LRX 3/11"}
# The ablation: BSDM + RX with the denoiser trained for one iteration only (its initial weights, in effect).
UNTRAINED = "bsdm_rx_1it"
ITERATIONS = 500
SEED = 0
INNER, OUTER = 3, 11

# The issue's targets.
AUC_TARGET = 0.97
SECONDS_TARGET = 60.0  # BSDM training + inference, 100 x 100 x ~200, 2 cores
RX_REL_TOLERANCE = 1e-6
# Published BSDM + RX (METHODS.md section 2).
PUBLISHED_SCENES = {"abu-airport-4": "0.98-0.99", "abu-beach-1": "0.98-0.99"}
PUBLISHED_HAD100 = {"auc_df": 0.988, "auc_ftau": 0.014}

# The big cube: a mosaic of the real scenes with >= BIG_BANDS bands.
BIG_SIZE = 1000
BIG_BANDS = 200
BIG_BLOCK = 256
PATTERN_ROW, PATTERN_COL = 7, 3


# ---------------------------------------------------------------- shared helpers


def all_scenes() -> List[str]:
    return sorted(p.stem for p in ABU.glob("*.mat"))


def normalised_scene(scene: str) -> Tuple[np.ndarray, np.ndarray, int, int]:
    """An ABU scene as BSDM sees it, in memory: (H*W, B) pixels scaled to [0, 1] by one global
    min and max (float64), the (H*W,) reference as booleans, H, W. For the research benches."""
    import numpy as np

    from rslab.core.import_cube import read_mat_variables

    variables = read_mat_variables(str(ABU / f"{scene}.mat"))
    cube = np.asarray(variables["data"], dtype=np.float64)
    height, width, bands = cube.shape
    pixels = cube.reshape(-1, bands)
    truth = np.asarray(variables["map"]).reshape(-1) != 0
    return (pixels - pixels.min()) / (pixels.max() - pixels.min()), truth, height, width


def print_auc_rows(titles: Sequence[str], widths: Sequence[int], rows: Dict[tuple, List[float]],
                   scenes: Sequence[str]) -> None:
    """A table of AUC(D,F) per scene and the mean, one row per key (its parts under `titles`)."""
    def label(parts: Sequence[Any]) -> str:
        return " ".join(f"{str(part):{width}s}" for part, width in zip(parts, widths))

    print()
    print(label(titles) + " " + " ".join(f"{s.replace('abu-', ''):>9s}" for s in scenes) + f" {'mean':>7s}")
    for key, values in rows.items():
        print(label(key) + " " + " ".join(f"{v:9.4f}" for v in values) + f" {sum(values) / len(values):7.4f}")


def scene_paths(workdir: Path, scene: str) -> Tuple[Path, Path]:
    folder = workdir / "scenes"
    return folder / f"{scene}.tif", folder / f"{scene}_gt.tif"


def score_path(workdir: Path, scene: str, method: str, iterations: int, tag: str = "") -> Path:
    suffix = f"_it{iterations}" if method == "bsdm_rx" else ""
    return workdir / "scores" / f"{scene}_{method}{suffix}{tag}.tif"


def engine_run(method: str, iterations: int) -> Tuple[str, int]:
    """The engine's method and BSDM iterations behind one of this bench's method names."""
    return ("bsdm_rx", 1) if method == UNTRAINED else (method, iterations)


def big_path(workdir: Path) -> Path:
    return workdir / f"abu_mosaic_{BIG_SIZE}x{BIG_SIZE}x{BIG_BANDS}.tif"


# ---------------------------------------------------------------- child: importing the scenes


_PROCESSING: List[Any] = []  # (QGIS application, RS Lab provider, processing module), started once per child


def processing_import(source: str, cube: str, gt: str) -> None:
    """Import one .mat with the Processing algorithm `rslab:import_cube`, as the issue asks (a headless QGIS
    application with Processing and the RS Lab provider, in a throwaway QGIS profile, started on first use and
    closed, its profile removed, when the process exits)."""
    if not _PROCESSING:
        os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
        profile = tempfile.mkdtemp(prefix="rslab-bench-profile-")
        os.environ["QGIS_CUSTOM_CONFIG_PATH"] = profile
        sys.path.append("/usr/share/qgis/python/plugins")
        from qgis.core import QgsApplication

        app = QgsApplication([], False)
        app.initQgis()
        from processing.core.Processing import Processing

        Processing.initialize()
        from rslab.provider.provider import RSLabProvider

        provider = RSLabProvider()
        QgsApplication.processingRegistry().addProvider(provider)
        import processing

        _PROCESSING.extend([app, provider, processing])

        def close() -> None:
            QgsApplication.processingRegistry().removeProvider(provider)
            app.exitQgis()
            shutil.rmtree(profile, ignore_errors=True)

        atexit.register(close)
    _PROCESSING[2].run("rslab:import_cube", {"INPUT": source, "OUTPUT_CUBE": cube, "OUTPUT_GT": gt})


def import_scene(workdir: Path, scene: str) -> Dict[str, Any]:
    """The scene's cube and ground truth as GeoTIFFs (imported once with rslab:import_cube, then reused)."""
    import numpy as np

    from rslab.core.raster_io import gdal_env, open_raster, raster_info

    cube, gt = scene_paths(workdir, scene)
    cached = cube.exists() and gt.exists()
    if not cached:
        cube.parent.mkdir(parents=True, exist_ok=True)
        processing_import(str(ABU / f"{scene}.mat"), str(cube), str(gt))
    info = raster_info(str(cube))
    with gdal_env(), open_raster(str(gt)) as ds:
        anomalies = int((ds.read(1) != 0).sum())
    return {"cube": str(cube), "gt": str(gt), "width": info.width, "height": info.height, "bands": info.count,
            "dtype": info.dtype, "anomalies": anomalies, "cached": cached, "size": int(np.prod(info.shape))}


# ---------------------------------------------------------------- child: one scene


def read_scores(path: str) -> np.ndarray:
    from rslab.core.raster_io import gdal_env, open_raster

    with gdal_env(), open_raster(path) as ds:
        return ds.read(1)


def exact_auc(scores: np.ndarray, truth: np.ndarray) -> float:
    """ROC AUC by the rank statistic (ties count half) over the finite scores."""
    import numpy as np
    from scipy.stats import rankdata

    ok = np.isfinite(scores)
    s, y = scores[ok].astype(np.float64), truth[ok] != 0
    ranks = rankdata(s)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def independent_rx(cube: np.ndarray) -> Tuple[np.ndarray, str]:
    """RX scores (H, W) of a (B, H, W) cube by Spectral Python (requirements-dev.txt), which shares no code with ours."""
    import numpy as np
    import spectral

    x = np.moveaxis(cube, 0, -1).astype(np.float64)  # (H, W, B)
    return np.asarray(spectral.rx(x), np.float64), f"spectral {spectral.__version__} spectral.rx"


def rx_check(cube_path: str, scores_path: str) -> Dict[str, Any]:
    """Our written RX scores against an independent RX on the whole cube in memory."""
    import numpy as np

    from rslab.core.raster_io import gdal_env, open_raster, read_window
    from rasterio.windows import Window

    with gdal_env(), open_raster(cube_path) as ds:
        cube, valid = read_window(ds, Window(0, 0, ds.width, ds.height))
    if not valid.all():
        return {"skipped": "the cube has nodata pixels"}
    reference, how = independent_rx(cube)
    ours = read_scores(scores_path).astype(np.float64)
    rel = np.abs(ours - reference) / np.maximum(np.abs(reference), 1e-300)
    return {"how": how, "max_rel": float(rel.max()), "median_rel": float(np.median(rel)),
            "max_abs_over_max": float(np.abs(ours - reference).max() / np.abs(reference).max()),
            "ref_range": [float(reference.min()), float(reference.max())]}


def run_method(scene: Dict[str, Any], method: str, iterations: int, output: Path,
               precision: str = "auto") -> Dict[str, Any]:
    import numpy as np

    from rslab.core.anomaly import AnomalyOutputs, detect_anomalies
    from rslab.core.anomaly_params import AnomalyParams
    from rslab.core.raster_io import gdal_env, open_raster

    output.parent.mkdir(parents=True, exist_ok=True)
    method, iterations = engine_run(method, iterations)
    params = AnomalyParams(method=method, iterations=iterations, seed=SEED, inner_window=INNER, outer_window=OUTER,
                           precision=precision)
    t0 = time.perf_counter()
    result = detect_anomalies(scene["cube"], AnomalyOutputs(scores=str(output)), params, reference=scene["gt"])
    seconds = time.perf_counter() - t0
    scores = read_scores(str(output))
    with gdal_env(), open_raster(scene["gt"]) as ds:
        truth = ds.read(1)
    loss = result.training_loss
    return {"seconds": seconds, "timings": dict(result.timings), "metrics": result.metrics,
            "exact_auc_df": exact_auc(scores, truth), "device": result.device,
            "nan_scores": int((~np.isfinite(scores)).sum()), "score_range": list(result.score_range),
            "loss": [loss[0], loss[-1]] if loss else None, "notes": result.notes}


def load_engine() -> None:
    """Import the engine, then torch, before any timing, as the plugin has them loaded already.

    The engine first: it sets torch's OpenMP spin count (core/__init__.py), which only
    takes effect if set before torch loads.
    """
    import rslab.core  # noqa: F401
    import torch  # noqa: F401


def scene_child(workdir: Path, scene: str, methods: Sequence[str], iterations: int,
                precision: str) -> Dict[str, Any]:
    load_engine()

    info = import_scene(workdir, scene)
    out: Dict[str, Any] = {"scene": info, "methods": {}}
    for method in methods:
        out["methods"][method] = run_method(info, method, iterations,
                                            score_path(workdir, scene, method, iterations, f"_{precision}"),
                                            precision)
    if "rx" in methods:
        out["rx_check"] = rx_check(info["cube"], str(score_path(workdir, scene, "rx", iterations, f"_{precision}")))
    return out


def repeat_child(workdir: Path, scene: str, iterations: int, precision: str) -> Dict[str, Any]:
    """BSDM + RX again on `scene` (same seed, fresh process); compare with the first run's scores bit for bit."""
    import numpy as np

    load_engine()
    info = import_scene(workdir, scene)
    first = score_path(workdir, scene, "bsdm_rx", iterations, f"_{precision}")
    second = score_path(workdir, scene, "bsdm_rx", iterations, f"_{precision}_repeat")
    run = run_method(info, "bsdm_rx", iterations, second, precision)
    a, b = read_scores(str(first)), read_scores(str(second))
    same_nan = bool((np.isnan(a) == np.isnan(b)).all())
    ok = np.isfinite(a) & np.isfinite(b)
    return {"identical": bool(same_nan and np.array_equal(a[ok], b[ok])), "same_nan": same_nan,
            "max_abs_diff": float(np.abs(a[ok] - b[ok]).max()) if ok.any() else 0.0,
            "seconds": run["seconds"], "auc_df": run["metrics"]["auc_df"]}


# ---------------------------------------------------------------- child: the big cube


def big_sources(workdir: Path) -> List[str]:
    names = []
    for scene in all_scenes():
        info = import_scene(workdir, scene)
        if info["bands"] >= BIG_BANDS and (info["width"], info["height"]) == (100, 100):
            names.append(scene)
    if not names:
        raise SystemExit(f"no 100 x 100 ABU scene has {BIG_BANDS} bands")
    return names


def big_is_cached(path: Path) -> bool:
    from rslab.core.raster_io import raster_info

    if not path.exists():
        return False
    try:
        info = raster_info(str(path))
    except Exception:
        return False
    return (info.width, info.height, info.count, info.dtype) == (BIG_SIZE, BIG_SIZE, BIG_BANDS, "int16")


def build_big(workdir: Path) -> Dict[str, Any]:
    """Write the 1000 x 1000 x 200 int16 mosaic of real scenes strip by strip; seconds (0 if cached)."""
    import numpy as np
    import rasterio
    from rasterio.windows import Window

    from rslab.core.outputs import PendingOutputs
    from rslab.core.raster_io import gdal_env, open_raster

    path = big_path(workdir)
    names = big_sources(workdir)
    if big_is_cached(path):
        return {"seconds": 0.0, "sources": names, "disk": path.stat().st_size}
    t0 = time.perf_counter()
    tiles = []
    for name in names:
        with gdal_env(), open_raster(str(scene_paths(workdir, name)[0])) as ds:
            data = ds.read(list(range(1, BIG_BANDS + 1)))
        if data.min() < -32768 or data.max() > 32767:
            raise SystemExit(f"{name} has values outside int16")
        tiles.append(data.astype(np.int16))
    edge = tiles[0].shape[1]
    profile = {"driver": "GTiff", "width": BIG_SIZE, "height": BIG_SIZE, "count": BIG_BANDS, "dtype": "int16",
               "tiled": True, "blockxsize": BIG_BLOCK, "blockysize": BIG_BLOCK, "compress": "deflate",
               "predictor": 2, "interleave": "band", "BIGTIFF": "IF_SAFER"}
    with gdal_env(), PendingOutputs() as pending, rasterio.open(pending.temp(str(path)), "w", **profile) as dst:
        for r0 in range(0, BIG_SIZE, BIG_BLOCK):
            r1 = min(BIG_SIZE, r0 + BIG_BLOCK)
            strip = np.empty((BIG_BANDS, r1 - r0, BIG_SIZE), np.int16)
            for row in range(r0, r1):
                i = row // edge
                for j in range(BIG_SIZE // edge):
                    tile = tiles[(PATTERN_ROW * i + PATTERN_COL * j) % len(tiles)]
                    strip[:, row - r0, j * edge:(j + 1) * edge] = tile[:, row % edge, :]
            dst.write(strip, window=Window(0, r0, BIG_SIZE, r1 - r0))
    return {"seconds": time.perf_counter() - t0, "sources": names, "disk": path.stat().st_size}


def big_child(workdir: Path, method: str) -> Dict[str, Any]:
    """One method (the defaults) on the cached big cube, with its time and this process's peak memory."""
    if method == "bsdm_rx":
        load_engine()
    else:  # RX and LRX need numpy only (torch would add ~140 MB to the baseline)
        import rslab.core.anomaly  # noqa: F401
    baseline, baseline_maxrss = own_hwm_bytes(), max_rss_bytes()
    from rslab.core.anomaly import AnomalyOutputs, detect_anomalies
    from rslab.core.anomaly_params import AnomalyParams

    output = workdir / f"big_{method}_scores.tif"
    t0 = time.perf_counter()
    result = detect_anomalies(str(big_path(workdir)), AnomalyOutputs(scores=str(output)), AnomalyParams(method=method))
    seconds = time.perf_counter() - t0
    out_disk = output.stat().st_size
    output.unlink()
    return {"seconds": seconds, "baseline": baseline, "baseline_maxrss": baseline_maxrss, "peak": own_hwm_bytes(),
            "maxrss": max_rss_bytes(), "timings": dict(result.timings), "score_range": list(result.score_range),
            "out_disk": out_disk}


def child_main(args: argparse.Namespace) -> None:
    workdir = Path(args.workdir)
    if args.child == "import":
        result: Dict[str, Any] = {s: import_scene(workdir, s) for s in args.scenes}
    elif args.child == "scene":
        result = scene_child(workdir, args.scenes[0], args.methods, args.iterations, args.precision)
    elif args.child == "repeat":
        result = repeat_child(workdir, args.scenes[0], args.iterations, args.precision)
    elif args.child == "build":
        result = build_big(workdir)
    else:
        result = big_child(workdir, args.methods[0])
    print(json.dumps(result))


# ---------------------------------------------------------------- parent side


def fmt(value: Optional[float], digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def verdict(ok: bool) -> str:
    return "met" if ok else "NOT met"


def header(extra: str) -> str:
    return (f"  {'method':<12} {'AUC(D,F)':>9} {'AUC(F,tau)':>10} {'AUC_BS':>8} {'seconds':>8} {'train s':>8} "
            f"{extra:>20}  {'published AUC(D,F)':<18}").rstrip()


def print_scene(name: str, data: Dict[str, Any]) -> None:
    s = data["scene"]
    print(f"\n{name}: {s['width']} x {s['height']} x {s['bands']} {s['dtype']}, "
          f"{s['anomalies']} anomaly pixels of {s['width'] * s['height']}")
    print(header("loss first -> last"))
    for method, r in data["methods"].items():
        m = r["metrics"]
        train = r["timings"].get("bsdm_train")
        loss = f"{r['loss'][0]:.4f} -> {r['loss'][1]:.4f}" if r["loss"] else ""
        published = PUBLISHED_SCENES.get(name, "") if method == "bsdm_rx" else ""
        print(f"  {LABELS[method]:<12} {fmt(m['auc_df']):>9} {fmt(m['auc_ftau']):>10} {fmt(m['auc_bs']):>8} "
              f"{r['seconds']:>8.1f} {fmt(train, 1):>8} {loss:>20}  {published}".rstrip())
        if r["nan_scores"]:
            print(f"    WARNING: {r['nan_scores']} pixels have no score (NaN)")
        for note in r["notes"]:
            print(f"    note: {note}")


def mean(values: Sequence[float]) -> Optional[float]:
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def method_means(results: Dict[str, Dict[str, Any]], method: str) -> Dict[str, Any]:
    rows = [r["methods"][method] for r in results.values() if method in r["methods"]]
    means: Dict[str, Any] = {k: mean([r["metrics"][k] for r in rows]) for k in ("auc_df", "auc_ftau", "auc_bs")}
    means["seconds"] = mean([r["seconds"] for r in rows])
    means["train"] = mean([r["timings"].get("bsdm_train") for r in rows])
    means["scenes"] = [n for n, r in results.items() if method in r["methods"]]
    return means


def print_means(title: str, results: Dict[str, Dict[str, Any]], methods: Sequence[str]) -> Dict[str, Any]:
    print(f"\n{title}")
    print(header("mean over"))
    means = {}
    for method in methods:
        m = means[method] = method_means(results, method)
        if not m["scenes"]:
            continue
        published = f"{PUBLISHED_HAD100['auc_df']} (HAD-100)" if method == "bsdm_rx" else ""
        count = f"{len(m['scenes'])} scene(s)"
        print(f"  {LABELS[method]:<12} {fmt(m['auc_df']):>9} {fmt(m['auc_ftau']):>10} {fmt(m['auc_bs']):>8} "
              f"{m['seconds']:>8.1f} {fmt(m['train'], 1):>8} {count:>20}  {published}".rstrip())
    return means


def print_summary(results: Dict[str, Dict[str, Any]], methods: Sequence[str], iterations: int) -> Dict[str, Any]:
    means = print_means(f"mean per method over the scenes it ran on ({len(results)} scene(s): {', '.join(results)})",
                        results, methods)
    if "bsdm_rx" in methods:
        subset = {n: r for n, r in results.items() if "bsdm_rx" in r["methods"]}
        if len(subset) < len(results):
            means = print_means(f"mean over the scenes BSDM + RX ran on ({', '.join(subset)}), same scenes "
                                f"for every method", subset, methods)
        print(f"  {'published':<12} {PUBLISHED_HAD100['auc_df']:>9.3f} {PUBLISHED_HAD100['auc_ftau']:>10.3f} "
              f"{PUBLISHED_HAD100['auc_df'] - PUBLISHED_HAD100['auc_ftau']:>8.3f}   BSDM + RX, mean over the HAD-100 "
              f"benchmark (not ABU);")
        print(f"  {'':<12} about 0.98-0.99 AUC(D,F) on ABU airport-4, beach-1 (and beach-4, HYDICE: not here)")
        if iterations != ITERATIONS:
            print(f"  (BSDM trained {iterations} iterations here, not the default {ITERATIONS})")
    devices = sorted({f"{LABELS[m]}: {r['methods'][m]['device']}" for r in results.values() for m in r["methods"]})
    print(f"  devices: {'; '.join(devices)}; {os.cpu_count()} CPU cores; seconds = wall time of detect_anomalies")
    worst = max((abs(r["methods"][m]["metrics"]["auc_df"] - r["methods"][m]["exact_auc_df"]), n, m)
                for n, r in results.items() for m in r["methods"])
    print(f"  AUC(D,F) check: engine (exact ROC by windows) vs scipy's rank statistic on the written scores, "
          f"largest difference {worst[0]:.2e} ({worst[1]}, {LABELS[worst[2]]})")
    return means


def print_rx_check(results: Dict[str, Dict[str, Any]]) -> Optional[float]:
    checks = {n: r["rx_check"] for n, r in results.items() if "rx_check" in r}
    if not checks:
        return None
    how = {c["how"] for c in checks.values() if "how" in c}
    print(f"\nindependent RX check: our written `rx` scores (float32) vs {', '.join(sorted(how))} "
          f"on the whole cube in memory (float64)")
    print(f"  {'scene':<16} {'max rel diff':>13} {'median rel':>11} {'max|diff|/max':>14} {'RX score range':>22}")
    worst = 0.0
    for name, c in checks.items():
        if "skipped" in c:
            print(f"  {name:<16} skipped: {c['skipped']}")
            continue
        worst = max(worst, c["max_rel"])
        lo, hi = c["ref_range"]
        print(f"  {name:<16} {c['max_rel']:>13.2e} {c['median_rel']:>11.2e} {c['max_abs_over_max']:>14.2e} "
              f"{lo:>10.1f} .. {hi:<9.1f}")
    print(f"  largest relative difference {worst:.2e} (tolerance {RX_REL_TOLERANCE:g}: "
          f"{verdict(worst <= RX_REL_TOLERANCE)})")
    return worst


def print_targets(results: Dict[str, Dict[str, Any]], means: Dict[str, Any], repeats: Sequence[Dict[str, Any]],
                  repeat_scene: str, iterations: int) -> None:
    print("\nissue targets:")
    if "bsdm_rx" not in means or not means["bsdm_rx"]["scenes"]:
        print("  (BSDM + RX not run: no target to check)")
        return
    bsdm = means["bsdm_rx"]["auc_df"]
    scenes = means["bsdm_rx"]["scenes"]
    over = f"over {len(scenes)} scene(s)" + ("" if len(scenes) == len(results) else f" ({', '.join(scenes)})")
    print(f"  BSDM + RX mean AUC(D,F) >= {AUC_TARGET} {over}: {bsdm:.4f} ({verdict(bsdm >= AUC_TARGET)})")
    if "rx" in means:
        rx = means["rx"]["auc_df"]
        print(f"  BSDM + RX mean AUC(D,F) above global RX's, same scenes: {bsdm:.4f} vs {rx:.4f} "
              f"({verdict(bsdm > rx)}; {100 * (bsdm - rx):+.2f} points)")
    if UNTRAINED in means and means[UNTRAINED]["scenes"]:
        untrained = means[UNTRAINED]["auc_df"]
        print(f"  (ablation, not a target) BSDM + RX with a 1-iteration denoiser: mean AUC(D,F) {untrained:.4f}; "
              f"training {iterations} iterations changes it by {100 * (bsdm - untrained):+.2f} points")
    if repeats:
        same = all(r["identical"] for r in repeats)
        detail = "identical" if same else f"DIFFER (max |diff| {max(r['max_abs_diff'] for r in repeats):.3g})"
        print(f"  same scores for the same seed: {repeat_scene}, {len(repeats) + 1} runs in separate processes, "
              f"score rasters {detail} ({verdict(same)})")
    small = {n: r["methods"]["bsdm_rx"]["seconds"] for n, r in results.items()
             if "bsdm_rx" in r["methods"] and (r["scene"]["width"], r["scene"]["height"]) == (100, 100)}
    if small:
        worst = max(small, key=small.get)
        note = "" if iterations == ITERATIONS else (f"; measured with {iterations} iterations, "
                                                     f"the target is for {ITERATIONS}")
        print(f"  BSDM training + inference (whole detect_anomalies call) on 100 x 100 x ~200 under "
              f"{SECONDS_TARGET:.0f} s on {os.cpu_count()} cores: slowest {small[worst]:.1f} s ({worst}), mean "
              f"{mean(list(small.values())):.1f} s over {len(small)} scene(s) "
              f"({verdict(small[worst] < SECONDS_TARGET)}{note})")
        if repeats and repeat_scene in small:
            runs = [small[repeat_scene]] + [r["seconds"] for r in repeats]
            print(f"  the same on {repeat_scene} over {len(runs)} runs (this machine's timing noise): median "
                  f"{median(runs):.1f} s, {min(runs):.1f}-{max(runs):.1f} s ({verdict(median(runs) < SECONDS_TARGET)} "
                  f"on the median{note})")


def run_big(workdir: Path, methods: Sequence[str]) -> None:
    print(f"\n{', '.join(LABELS[m] for m in methods)} on a {BIG_SIZE} x {BIG_SIZE} x {BIG_BANDS} int16 cube ...",
          flush=True)
    built = spawn_child(__file__, ["--child", "build", "--workdir", str(workdir)])
    state = f"built in {built['seconds']:.1f} s" if built["seconds"] else "cached"
    print(f"  mosaic of {', '.join(built['sources'])} (first {BIG_BANDS} bands; {built['disk'] / MB:.0f} MB on disk): "
          f"{state}", flush=True)
    size = BIG_SIZE * BIG_SIZE * BIG_BANDS * 2
    print(f"  {'method':<12} {'s':>8} {'MP/s':>6} {'base MB':>8} {'peak MB':>8} {'job MB':>7} {'cube MB':>8} "
          f"{'peak/cube':>9} {'as float64 MB':>14}")
    for method in methods:
        d = spawn_child(__file__, ["--child", "big", "--workdir", str(workdir), "--methods", method])
        if d["maxrss"] > 1.05 * d["peak"]:
            print(f"  warning: ru_maxrss {d['maxrss'] / MB:.0f} MB exceeds the child's own peak "
                  f"{d['peak'] / MB:.0f} MB (inherited from the launcher)")
        print(f"  {LABELS[method]:<12} {d['seconds']:>8.1f} {BIG_SIZE * BIG_SIZE / 1e6 / d['seconds']:>6.3f} "
              f"{d['baseline'] / MB:>8.0f} {d['peak'] / MB:>8.0f} {(d['peak'] - d['baseline']) / MB:>7.0f} "
              f"{size / MB:>8.0f} {d['peak'] / size:>8.2f}x {4 * size / MB:>14.0f}")
        timings = ", ".join(f"{k} {v:.1f} s" for k, v in d["timings"].items())
        print(f"    timings: {timings}; score range {d['score_range'][0]:.1f} .. {d['score_range'][1]:.1f}; "
              f"scores {d['out_disk'] / MB:.1f} MB on disk", flush=True)
    print("  MB = 10^6 bytes; base = VmHWM after imports, peak = VmHWM at the end of the child; job = peak - base; "
          "cube MB = uncompressed int16; 'as float64' = the cube read whole as float64 (what an in-memory RX holds)")


def parent_main(args: argparse.Namespace) -> None:
    started = time.perf_counter()
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    print(f"work folder {workdir}; {os.cpu_count()} CPU cores; scenes {', '.join(args.scenes)}; methods "
          f"{', '.join(args.methods)}; BSDM {args.iterations} iterations, seed {SEED}, precision {args.precision}; "
          f"LRX {INNER}/{OUTER}", flush=True)
    imported = spawn_child(__file__, ["--child", "import", "--workdir", str(workdir), "--scenes", *args.scenes])
    fresh = [n for n, s in imported.items() if not s["cached"]]
    print(f"imported {', '.join(fresh) if fresh else 'nothing (all cached)'}", flush=True)
    results: Dict[str, Dict[str, Any]] = {}
    for scene in args.scenes:
        methods = [m for m in args.methods if not m.startswith("bsdm_rx") or scene in args.bsdm_scenes]
        if not methods:
            continue
        print(f"running {scene} ({', '.join(LABELS[m] for m in methods)}) ...", flush=True)
        results[scene] = spawn_child(__file__, ["--child", "scene", "--workdir", str(workdir), "--scenes", scene,
                                                "--iterations", str(args.iterations), "--methods", *methods,
                                                "--precision", args.precision])
        print_scene(scene, results[scene])
    means = print_summary(results, args.methods, args.iterations)
    repeats: List[Dict[str, Any]] = []
    repeat_scene = ""
    bsdm_ran = [n for n, r in results.items() if "bsdm_rx" in r["methods"]]
    if bsdm_ran:
        repeat_scene = bsdm_ran[0]
        print(f"\nBSDM + RX again on {repeat_scene} ({args.repeats} run(s); same seed, a fresh process each) ...",
              flush=True)
        for run in range(args.repeats):
            repeat = spawn_child(__file__, ["--child", "repeat", "--workdir", str(workdir), "--scenes", repeat_scene,
                                            "--iterations", str(args.iterations), "--precision", args.precision])
            print(f"  run {run + 2}: {repeat['seconds']:.1f} s, AUC(D,F) {repeat['auc_df']:.4f}; score raster "
                  f"{'identical to the first' if repeat['identical'] else 'DIFFERS from the first'}", flush=True)
            repeats.append(repeat)
    print_rx_check(results)
    print_targets(results, means, repeats, repeat_scene, args.iterations)
    if not args.skip_big:
        run_big(workdir, args.big_methods)
    print(f"\ntotal {time.perf_counter() - started:.0f} s")


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    scenes = all_scenes()
    parser.add_argument("--scenes", nargs="+", default=scenes, metavar="NAME",
                        help=f"ABU scenes (default all: {', '.join(scenes)})")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS, help="methods to run")
    parser.add_argument("--bsdm-scenes", nargs="+", metavar="NAME",
                        help="run BSDM + RX only on these of the scenes (default: all of --scenes); "
                             "RX and LRX still run on every scene")
    parser.add_argument("--iterations", type=int, default=ITERATIONS, help="BSDM training iterations")
    parser.add_argument("--precision", default="auto", choices=("auto", "float32", "bfloat16"),
                        help="BSDM training precision (auto: bfloat16 where the hardware has it)")
    parser.add_argument("--repeats", type=int, default=1,
                        help="BSDM + RX runs again on the first scene, each in a fresh process: the scores must be "
                             "identical to the first run's; the target's time is also given as the median of all "
                             "runs (default 1)")
    parser.add_argument("--skip-big", action="store_true", help="skip the 1000 x 1000 x 200 run(s)")
    parser.add_argument("--big-methods", nargs="+", default=["rx"], choices=("rx", "lrx", "bsdm_rx"),
                        help="methods timed on the 1000 x 1000 x 200 cube (default: rx)")
    parser.add_argument("--workdir", default=str(DEFAULT_WORKDIR), help="folder for imported scenes, scores, big cube")
    parser.add_argument("--child", choices=("import", "scene", "repeat", "build", "big"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.scenes = [s[:-4] if s.endswith(".mat") else s for s in args.scenes]
    if args.bsdm_scenes is None:
        args.bsdm_scenes = list(args.scenes)
    args.bsdm_scenes = [s[:-4] if s.endswith(".mat") else s for s in args.bsdm_scenes]
    unknown = sorted(set(args.scenes) - set(scenes))
    if set(args.bsdm_scenes) - set(args.scenes):
        parser.error("--bsdm-scenes must be among --scenes")
    if unknown:
        parser.error(f"unknown scene(s) {', '.join(unknown)}; known: {', '.join(scenes)}")
    args.methods = [m for m in METHODS if m in args.methods]  # fixed order, no repeats
    if args.iterations < 1:
        parser.error("--iterations must be at least 1")
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    return args


def main(argv: Optional[Sequence[str]] = None) -> None:
    args = parse_args(argv)
    if args.child:
        child_main(args)
    else:
        parent_main(args)


if __name__ == "__main__":
    main()
