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
    import torch

    h, w = before.shape[-2:]
    a = pad_multiple(normalise(before, mean, std))
    b = pad_multiple(normalise(after, mean, std))
    with torch.inference_mode():
        ta = torch.from_numpy(np.ascontiguousarray(a))[None].to(device)
        tb = torch.from_numpy(np.ascontiguousarray(b))[None].to(device)
        logit, uncertainty, _ = model(ta, tb)
        prob = torch.sigmoid(logit)[0, 0, :h, :w].float().cpu().numpy()
        unc = torch.sigmoid(uncertainty)[0, 0, :h, :w].float().cpu().numpy()
    return prob, unc
