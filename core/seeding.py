"""Seeded draws from torch's process-wide random generator, one job at a time.

A network's initial weights come from torch's global generator (nn.Linear and
nn.Conv2d initialise from it, with no generator argument). That generator is
shared by every thread of the QGIS process: two RS Lab jobs seeding it at once
(a training beside a BSDM run) drew from each other's stream, and a fixed seed
stopped giving the same result (9 of 10 seeded BSDM runs beside a drawing
thread gave other losses). So every construction of a network in the engine
draws inside this block (seeded ones, and those whose weights a checkpoint
replaces, core/checkpoint.build_model); every other random draw of the engine
uses its own generator (torch.Generator or numpy's default_rng).
"""
from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Iterator

import numpy as np

_GLOBAL_GENERATOR = threading.RLock()  # re-entrant: a seeded block may build a model from a checkpoint


@contextmanager
def seeded_global_generator(seed: int) -> Iterator[None]:
    """Run the block (a model's construction) with torch's global generator seeded with `seed`, holding it alone;
    the generator's previous state is restored afterwards, so code outside the block is not re-seeded."""
    import torch

    with _GLOBAL_GENERATOR, torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


_GOLDEN = 0x9E3779B97F4A7C15  # splitmix64's increment and mixing constants (Steele, Lea and Flood 2014)
_MIX = (0xBF58476D1CE4E5B9, 0x94D049BB133111EB)


def pixel_uniforms(seed: int, index: np.ndarray) -> np.ndarray:
    """One uniform draw in [0, 1) per pixel, a function of (`seed`, the pixel's row-major `index`) alone.

    A draw that depends only on which pixel it is, not on the order pixels are
    read in: a generator stepped window by window gave a striped and a tiled
    copy of one image (read in different windows) different training samples
    from one seed. splitmix64 of seed + (index + 1) * golden ratio: 53 bits.
    """
    with np.errstate(over="ignore"):
        z = np.uint64(seed % 2**64) + (np.asarray(index, dtype=np.uint64) + np.uint64(1)) * np.uint64(_GOLDEN)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(_MIX[0])
        z = (z ^ (z >> np.uint64(27))) * np.uint64(_MIX[1])
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) * 2.0 ** -53
