"""RS Lab engine.

Everything in this package runs without QGIS and without Qt: a script, a
notebook, a server or a federated client can import it. Modules that need
torch import it lazily, so raster I/O and the plugin shell work before torch
is installed.
"""

import os as _os

# torch's OpenMP threads spin while waiting for each other by default. Beside
# QGIS's own threads (or any other busy process) one descheduled thread then
# stalls the rest: we measured a training step go from 1.2 s to 14 s on
# 2 cores. Passive waiting costs little when the machine is free. This only
# takes effect if set before torch is first imported.
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
