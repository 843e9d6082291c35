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

_GLOBAL_GENERATOR = threading.RLock()  # re-entrant: a seeded block may build a model from a checkpoint


@contextmanager
def seeded_global_generator(seed: int) -> Iterator[None]:
    """Run the block (a model's construction) with torch's global generator seeded with `seed`, holding it alone;
    the generator's previous state is restored afterwards, so code outside the block is not re-seeded."""
    import torch

    with _GLOBAL_GENERATOR, torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield
