"""What a new anomaly mask at another false-alarm rate costs (core/anomaly_mask.py), against detecting again.

What it measures
    1. On a real ABU scene: `detect_anomalies` (BSDM + RX by default, with a
       mask at 1 % and the reference), the way to another mask before; then
       `threshold_scores` on its scores at 0.3 % with the reference, the way
       now. Seconds of each, and their ratio.
    2. On a size x size float32 score raster: `threshold_scores` at 0.3 %
       against one plain read pass over the same raster (`score_bounds`) as
       the baseline, each in a fresh child process with its peak memory.

Why
    An analyst tries several rates; each used to cost a whole detection (BSDM
    retrains). The cut reads the scores three to four times by windows (value
    range, histogram, the cut's bin, the mask) and writes the mask with
    overviews, so it should cost a few read passes and bounded memory.

How
    The large raster is bench/anomaly_peaks.py's: real RX scores of ABU
    beach-2 repeated across the canvas, cached in the work folder.

    .venv/bin/python bench/anomaly_mask.py [--scene abu-airport-4] [--method bsdm_rx] [--size 20000]
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Optional, Sequence

from anomaly_peaks import BASELINE_PASS, DEFAULT_WORKDIR, build_scores, read_pass  # bench/ is on sys.path
from measure import MB, print_passes, spawn_child, timed_child

SHARED_ABU = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "anomaly" / "abu"
RATE, NEW_RATE = 0.01, 0.003


def scene_part(scene: str, method: str) -> None:
    from rslab.core.anomaly import AnomalyOutputs, detect_anomalies
    from rslab.core.anomaly_mask import describe_mask_detection
    from rslab.core.anomaly_mask import MaskOutputs, threshold_scores
    from rslab.core.anomaly_params import AnomalyParams
    from rslab.core.import_cube import import_cube

    with tempfile.TemporaryDirectory(prefix="rslab-bench-mask-") as folder:
        cube, gt = f"{folder}/{scene}.tif", f"{folder}/{scene}_gt.tif"
        import_cube(str(SHARED_ABU / f"{scene}.mat"), cube, gt)
        t0 = time.perf_counter()
        run = detect_anomalies(cube, AnomalyOutputs(f"{folder}/s.tif", f"{folder}/m.tif"),
                               AnomalyParams(method=method, false_alarm_rate=RATE), gt)
        detect_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        cut = threshold_scores(f"{folder}/s.tif", MaskOutputs(f"{folder}/m2.tif"), NEW_RATE, gt)
        cut_s = time.perf_counter() - t0
    print(f"{scene}, {method}: {run.width} x {run.height} x {run.bands}")
    for what, seconds, found in ((f"detect_anomalies with a mask at {RATE:g}", detect_s, run.mask_detection),
                                 (f"threshold_scores at {NEW_RATE:g}", cut_s, cut.mask_detection)):
        print(f"  {what:<37} {seconds:7.2f} s; {describe_mask_detection(found)}")
    print(f"  a new mask costs {cut_s / detect_s:.4f} of detecting again ({detect_s / cut_s:.0f}x faster)")


def _mask(path: str, workdir: str) -> list:
    from rslab.core.anomaly_mask import MaskOutputs, threshold_scores

    mask = Path(workdir) / "mask.tif"
    result = threshold_scores(path, MaskOutputs(str(mask)), NEW_RATE)
    mask.unlink()
    return [result.threshold, result.mask_pixels]


def child(job: str, path: str, workdir: str) -> None:
    if job == "mask":
        timed_child(_mask, path, workdir)
    else:
        timed_child(read_pass, path)


def raster_part(workdir: Path, size: int) -> None:
    path = build_scores(workdir, size)
    figures = {job: spawn_child(__file__, ["--child", job, "--path", str(path), "--workdir", str(workdir)])
               for job in ("bounds", "mask")}
    megapixels = size * size / 1e6
    print(f"{size} x {size} float32 scores ({path.stat().st_size / MB:.0f} MB on disk, "
          f"{4 * megapixels:.0f} MB uncompressed)")
    print_passes(figures, (("bounds", BASELINE_PASS), ("mask", f"new mask at {NEW_RATE:g}")), megapixels)
    threshold, flagged = figures["mask"]["found"]
    print(f"  new mask / read pass: {figures['mask']['seconds'] / figures['bounds']['seconds']:.2f}x; "
          f"threshold {threshold:.6g}, {flagged:,} pixels flagged")


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scene", default="abu-airport-4", help="ABU scene in ../shared/data/anomaly/abu")
    parser.add_argument("--method", default="bsdm_rx", choices=("bsdm_rx", "rx", "lrx"))
    parser.add_argument("--size", type=int, default=20000, help="edge of the large score raster (0: skip it)")
    parser.add_argument("--workdir", default=str(DEFAULT_WORKDIR))
    parser.add_argument("--child", choices=("bounds", "mask"))
    parser.add_argument("--path")
    args = parser.parse_args(argv)
    if args.child:
        child(args.child, args.path, args.workdir)
        return
    scene_part(args.scene, args.method)
    if args.size:
        workdir = Path(args.workdir)
        workdir.mkdir(parents=True, exist_ok=True)
        raster_part(workdir, args.size)


if __name__ == "__main__":
    main()
