"""RS Lab engine.

Everything in this package runs without QGIS and without Qt: a script, a
notebook, a server or a federated client can import it. Modules that need
torch import it lazily, so raster I/O and the plugin shell work before torch
is installed.
"""

import os as _os

# How long torch's OpenMP threads spin before they sleep while waiting for
# each other (libgomp reads this once, when torch is first imported). The
# default (300,000 spins) is fastest on an idle machine but collapses when
# the cores are shared: beside one busy process, one BSDM training step on
# 2 cores took 0.85 s instead of 0.10 s. OMP_WAIT_POLICY=PASSIVE (never spin)
# is the most robust (0.15 s beside the busy process) but costs 25 % on an
# idle machine (0.12 s: every parallel region of a step waits for a
# sleeping thread to wake up). 10,000 spins is the compromise we
# measured (a loop of BSDM training steps, 205 bands, 10,000 pixels,
# bfloat16, 2 threads on 2 cores): 0.106 s idle, 0.23 s beside a busy process, 0.23 s
# beside a second training. A user's own setting of either variable wins.
if "OMP_WAIT_POLICY" not in _os.environ:
    _os.environ.setdefault("GOMP_SPINCOUNT", "10000")
