"""The engine's torch jobs on a GPU, beside the same jobs on the CPU in the same run.

What it measures
    1. BSDM + RX (`detect_anomalies` with its defaults: 500 iterations,
       seed 0, 10 suppression rounds) on ABU scenes, each imported from its
       .mat with core's `import_cube`: AUC(D,F), AUC(F,tau), the training
       precision and the seconds of the whole call, on the GPU and on the
       CPU. Then the GPU run again with the same seed in the same process,
       its score raster compared with the first bit for bit (the issue's
       "same scores for the same seed"), and the largest difference between
       the GPU's and the CPU's normalised scores.
    2. Change detection with the default AR-CDNet weights (`detect_changes`,
       tile 512, overlap 128) on the held-out LEVIR-CD pairs of
       scripts/train_default_change_detector.py: F1 and uncertainty AUC from
       the engine's own evaluation against the label, and the largest
       difference between the GPU's and the CPU's probability rasters. Then
       throughput (megapixels per second, the `detect` timing) on a mosaic of
       the same tiles, `--mosaic` tiles a side; on the GPU once with one tile
       per forward pass (the baseline) and once with the default (several).
    3. Change training (`train_change_detector`, its defaults: batch 8,
       256-pixel crops, AdamW) on LEVIR-CD pairs for a few iterations on each
       device: seconds per iteration. The GPU's checkpoint is then read back
       and run on the CPU: a checkpoint trained where there is a GPU must
       load where there is none.

Why
    The engine runs on CUDA whenever torch sees a GPU (core/device.py), but
    the machine the plugin is developed and tested on has none, so the GPU
    paths are checked here, on a machine that has one. Nothing here needs
    QGIS: it runs under any Python with torch, numpy, scipy, rasterio and
    GDAL's Python bindings (osgeo), which the engine calls for file lists,
    overviews and VRTs.

How
    python bench/gpu.py [--data ../shared/data] [--scenes abu-airport-1 abu-beach-2]
        [--train-iterations 40] [--cpu-train-iterations 4] [--mosaic 8] [--sections anomaly change]
        [--workdir DIR]

    The ABU scenes are read from DATA/anomaly/abu, abu-beach-2 also from
    resources/samples; LEVIR-CD from DATA/change/levir_cd_256. Each section
    prints a table; a section whose data is missing says so and is skipped.
    Without a GPU only the CPU columns are filled.
"""
from __future__ import annotations

import argparse
import importlib.util
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from anomaly import read_scores  # bench/ is on sys.path (the script's folder)

ROOT = Path(__file__).resolve().parent.parent
HELD_OUT = ["test_102_0512_0000", "test_55_0256_0000", "test_7_0256_0512", "val_27_0000_0256"]
TRAIN = ["test_121_0768_0256", "test_2_0000_0000", "test_2_0000_0512", "train_36_0512_0512", "train_386_0512_0768"]
VALIDATION = ["test_77_0512_0256"]


def import_rslab() -> None:
    """Make `import rslab` resolve to this checkout, also where it is not installed as a package (a GPU machine)."""
    if importlib.util.find_spec("rslab") is None:
        link_dir = Path(tempfile.mkdtemp(prefix="rslab-link-"))
        (link_dir / "rslab").symlink_to(ROOT)
        sys.path.insert(0, str(link_dir))


def devices() -> List[str]:
    import torch

    return ["cuda", "cpu"] if torch.cuda.is_available() else ["cpu"]


def scene_file(data: Path, scene: str) -> Optional[Path]:
    for candidate in (data / "anomaly" / "abu" / f"{scene}.mat", ROOT / "resources" / "samples" / f"{scene}.mat"):
        if candidate.exists():
            return candidate
    return None


def anomaly_section(data: Path, scenes: Sequence[str], work: Path) -> None:
    from rslab.core.anomaly import AnomalyOutputs, detect_anomalies
    from rslab.core.anomaly_metrics import normalised_scores
    from rslab.core.anomaly_params import AnomalyParams
    from rslab.core.import_cube import import_cube

    print("\n1. BSDM + RX (500 iterations, seed 0)")
    print("| scene | device | precision | AUC(D,F) | AUC(F,tau) | s | training / suppression / RX s | same seed again |")
    print("|---|---|---|---|---|---|---|---|")
    for scene in scenes:
        mat = scene_file(data, scene)
        if mat is None:
            print(f"| {scene} | (no {scene}.mat) | | | | | | |")
            continue
        cube, gt = str(work / f"{scene}.tif"), str(work / f"{scene}_gt.tif")
        import_cube(str(mat), cube, gt)
        normalised = {}
        for device in devices():
            def run(name: str):
                out = str(work / f"{scene}_{device}_{name}.tif")
                start = time.perf_counter()
                result = detect_anomalies(cube, AnomalyOutputs(scores=out), AnomalyParams(device=device), reference=gt)
                return result, time.perf_counter() - start, read_scores(out)

            result, seconds, scores = run("first")
            same = ""
            if device == "cuda":  # the same seed again: the same scores?
                again = run("again")[2]
                same = ("bit for bit" if np.array_equal(scores, again, equal_nan=True)
                        else f"differs (largest {np.nanmax(np.abs(scores - again)):.3g})")
            precision = next((n.split(" in ")[1].split(" on ")[0] for n in result.notes if n.startswith("BSDM trained")),
                             "?")
            normalised[device] = normalised_scores(scores, np.nanmin(scores), np.nanmax(scores))
            stages = " / ".join(f"{result.timings.get(k, 0.0):.1f}" for k in ("bsdm_train", "bsdm_suppress", "detect"))
            print(f"| {scene} | {result.device} | {precision} | {result.metrics['auc_df']:.4f} | "
                  f"{result.metrics['auc_ftau']:.4f} | {seconds:.1f} | {stages} | {same} |")
        if len(normalised) == 2:
            gap = np.nanmax(np.abs(normalised["cuda"] - normalised["cpu"]))
            print(f"| {scene} | GPU vs CPU | | | | | | normalised scores differ by at most {gap:.3g} |")


def change_section(data: Path, mosaic: int, train_iterations: int, cpu_train_iterations: int, work: Path) -> None:
    from rslab.core.change_data import pairs_from_folder
    from rslab.core.change_detection import ChangeOutputs, ChangeParams, detect_changes
    from rslab.core.change_training import TrainChangeParams, train_change_detector

    levir = data / "change" / "levir_cd_256"
    if not levir.is_dir():
        print(f"\n2-3. change detection and training: skipped, no {levir}")
        return
    held_out = pairs_from_folder(str(levir), HELD_OUT)
    print("\n2. Change detection, default AR-CDNet, held-out LEVIR-CD pairs")
    print("| pair | device | F1 | uncertainty AUC | s | largest probability difference, GPU vs CPU |")
    print("|---|---|---|---|---|---|")
    for pair in held_out:
        probabilities: Dict[str, np.ndarray] = {}
        for device in devices():
            folder = work / f"change_{device}"
            folder.mkdir(exist_ok=True)
            outputs = ChangeOutputs(change=str(folder / f"{pair.name}_change.tif"),
                                    probability=str(folder / f"{pair.name}_prob.tif"),
                                    uncertainty=str(folder / f"{pair.name}_unc.tif"))
            start = time.perf_counter()
            result = detect_changes(pair.before, pair.after, outputs, ChangeParams(device=device), reference=pair.label)
            seconds = time.perf_counter() - start
            probabilities[device] = read_scores(outputs.probability)
            gap = (f"{np.abs(probabilities['cuda'] - probabilities['cpu']).max():.3g}"
                   if len(probabilities) == 2 else "")
            print(f"| {pair.name} | {result.device} | {result.metrics['f1']:.4f} | "
                  f"{result.metrics['uncertainty_auc']:.4f} | {seconds:.2f} | {gap} |")

    before, after = build_mosaic(held_out, mosaic, work)
    side = mosaic * 256
    print(f"\n   Throughput on a {side} x {side} mosaic of those tiles (change, probability, uncertainty written)")
    print("| device | tiles per pass | detect s | megapixels/s |")
    print("|---|---|---|---|")
    for device in devices():
        for per_pass in ((1, 0) if device == "cuda" else (0,)):  # on the GPU: one at a time, then the default
            outputs = ChangeOutputs(change=str(work / f"mosaic_{device}_{per_pass}_change.tif"),
                                    probability=str(work / f"mosaic_{device}_{per_pass}_prob.tif"),
                                    uncertainty=str(work / f"mosaic_{device}_{per_pass}_unc.tif"))
            result = detect_changes(before, after, outputs, ChangeParams(device=device, tiles_per_pass=per_pass))
            detect = result.timings["detect"]
            print(f"| {result.device} | {per_pass or 'default'} | {detect:.2f} | {side * side / 1e6 / detect:.2f} |")

    train, val = pairs_from_folder(str(levir), TRAIN), pairs_from_folder(str(levir), VALIDATION)
    print("\n3. Change training (batch 8, 256-pixel crops, AdamW), LEVIR-CD")
    print("| device | iterations | s | s per iteration | validation F1 | read back and run on the CPU: F1 |")
    print("|---|---|---|---|---|---|")
    for device in devices():
        iterations = train_iterations if device == "cuda" else cpu_train_iterations
        checkpoint = str(work / f"trained_{device}.pt")
        start = time.perf_counter()
        result = train_change_detector(train, val, checkpoint,
                                       TrainChangeParams(iterations=iterations, warmup=min(200, iterations // 4),
                                                         eval_every=iterations, device=device))
        seconds = time.perf_counter() - start
        outputs = ChangeOutputs(change=str(work / f"readback_{device}.tif"))
        readback = detect_changes(held_out[0].before, held_out[0].after, outputs,
                                  ChangeParams(model=checkpoint, device="cpu"), reference=held_out[0].label)
        print(f"| {result.device} | {iterations} | {seconds:.1f} | {seconds / iterations:.3f} | "
              f"{result.best_f1:.4f} | {readback.metrics['f1']:.4f} ({readback.device}) |")


def build_mosaic(pairs: Sequence[Any], tiles: int, work: Path) -> List[str]:
    """Before and after GeoTIFFs of `tiles` x `tiles` 256-pixel tiles, cycling through the pairs (never whole in
    memory beyond one row of tiles)."""
    import rasterio

    from rslab.core.raster_io import gdal_env

    paths = []
    with gdal_env():
        for role in ("before", "after"):
            sources = []
            for pair in pairs:
                with rasterio.open(getattr(pair, role)) as ds:
                    sources.append(ds.read())
            path = str(work / f"mosaic_{role}.tif")
            side = 256 * tiles
            profile = {"driver": "GTiff", "width": side, "height": side, "count": sources[0].shape[0],
                       "dtype": sources[0].dtype, "tiled": True, "blockxsize": 256, "blockysize": 256}
            with rasterio.open(path, "w", **profile) as out:
                for row in range(tiles):
                    strip = np.concatenate([sources[(3 * row + col) % len(sources)] for col in range(tiles)], axis=2)
                    out.write(strip, window=((row * 256, row * 256 + 256), (0, side)))
            paths.append(path)
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data"))
    parser.add_argument("--scenes", nargs="+", default=["abu-airport-1", "abu-beach-2"])
    parser.add_argument("--train-iterations", type=int, default=40)
    parser.add_argument("--cpu-train-iterations", type=int, default=4)
    parser.add_argument("--mosaic", type=int, default=8, help="tiles a side of the throughput mosaic")
    parser.add_argument("--sections", nargs="+", choices=("anomaly", "change"), default=["anomaly", "change"])
    parser.add_argument("--workdir", default=None)
    args = parser.parse_args()
    import_rslab()
    import torch

    from rslab.core.device import describe_device, select_device

    print(f"torch {torch.__version__}, numpy {np.__version__}; "
          f"GPU: {describe_device(select_device('cuda')) if torch.cuda.is_available() else 'none'}; "
          f"CPU: {describe_device('cpu')}")
    with tempfile.TemporaryDirectory(prefix="rslab-gpu-bench-", dir=args.workdir) as work:
        if "anomaly" in args.sections:
            anomaly_section(Path(args.data), args.scenes, Path(work))
        if "change" in args.sections:
            change_section(Path(args.data), args.mosaic, args.train_iterations, args.cpu_train_iterations, Path(work))


if __name__ == "__main__":
    main()
