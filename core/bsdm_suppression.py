"""BSDM background suppression (METHODS.md section 2) on a raster: train the denoiser on the scene, suppress by windows.

The cube is scaled to [0, 1] with one global min and max (value_range), the
spectral denoiser (models/bsdm.py) is trained on the scene's pixels (a random
sample of `max_train_pixels` valid pixels when there are more:
training_sample) to predict one fixed noise draw at t = 500 (train_bsdm), and
the modified inference runs over the image by windows (suppress_raster),
leaving a cube in which the background is removed and anomalies survive; RX
then scores it (core/anomaly.py). A trained denoiser can be saved as an RS Lab
checkpoint and read back (save_denoiser, load_denoiser) to skip training.
"""
from __future__ import annotations

import os
from typing import Any, List, Optional, Sequence, Tuple

import numpy as np

from .anomaly_params import AnomalyParams
from .device import load_optimisers, native_bfloat16
from .errors import RSLabError
from .job import JobMonitor
from .raster_io import gdal_env, open_raster
from .rx import STATS_TILE, band_count, stats_windows, valid_summary, window_pixels
from .seeding import pixel_uniforms, seeded_global_generator
from .tiling import OutputSpec, TileSpec, run_tiled

TASK = "anomaly_detection"  # a denoiser checkpoint's task on its model card


def value_range(path: str, monitor: Optional[JobMonitor] = None, bands: Optional[Sequence[int]] = None
                 ) -> Tuple[float, float, int]:
    """The global (min, max) BSDM normalises with, and the number of valid pixels."""
    summary = valid_summary(path, monitor, bands)
    if not summary.count or summary.hi <= summary.lo:
        raise RSLabError("the image is constant (or has no valid pixels): there is nothing to detect")
    return summary.lo, summary.hi, summary.count


def training_sample(path: str, lo: float, hi: float, limit: int, valid_pixels: int, seed: int,
                     monitor: Optional[JobMonitor] = None, bands: Optional[Sequence[int]] = None) -> np.ndarray:
    """Normalised valid pixels of `bands` (default: the data bands), in pixel order: all of them, or a uniform
    random sample of exactly `limit` of the `valid_pixels`.

    Each pixel has its own draw from (`seed`, its position) (seeding.pixel_uniforms),
    so the sample is the same however the file is read (a striped and a tiled
    copy of one image are read in different windows). Pixels are kept while
    reading when their draw is below a little more than limit / valid_pixels
    (six standard deviations of the kept count), so all but surely at least
    `limit` are; then the `limit` smallest draws, a uniform sample. (Set from the
    raster's size instead, a scene half nodata trained on half the pixels asked for.)
    """
    monitor = monitor or JobMonitor()
    chunks, indexes, draws = [], [], []
    with gdal_env(), open_raster(path) as ds:
        keep = min(1.0, (limit + 6.0 * np.sqrt(limit)) / max(valid_pixels, 1))
        windows = stats_windows(ds)
        for i, window in enumerate(windows):
            monitor.step(i / len(windows), "drawing the training pixels")
            x, valid = window_pixels(ds, window, bands)
            rows, cols = np.mgrid[window.row_off:window.row_off + window.height,
                                  window.col_off:window.col_off + window.width]
            index = (rows.astype(np.int64) * ds.width + cols).ravel()[valid]
            draw = pixel_uniforms(seed, index)
            chosen = draw < keep if keep < 1.0 else slice(None)
            chunks.append((x[valid][chosen] - lo) / (hi - lo))
            indexes.append(index[chosen])
            draws.append(draw[chosen])
    sample, index, draw = np.concatenate(chunks), np.concatenate(indexes), np.concatenate(draws)
    chosen = np.lexsort((index, draw))[:limit]  # the smallest draws (all when there are no more than `limit`)
    chosen = chosen[np.argsort(index[chosen])]  # in pixel order, whatever the windows
    return sample[chosen].astype(np.float32)


def train_bsdm(sample: np.ndarray, params: AnomalyParams, device: Any,
               monitor: JobMonitor) -> Tuple[Any, List[float], str]:
    """Train the denoiser on pixel tokens to predict one fixed noise draw at t = 500 (MSE, AdamW, cosine).

    Returns the model, the loss per iteration and the precision it trained in.
    Departure from METHODS.md (which is silent on precision): with
    `precision="auto"` the matrix products run in bfloat16 (autocast; weights,
    optimiser state, loss and inference stay float32) where the hardware
    multiplies bfloat16 natively. On the 2-core AMX test machine a 100 x 100
    ABU scene takes 49-52 s instead of 61-62 s, and AUC(D,F) stays within
    0.0012 of float32 on every ABU scene (`bench/anomaly.py`, with and
    without `--precision float32`).
    """
    import torch

    from ..models.bsdm import T_FIXED, BSDMDenoiser, fixed_noise_input, pixel_statistics

    precision = params.precision
    if precision == "auto":
        precision = "bfloat16" if native_bfloat16(device) else "float32"
    noise, x_t = fixed_noise_input(torch.from_numpy(sample), params.seed)  # drawn once, reused at every step
    x_t = x_t.to(device)
    statistics = pixel_statistics(x_t)  # x_t is the same at every iteration, so are its per-pixel statistics
    noise = noise.to(device)
    with seeded_global_generator(params.seed):  # the initial weights
        model = BSDMDenoiser(sample.shape[1])
    model.to(device)
    load_optimisers(monitor)  # The first optimiser imports torch._dynamo: listen for a cancel meanwhile.
    fused = device.type in ("cpu", "cuda")  # one kernel for all parameters instead of a loop over them
    optimiser = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=fused or None)
    decay = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, params.iterations, eta_min=1e-5)
    step = torch.tensor(T_FIXED, device=device)
    losses = []
    for iteration in range(params.iterations):
        if iteration % 10 == 0:
            monitor.step(iteration / params.iterations, f"BSDM iteration {iteration + 1} of {params.iterations}")
        else:  # a cancel waited up to ten iterations: 5 s here, ~20 s on a loaded machine
            monitor.check()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bfloat16"):
            predicted = model(x_t, step, statistics)
        loss = torch.nn.functional.mse_loss(predicted.float(), noise)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        decay.step()
        losses.append(float(loss.detach()))
    model.eval()
    return model, losses, precision


def save_denoiser(model: Any, path: str, scene: str, lo: float, hi: float, params: AnomalyParams) -> None:
    """Write a trained BSDM denoiser as an RS Lab checkpoint (for reuse on the scene, or compression) to `path`,
    a temporary name of the job's PendingOutputs."""
    from .checkpoint import ModelCard, save_checkpoint

    bands = model.bands
    card = ModelCard(
        task=TASK, architecture="bsdm", arguments={"bands": bands},
        bands=[f"band {i + 1}" for i in range(bands)],
        normalisation={"min": [float(lo)] * bands, "max": [float(hi)] * bands},
        training={"data": os.path.basename(scene), "params": {"iterations": params.iterations, "seed": params.seed,
                                                              "max_train_pixels": params.max_train_pixels}},
        description="BSDM background-suppression denoiser, trained on one scene (RS Lab)",
    )
    save_checkpoint(path, model.state_dict(), card, atomic=False)


def load_denoiser(path: str, bands: int, scene_bands: Optional[int] = None) -> Tuple[Any, str]:
    """A BSDM denoiser checkpoint (float or compressed) for a `bands`-band image, ready for inference, and the
    file name of the scene its card says it was trained on ('' if it does not say).

    `scene_bands`: the file's own band count, when bad or empty bands were left out of the `bands` used.
    """
    from .checkpoint import build_model, load_checkpoint

    checkpoint = load_checkpoint(path, task=TASK)
    if checkpoint.card.arguments.get("bands") != bands:
        has = f"{bands}" if scene_bands in (None, bands) else \
            f"{bands} usable bands (of its {scene_bands}: {scene_bands - bands} are flagged bad or empty)"
        raise RSLabError(f"{os.path.basename(path)} was trained for {checkpoint.card.arguments.get('bands')} bands; "
                         f"the image has {has}")
    return build_model(checkpoint), str(checkpoint.card.training.get("data") or "")


def suppress_raster(source: str, output: str, model: Any, lo: float, hi: float, params: AnomalyParams, device: Any,
                    monitor: JobMonitor, bands: Optional[Sequence[int]] = None) -> None:
    """Write the background-suppressed cube of `source` (its `bands`; default: the data bands), normalised with
    (lo, hi), to `output` (float32), by windows: `params.rounds` rounds of the modified inference each."""
    import torch

    from ..models.bsdm import suppress_background

    with gdal_env(), open_raster(source) as ds:
        windows = len(stats_windows(ds))  # as run_tiled cuts it, for progress within each window
    done = [0]

    def chunk_progress(chunk: int, chunks: int) -> None:  # also the cancel check, chunk by chunk
        monitor.step((done[0] + chunk / chunks) / windows,
                     f"suppressing the background: window {done[0] + 1} of {windows}")

    def fn(arrays, valid):
        cube = arrays[0]
        bands, h, w = cube.shape
        # normalised in float64 as the training sample is, then float32: cast first, an image with a large
        # offset and a small range (int32 values near 1e8: float32 steps of 8) lost its detail
        pixels = ((cube.reshape(bands, -1).T.astype(np.float64) - lo) / (hi - lo)).astype(np.float32)
        with torch.inference_mode():
            out = suppress_background(model, torch.from_numpy(pixels).to(device), params.rounds,
                                      progress=chunk_progress)
        done[0] += 1
        return [out.float().cpu().numpy().T.reshape(bands, h, w)]

    # float32: the denoiser computes in float32, so the values are stored exactly (a float64 copy of a
    # 1000 x 1000 x 200 cube takes 1.6 GB uncompressed)
    run_tiled([source], [OutputSpec(output, band_count(source, bands), "float32")], fn,
              TileSpec(STATS_TILE, 0, "partition"), monitor, bands)
