"""Would another detector on BSDM's output reach the issue's 0.97? Detector variants on the ten ABU scenes.

`bench/anomaly.py` measures what the plugin does. This script asks the
question behind the one target it misses (BSDM + RX mean AUC(D,F) >= 0.97):
is the shortfall in the denoiser or in the detector after it? It runs, on
three versions of each ABU scene,

    x        the normalised cube (global min-max, as BSDM sees it),
    bsdm     BSDM's background-suppressed cube x0_hat (500 iterations, seed 0),
    bsdm_1   the same with a denoiser trained for one iteration,

six detectors, none of them part of the plugin:

    rx        global RX (the plugin's `RxScorer`, on statistics computed in memory),
    rx_np     global RX as the authors' code computes it: numpy's `pinv` with its
              default cut-off (1e-15 of the largest singular value; ours is 1e-10),
    rx_cut6   global RX with the pseudo-inverse cut at 1e-6 (directions of
              smaller variance dropped: a tuned departure, for scale),
    rx_p1     RX with background purification: mean and covariance
    rx_p5     re-estimated without the 1 % (5 %) highest-scoring pixels
              of a first RX pass, a standard robust-covariance step,
    lrx 7/21  local dual-window RX on the 10 leading principal components
              (the plugin's `local_rx_tile`), inner 7, outer 21.

and prints AUC(D,F) (exact rank statistic) per scene and the mean per
combination. The denoisers are trained with the engine's `train_bsdm` on all
pixels of each scene (beach-1: 22,500, where the plugin samples 20,000), so
the `bsdm` / rx row reproduces bench/anomaly.py's BSDM + RX to within that.

    nice -n 19 .venv/bin/python bench/anomaly_variants.py [--scenes abu-airport-1 ...]

Measured on 2026-12-03 (2 cores, AMD EPYC with AVX512-BF16), all ten scenes, about 7 minutes:

    cube     detector   mean AUC(D,F)
    x        rx         0.9372
    x        rx_np      0.9372
    x        rx_cut6    0.9607
    x        rx_p1      0.9444
    x        rx_p5      0.9496
    x        lrx 7/21   0.9467
    bsdm     rx         0.9580
    bsdm     rx_np      0.9580
    bsdm     rx_cut6    0.9600
    bsdm     rx_p1      0.9595
    bsdm     rx_p5      0.9605
    bsdm     lrx 7/21   0.9457
    bsdm_1   rx         0.9618
    bsdm_1   rx_np      0.9618
    bsdm_1   rx_cut6    0.9554
    bsdm_1   rx_p1      0.9625
    bsdm_1   rx_p5      0.9638
    bsdm_1   lrx 7/21   0.9419

No combination reaches 0.97 (the best: 0.9638, the 1-iteration denoiser and
RX purified of 5 %). The authors' pseudo-inverse gives exactly our RX on
every scene (the smallest eigenvalue of x0_hat's covariance is 2.3e-9 to 6.5e-9
of its largest, so neither cut-off drops a direction). Cutting at 1e-6 lifts
plain RX on the raw cube by 2.4 points, to above BSDM + RX, and BSDM + RX by
0.2: what BSDM adds on these scenes is largely what dropping the weakest
directions adds. The local detector wins airport-1, beach-2 and urban-3 and
loses urban-2 (0.83-0.86 against 0.995) and airport-3 by more;
purification adds at most a quarter of a point after BSDM.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional

import rslab.core  # noqa: F401  (first: the engine's thread policy before torch loads, as in QGIS)

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from anomaly import all_scenes, exact_auc, normalised_scene, print_auc_rows  # noqa: E402  (bench/anomaly.py)

ITERATIONS = 500
SEED = 0
LRX_WINDOWS = (7, 21)
COMPONENTS = 10


def rx_scores(pixels: np.ndarray, background: np.ndarray) -> np.ndarray:
    """The plugin's RX scorer, with the mean and covariance of `background` (all pixels for plain RX)."""
    from rslab.core.rx import RxScorer

    return RxScorer(background.mean(axis=0), np.cov(background, rowvar=False))(pixels)


def pinv_rx(pixels: np.ndarray, rcond: Optional[float]) -> np.ndarray:
    """Global RX with numpy's `pinv` at this relative cut-off (None: numpy's default, as the authors' RX)."""
    centred = pixels - pixels.mean(axis=0)
    cov = np.cov(pixels, rowvar=False)
    inverse = np.linalg.pinv(cov) if rcond is None else np.linalg.pinv(cov, rcond=rcond, hermitian=True)
    return ((centred @ inverse) * centred).sum(axis=1)


def purified_rx(pixels: np.ndarray, fraction: float) -> np.ndarray:
    """RX whose background statistics leave out the `fraction` highest-scoring pixels of a first RX pass."""
    first = rx_scores(pixels, pixels)
    keep = first <= np.quantile(first, 1.0 - fraction)
    return rx_scores(pixels, pixels[keep])


def local_rx(pixels: np.ndarray, height: int, width: int) -> np.ndarray:
    from rslab.core.local_rx import local_rx_tile, principal_components

    mean = pixels.mean(axis=0)
    basis, variances = principal_components(np.cov(pixels, rowvar=False), COMPONENTS)
    projected = ((pixels - mean) @ basis).T.reshape(COMPONENTS, height, width)
    inner, outer = LRX_WINDOWS
    return local_rx_tile(projected, np.ones((height, width), bool), inner, outer, np.diag(variances)).ravel()


def suppressed(pixels: np.ndarray, iterations: int) -> np.ndarray:
    """BSDM's x0_hat of the normalised pixels, with a denoiser trained on them for `iterations`."""
    import torch

    from rslab.core.anomaly_params import AnomalyParams
    from rslab.core.bsdm_suppression import train_bsdm
    from rslab.core.job import JobMonitor
    from rslab.models.bsdm import suppress_background

    x = pixels.astype(np.float32)
    model, _, _ = train_bsdm(x, AnomalyParams(iterations=iterations, seed=SEED), torch.device("cpu"), JobMonitor())
    with torch.no_grad():
        return suppress_background(model, torch.from_numpy(x)).double().numpy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenes", nargs="+", default=None)
    args = parser.parse_args()
    scenes = args.scenes or all_scenes()
    detectors: Dict[str, Callable[[np.ndarray, int, int], np.ndarray]] = {
        "rx": lambda p, h, w: rx_scores(p, p),
        "rx_np": lambda p, h, w: pinv_rx(p, None),
        "rx_cut6": lambda p, h, w: pinv_rx(p, 1e-6),
        "rx_p1": lambda p, h, w: purified_rx(p, 0.01),
        "rx_p5": lambda p, h, w: purified_rx(p, 0.05),
        f"lrx {LRX_WINDOWS[0]}/{LRX_WINDOWS[1]}": local_rx,
    }
    cubes = ("x", "bsdm", "bsdm_1")
    auc: Dict[tuple, List[float]] = {(c, d): [] for c in cubes for d in detectors}
    for scene in scenes:
        started = time.perf_counter()
        x, truth, height, width = normalised_scene(scene)
        versions = {"x": x, "bsdm": suppressed(x, ITERATIONS), "bsdm_1": suppressed(x, 1)}
        for c, data in versions.items():
            for d, detect in detectors.items():
                auc[(c, d)].append(exact_auc(detect(data, height, width), truth))
        print(f"{scene}: {time.perf_counter() - started:.0f} s", flush=True)

    print_auc_rows(("cube", "detector"), (8, 10), auc, scenes)
    best = max(auc, key=lambda k: np.mean(auc[k]))
    print(f"\nbest: {best[0]} + {best[1]}, mean AUC(D,F) {np.mean(auc[best]):.4f} (issue target 0.97)")


if __name__ == "__main__":
    main()
