"""Seeded draws from torch's process-wide random generator, one job at a time.

A network's initial weights come from torch's global generator (nn.Linear and
nn.Conv2d initialise from it, with no generator argument). That generator is
shared by every thread of the QGIS process: two RS Lab jobs seeding it at once
(a training beside a BSDM run) drew from each other's stream, and a fixed seed
stopped giving the same result (9 of 10 seeded BSDM runs beside a drawing
thread gave other losses). Every other random draw of the engine uses its own
generator (torch.Generator or numpy's default_rng), so only these short blocks
need the lock.
"""
from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Iterator

_GLOBAL_GENERATOR = threading.Lock()


@contextmanager
def seeded_global_generator(seed: int) -> Iterator[None]:
    """Run the block (a model's construction) with torch's global generator seeded with `seed`, holding it alone;
    the generator's previous state is restored afterwards, so code outside the block is not re-seeded."""
    import torch

    with _GLOBAL_GENERATOR, torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield
