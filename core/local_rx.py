"""Local (dual-window) RX: each pixel against the background in a ring around it.

The background of a pixel is its outer window minus its inner (guard)
window; box sums give every local mean and covariance at once. Departure
from the textbook form: the cube is first projected on its `LRX_COMPONENTS`
leading principal components (a global pass, rx.scene_statistics); a
full-band local covariance per pixel (B x B for every pixel, B ~ 200) is not
tractable, and this is what practical LRX does. Tiles overlap so each pixel
sees its whole ring (local_rx_tiles).
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

import numpy as np
from scipy import ndimage

from .blas import matmul
from .job import JobMonitor
from .rx import STATS_TILE, scene_statistics
from .tiling import OutputSpec, TileSpec, run_tiled

LRX_COMPONENTS = 10


def local_rx_tile(pixels: np.ndarray, valid: np.ndarray, inner: int, outer: int,
                  fallback_cov: Optional[np.ndarray] = None) -> np.ndarray:
    """Dual-window RX on a (k, h, w) tile of principal components; box sums give every local mean and covariance.

    Where the ring holds too few valid pixels for a covariance (beside nodata
    or at the image edge: fewer than 2k), the scene covariance `fallback_cov`
    is used instead of a near-singular local one.
    """
    k, h, w = pixels.shape
    x = np.where(valid, pixels, 0.0).astype(np.float64)
    weight = valid.astype(np.float64)

    def ring_sum(a: np.ndarray) -> np.ndarray:
        big = ndimage.uniform_filter(a, size=outer, mode="constant") * outer * outer
        small = ndimage.uniform_filter(a, size=inner, mode="constant") * inner * inner
        return big - small

    count = np.maximum(ring_sum(weight), 1.0)
    means = np.stack([ring_sum(x[i]) for i in range(k)]) / count
    cov = np.empty((h, w, k, k))
    for i in range(k):
        for j in range(i, k):
            value = ring_sum(x[i] * x[j]) / count - means[i] * means[j]
            cov[:, :, i, j] = value
            cov[:, :, j, i] = value
    if fallback_cov is not None:
        sparse = count < 2 * k
        cov[sparse] = fallback_cov
    cov += np.eye(k) * 1e-6 * np.trace(cov, axis1=2, axis2=3)[..., None, None] / k
    centred = np.moveaxis(pixels, 0, -1) - np.moveaxis(means, 0, -1)
    solved = np.linalg.solve(cov, centred[..., None])[..., 0]
    return np.einsum("hwk,hwk->hw", centred, solved)


def principal_components(cov: np.ndarray, count: int) -> Tuple[np.ndarray, np.ndarray]:
    """The `count` leading eigenvectors (B, count) of the covariance and their eigenvalues."""
    values, vectors = np.linalg.eigh(cov)
    order = np.argsort(values)[::-1][:count]
    return vectors[:, order], np.maximum(values[order], 0.0)


# --- BSDM ---------------------------------------------------------------------------------------------


def local_rx(source: str, output: str, inner: int, outer: int, monitor: JobMonitor,
             bands: Optional[Sequence[int]] = None) -> None:
    """Write local RX scores of `source` (its `bands`; default: the data bands) to `output`, by overlapping tiles
    (NaN where a pixel is nodata)."""
    mean, cov, _ = scene_statistics(source, monitor.sub(0.0, 0.3), bands)
    basis, variances = principal_components(cov, min(LRX_COMPONENTS, cov.shape[0]))
    scene_cov = np.diag(variances)  # the scene covariance in the principal-component basis

    def fn(arrays, valid):
        cube = np.where(valid, arrays[0], mean.reshape(-1, 1, 1))  # nodata, NaN, inf: the scene mean, not inf - inf
        bands, h, w = cube.shape
        projected = matmul(basis.T, cube.reshape(bands, -1) - mean[:, None]).reshape(-1, h, w)
        scores = local_rx_tile(projected, valid, inner, outer, scene_cov)
        scores[~valid] = np.nan
        return [scores.astype(np.float32)]

    run_tiled([source], [OutputSpec(output, 1, "float32", None, ("anomaly score",))], fn, local_rx_tiles(outer),
              monitor.sub(0.3, 1.0), bands)


def local_rx_tiles(outer: int) -> TileSpec:
    """Tiles for local RX: neighbours overlap by outer + 1, so each tile's centre keeps (outer + 1) / 2 pixels
    of context on every side, at least the ring's reach of (outer - 1) / 2; a tile is at least twice the overlap.
    (Tiles of a fixed 256 overlapping by 255 for outer windows from 128 on stepped by one pixel:
    555,025 tiles on a 1000 x 1000 image.)"""
    overlap = outer + 1
    return TileSpec(max(STATS_TILE, 2 * overlap), overlap)
