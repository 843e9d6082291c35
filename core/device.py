"""Which device a job runs on, and how many CPU threads torch may use.

Jobs run on CUDA when torch sees a GPU and on the CPU otherwise. On the CPU
torch's default (one thread per logical core, plus inter-op threads) fights
with QGIS's own rendering threads, so we leave one logical core to QGIS on
machines with more than two (on one or two cores torch takes them all: one
thread halves the jobs' speed there), unless RSLAB_THREADS says otherwise. GDAL compresses the outputs in
as many threads (core/raster_io.output_profile, core/overviews.py). Every job result records the device
string this returns.
"""
from __future__ import annotations

import os
import threading
from typing import Any, Optional

_configured_threads: Optional[int] = None


def cpu_threads() -> int:
    """Threads torch should use on the CPU (RSLAB_THREADS overrides)."""
    env = os.environ.get("RSLAB_THREADS", "").strip()
    if env:
        try:
            value = int(env)
        except ValueError:
            value = 0
        if value > 0:
            return value
    count = os.cpu_count() or 1
    return max(1, count - 1) if count > 2 else count


def select_device(preferred: str = "auto") -> Any:
    """Return the torch.device for a job: 'auto' picks CUDA when available.

    Also sets torch's CPU thread count once per process.
    """
    import torch

    global _configured_threads
    threads = cpu_threads()
    if _configured_threads != threads:
        torch.set_num_threads(threads)
        _configured_threads = threads
    if preferred == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    from .errors import RSLabError

    if preferred.startswith("cuda") and not torch.cuda.is_available():
        raise RSLabError("a CUDA device was requested but torch sees no GPU; use 'auto' or 'cpu'")
    try:
        return torch.device(preferred)
    except RuntimeError:  # torch's own message lists every device type it knows (xla, mtia, hpu, ...)
        raise RSLabError(f"unknown device {preferred!r}: use 'auto', 'cpu' or 'cuda' (or 'cuda:1' for a second "
                         "GPU)") from None


def describe_device(device: Any) -> str:
    """A short human string: 'cuda:0 (NVIDIA H100)' or 'cpu (3 threads)'."""
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return f"cuda:{index} ({torch.cuda.get_device_name(index)})"
    return f"cpu ({torch.get_num_threads()} threads)"


def native_bfloat16(device: Any) -> bool:
    """Whether `device` multiplies bfloat16 matrices in hardware (so autocast to it is faster, not emulated).

    CUDA: compute capability 8.0 or newer (Ampere+). CPU: AVX512-BF16 or AMX
    (Intel Cooper Lake / Sapphire Rapids and later); elsewhere torch emulates
    bfloat16 and it is slower than float32.
    """
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_capability(device)[0] >= 8  # is_bf16_supported() also counts emulation
    if device.type != "cpu":
        return False
    try:  # private helpers (torch >= 2.1); a torch without them gets float32
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    except AttributeError:
        return False


_OPTIMISERS_LOADED = threading.Event()


def load_optimisers(monitor: Any) -> None:
    """Import what torch's optimisers import on first use (torch._dynamo), listening for a cancel meanwhile
    (`JobMonitor.wait_for`); call it before a job's first `torch.optim` optimiser. Later calls cost nothing.

    After a cancel the import goes on in its helper thread with the module already in sys.modules: the next
    job waits for it here (Python's module lock holds its own import until the first one has ended), not
    uncancellably inside its first optimiser step."""
    if not _OPTIMISERS_LOADED.is_set():
        monitor.wait_for(_import_optimisers)


def _import_optimisers() -> None:
    import importlib

    importlib.import_module("torch._dynamo")
    _OPTIMISERS_LOADED.set()
