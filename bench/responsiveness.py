"""How long QGIS takes to draw the map while RS Lab jobs run, with the jobs at QGIS's priority and below it.

What it measures
    QGIS (offscreen) draws a 20000 x 20000 RGB GeoTIFF (the Landsat sample
    repeated: bench/tiling.py builds and caches it) at 1280 x 900, each draw
    a different 5000 x 5000 region, so every draw decompresses blocks no draw
    read before (as panning and zooming over a large image does). It draws
    alone, then while 1 or 2 BSDM trainings run in background threads as the
    docks run them (`core.device.run_at_job_priority`, on the bundled ABU
    beach-2 scene), once with RSLAB_JOB_NICE=0 (the jobs at QGIS's
    priority, as before 2026-12-04) and once with the default (10 below).
    Each configuration runs in a fresh process. It prints the median draw
    alone and beside the jobs, their ratio, and the jobs' training
    iterations per second afterwards, for 25 s with QGIS idle (what a lower
    priority must not cost).
Why
    QGIS draws the map in threads of its own process; torch's threads
    holding both cores made each redraw wait.
How
    .venv/bin/python bench/responsiveness.py [--jobs 1 2] [--workdir /tmp/rslab-bench-tiling]
    (about 4 minutes here, plus building the image once: 547 MB.)
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Dict, List

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(BENCH))

SIZE = 20000
REGION = 5000  # pixels square of each draw: 16 regions, none drawn twice in a process
ALONE_DRAWS = 4  # after one unmeasured draw (QGIS's first opens the file)
BESIDE_DRAWS = 11  # 16 regions in all
IDLE_S = 25.0  # seconds the jobs train on with QGIS idle, after the draws
REPORT_EVERY = 10  # training iterations per progress report (core/bsdm_suppression.train_bsdm)
TRAINING_ITERATIONS = 100_000  # far more than the draws last: the jobs are cancelled once they are done
SCENE = REPO / "resources" / "samples" / "abu-beach-2.mat"


def child(args: argparse.Namespace) -> None:
    jobs = args.jobs[0]
    sys.path.append("/usr/share/qgis/python/plugins")
    from qgis.core import QgsApplication, QgsMapRendererParallelJob, QgsMapSettings, QgsRasterLayer, QgsRectangle
    from qgis.PyQt.QtCore import QSize

    app = QgsApplication([], False)
    app.initQgis()
    from rslab.core.anomaly import AnomalyOutputs, detect_anomalies
    from rslab.core.anomaly_params import AnomalyParams
    from rslab.core.device import job_niceness, run_at_job_priority
    from rslab.core.errors import JobCancelled
    from rslab.core.import_cube import import_cube

    layer = QgsRasterLayer(args.image, "image")
    assert layer.isValid(), args.image
    settings = QgsMapSettings()
    settings.setLayers([layer])
    settings.setDestinationCrs(layer.crs())
    settings.setOutputSize(QSize(1280, 900))
    extent, pixel = layer.extent(), layer.rasterUnitsPerPixelX()
    regions = [(col, row) for row in range(SIZE // REGION) for col in range(SIZE // REGION)]

    def draw(index: int) -> float:
        col, row = regions[index]
        x0, y1 = extent.xMinimum() + col * REGION * pixel, extent.yMaximum() - row * REGION * pixel
        settings.setExtent(QgsRectangle(x0, y1 - REGION * pixel, x0 + REGION * pixel, y1))
        job = QgsMapRendererParallelJob(settings)  # as QGIS's map canvas draws: in Qt's pool of threads
        start = time.perf_counter()
        job.start()
        job.waitForFinished()
        return time.perf_counter() - start

    work = tempfile.mkdtemp(prefix="rslab-bench-responsiveness-")
    cube = os.path.join(work, "beach-2.tif")
    import_cube(str(SCENE), cube)
    draw(0)
    alone = [draw(1 + i) for i in range(ALONE_DRAWS)]

    stop = threading.Event()
    reports: List[List[float]] = [[] for _ in range(jobs)]  # when each job said 'BSDM iteration i' (every 10th)

    def training(index: int) -> None:
        def progress(fraction: float, text: str) -> None:
            if text.startswith("BSDM iteration"):
                reports[index].append(time.perf_counter())

        try:
            run_at_job_priority(detect_anomalies, cube, AnomalyOutputs(scores=os.path.join(work, f"s{index}.tif")),
                                AnomalyParams(iterations=TRAINING_ITERATIONS, seed=index), None, progress,
                                stop.is_set)
        except JobCancelled:
            pass

    threads = [threading.Thread(target=training, args=(i,)) for i in range(jobs)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 300
    while not all(len(done) > 1 for done in reports):  # every job training
        if time.monotonic() > deadline or not all(t.is_alive() for t in threads):
            raise SystemExit("the trainings did not start")
        time.sleep(0.2)
    beside = [draw(1 + ALONE_DRAWS + i) for i in range(BESIDE_DRAWS)]
    idle_start = time.perf_counter()  # QGIS idle: how fast the jobs train when nothing competes
    time.sleep(IDLE_S)
    idle_end = time.perf_counter()
    stop.set()
    for thread in threads:
        thread.join()
    rates = []
    for done in reports:
        inside = [t for t in done if idle_start <= t <= idle_end]
        rates.append(REPORT_EVERY * (len(inside) - 1) / (inside[-1] - inside[0]) if len(inside) > 2 else None)
    print(json.dumps({"niceness": job_niceness(), "jobs": jobs, "alone": alone, "beside": beside,
                      "idle_iterations_per_s": rates}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--workdir", default=str(Path(tempfile.gettempdir()) / "rslab-bench-tiling"))
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--image", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    from measure import spawn_child
    from tiling import build_input, input_path

    image = input_path(Path(args.workdir), SIZE)
    image.parent.mkdir(parents=True, exist_ok=True)
    built = build_input(image, SIZE)
    if built:
        print(f"built {image} in {built:.0f} s")
    env: Dict[str, str] = {"QT_QPA_PLATFORM": "offscreen"}
    print(f"{os.cpu_count()} cores; QGIS draws {REGION} x {REGION}-pixel regions of a {SIZE} x {SIZE} RGB GeoTIFF "
          f"at 1280 x 900, each region once")
    print("| jobs | jobs' priority | draw alone (median s) | beside the jobs (median s) | ratio | "
          "training it/s per job, QGIS idle |")
    print("|---|---|---|---|---|---|")
    for jobs in args.jobs:
        for niceness in ("0", ""):
            figures = spawn_child(__file__, ["--child", "--jobs", str(jobs), "--image", str(image)],
                                  {**env, "RSLAB_JOB_NICE": niceness} if niceness else env)
            alone, beside = statistics.median(figures["alone"]), statistics.median(figures["beside"])
            label = "QGIS's" if figures["niceness"] == 0 else f"{figures['niceness']} below"
            rates = ", ".join("-" if rate is None else f"{rate:.2f}" for rate in figures["idle_iterations_per_s"])
            print(f"| {jobs} | {label} | {alone:.2f} | {beside:.2f} | {beside / alone:.2f} | {rates} |", flush=True)


if __name__ == "__main__":
    main()
