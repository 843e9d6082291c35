"""Running a change-detection model on numpy arrays: normalisation, padding, probabilities.

Shared by training (validation F1) and by the windowed inference job, so a
model is always fed exactly the same way.
"""
from __future__ import annotations

from typing import Any, List, Optional, Sequence, Tuple

import numpy as np

TASK = "change_detection"  # the task a change detector's model card names
STRIDE = 32  # the encoder's output stride: inputs are padded to a multiple of it


def trained_bands(card: Any) -> Optional[List[int]]:
    """The bands (1-based, in order) of its images a change model's card says it was trained on.

    None when training used every band (`TrainChangeParams.bands` not set), as the shipped model did.
    """
    bands = card.training.get("params", {}).get("bands")
    return [int(b) for b in bands] if bands else None


def trained_bands_hint(card: Any) -> str:
    """For messages about a band-count mismatch: which of its images' bands the model was trained on, if known."""
    bands = trained_bands(card)
    if not bands:
        return ""
    return f"; it was trained on bands {', '.join(map(str, bands))} of its images: choose those bands, in that order"


def normalise(x: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """(bands, h, w) -> float32 (x - mean) / std per band."""
    m = np.asarray(mean, np.float32)[:, None, None]
    s = np.asarray(std, np.float32)[:, None, None]
    return (x.astype(np.float32) - m) / s


def pad_multiple(x: np.ndarray, multiple: int = STRIDE) -> np.ndarray:
    """Reflect-pad the last two axes up to a multiple of `multiple` (edge-pad where too small to reflect)."""
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if not ph and not pw:
        return x
    pad = [(0, 0)] * (x.ndim - 2) + [(0, ph), (0, pw)]
    mode = "reflect" if h > ph and w > pw else "edge"
    return np.pad(x, pad, mode=mode)


def predict_pair(model: Any, before: np.ndarray, after: np.ndarray, mean: Sequence[float], std: Sequence[float],
                 device: Any) -> Tuple[np.ndarray, np.ndarray]:
    """Change probability and uncertainty (both (h, w) float32 in 0..1) for one pair of arrays."""
    return predict_pairs(model, [before], [after], mean, std, device)[0]


def predict_pairs(model: Any, befores: Sequence[np.ndarray], afters: Sequence[np.ndarray], mean: Sequence[float],
                  std: Sequence[float], device: Any) -> List[Tuple[np.ndarray, np.ndarray]]:
    """`predict_pair` for several pairs of one size in one forward pass.

    A GPU runs one 512-pixel tile at a time waiting on kernel launches (17 ms a tile alone, 1.4 ms a tile in a
    pass of eight on an H200, bench/gpu.py); in eval mode each tile's result is its own (BatchNorm uses its
    running statistics).
    """
    import torch

    h, w = befores[0].shape[-2:]
    if any(x.shape[-2:] != (h, w) for x in list(befores) + list(afters)):
        raise ValueError("predict_pairs takes arrays of one size")
    a = np.stack([pad_multiple(normalise(x, mean, std)) for x in befores])
    b = np.stack([pad_multiple(normalise(x, mean, std)) for x in afters])
    with torch.inference_mode():
        logit, uncertainty, _ = model(torch.from_numpy(a).to(device), torch.from_numpy(b).to(device))
        prob = torch.sigmoid(logit)[:, 0, :h, :w].float().cpu().numpy()
        unc = torch.sigmoid(uncertainty)[:, 0, :h, :w].float().cpu().numpy()
    return [(prob[i], unc[i]) for i in range(len(befores))]
