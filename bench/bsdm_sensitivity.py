"""How far do the seed and the denoiser's block layout move BSDM + RX? Ten ABU scenes.

The issue's target is a mean AUC(D,F) of 0.97 for BSDM + RX over the ten ABU
scenes; the plugin's default (seed 0) gives about 0.958. This script asks two
questions behind that shortfall, outside the plugin:

    seeds    the plugin's denoiser (METHODS.md section 2) trained with other
             seeds: how much of the gap is the draw of the pseudo noise and
             of the initial weights?
    authors  the residual-block layout of the authors' public BSDM code,
             which METHODS.md condenses: each block's first Linear goes
             through a wider hidden layer (Linear(in -> h), Tanh,
             Linear(h -> out), h = 200 except 100 in the two middle blocks),
             and the time embedding passes a Tanh before its projection.
             Everything else (noise, schedule, training, inference) is the
             plugin's. Written here from the published description of that
             code; the plugin keeps METHODS.md's layout.

Each denoiser is trained with the engine's `train_bsdm` on all pixels of the
scene (beach-1: 22,500, where the plugin samples 20,000), 500 iterations, in
the engine's default precision; RX is the plugin's `RxScorer`; AUC(D,F) is
the exact rank statistic.

    nice -n 19 .venv/bin/python bench/bsdm_sensitivity.py [--seeds 0 1 2] [--layouts plugin authors]
                                                          [--scenes abu-airport-1 ...]

Measured on 2026-12-02 (2 cores, AMD EPYC with AVX512-BF16), 70-100 s per
scene and run (beach-1: 170-240 s):

    layout   seed  mean AUC(D,F)
    plugin   0     0.9580
    plugin   1     0.9601
    plugin   2     0.9610
    authors  0     0.9607 (and 1.4x the training time)

Neither the seed nor the authors' block layout comes near 0.97: the spread
over seeds is 0.3 points, the authors' layout adds 0.3 points at seed 0.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Dict, List, Tuple

import rslab.core  # noqa: F401  (first: the engine's thread policy before torch loads, as in QGIS)

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from anomaly import all_scenes, exact_auc, normalised_scene, print_auc_rows  # noqa: E402  (bench/anomaly.py)
from rslab.models.bsdm import BSDMDenoiser as PLUGIN_DENOISER  # noqa: E402  (before bsdm_rx_auc swaps it)

ITERATIONS = 500
TIME_DIM = 512
# (in, hidden, out) of each residual block in the authors' layout
AUTHORS_BLOCKS = ((128, 200, 100), (100, 200, 50), (50, 100, 50), (50, 100, 50), (50, 200, 100), (100, 200, 128))


def authors_denoiser(bands: int):
    """The plugin's BSDMDenoiser with its residual blocks replaced by the authors' layout."""
    from torch import nn

    class Block(nn.Module):
        def __init__(self, cin: int, hidden: int, cout: int) -> None:
            super().__init__()
            self.first = nn.Sequential(nn.LayerNorm(cin), nn.Tanh(), nn.Linear(cin, hidden), nn.Tanh(),
                                       nn.Linear(hidden, cout))
            self.time = nn.Sequential(nn.Tanh(), nn.Linear(TIME_DIM, cout))
            self.second = nn.Sequential(nn.LayerNorm(cout), nn.Tanh(), nn.Linear(cout, cout))
            self.skip = nn.Linear(cin, cout) if cin != cout else nn.Identity()

        def forward(self, x, temb):
            return self.second(self.first(x) + self.time(temb)) + self.skip(x)

    model = PLUGIN_DENOISER(bands)  # its own blocks are built (and draw from the RNG) first, then replaced
    model.blocks = nn.ModuleList(Block(*spec) for spec in AUTHORS_BLOCKS)
    return model


def bsdm_rx_auc(x: np.ndarray, truth: np.ndarray, seed: int, layout: str) -> Tuple[float, float]:
    """AUC(D,F) of RX on BSDM's suppressed cube, and the seconds training plus suppression took."""
    import torch

    import rslab.models.bsdm as bsdm
    from rslab.core.anomaly_params import AnomalyParams
    from rslab.core.bsdm_suppression import train_bsdm
    from rslab.core.job import JobMonitor
    from rslab.core.rx import RxScorer

    if layout == "authors":  # train_bsdm builds the denoiser it imports from models.bsdm
        bsdm.BSDMDenoiser = authors_denoiser
    try:
        started = time.perf_counter()
        model, _, _ = train_bsdm(x, AnomalyParams(iterations=ITERATIONS, seed=seed), torch.device("cpu"), JobMonitor())
        with torch.no_grad():
            out = bsdm.suppress_background(model, torch.from_numpy(x)).double().numpy()
        seconds = time.perf_counter() - started
    finally:
        bsdm.BSDMDenoiser = PLUGIN_DENOISER
    scores = RxScorer(out.mean(axis=0), np.cov(out, rowvar=False))(out)
    return exact_auc(scores, truth), seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenes", nargs="+", default=None)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--layouts", nargs="+", choices=("plugin", "authors"), default=["plugin", "authors"])
    args = parser.parse_args()
    scenes = args.scenes or all_scenes()
    runs = [("plugin", seed) for seed in args.seeds if "plugin" in args.layouts]
    if "authors" in args.layouts:
        runs.append(("authors", args.seeds[0]))
    auc: Dict[Tuple[str, int], List[float]] = {run: [] for run in runs}
    for scene in scenes:
        pixels, truth, _, _ = normalised_scene(scene)
        x = pixels.astype(np.float32)
        for layout, seed in runs:
            value, seconds = bsdm_rx_auc(x, truth, seed, layout)
            auc[(layout, seed)].append(value)
            print(f"{scene} {layout} seed {seed}: AUC(D,F) {value:.4f}, {seconds:.0f} s", flush=True)

    print_auc_rows(("layout", "seed"), (8, 4), auc, scenes)
    print("\nissue target: mean AUC(D,F) >= 0.97")


if __name__ == "__main__":
    main()
