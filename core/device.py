"""Which device a job runs on, how many CPU threads torch may use, and at what priority a job's threads run.

Jobs run on CUDA when torch sees a GPU and on the CPU otherwise. On the CPU
torch's default (one thread per logical core, plus inter-op threads) fights
with QGIS's own rendering threads, so we leave one logical core to QGIS on
machines with more than two (on one or two cores torch takes them all: one
thread halves the jobs' speed there), unless RSLAB_THREADS says otherwise. GDAL compresses the outputs in
as many threads (core/raster_io.output_profile, core/overviews.py). Every job result records the device
string this returns.

A job started from QGIS's desktop runs its threads below QGIS's own
(`run_at_job_priority`): QGIS draws the map in threads of the same process,
and on a machine whose cores the jobs hold a redraw waited for them.
"""
from __future__ import annotations

import os
import sys
import threading
from typing import Any, Callable, Dict, Optional, TypeVar

_configured_threads: Optional[int] = None

Result = TypeVar("Result")
DEFAULT_JOB_NICENESS = 10


def _env_int(name: str) -> Optional[int]:
    """An integer environment setting, None when unset or not an integer."""
    try:
        return int(os.environ.get(name, "").strip())
    except ValueError:
        return None


def cpu_threads() -> int:
    """Threads torch should use on the CPU (RSLAB_THREADS overrides)."""
    value = _env_int("RSLAB_THREADS")
    if value is not None and value > 0:
        return value
    count = os.cpu_count() or 1
    return max(1, count - 1) if count > 2 else count


def job_niceness() -> int:
    """How far below its caller's priority a job's threads run (nice increments, 0-19; RSLAB_JOB_NICE overrides,
    0 turns it off). Linux only: elsewhere 0 (see `run_at_job_priority`)."""
    if not sys.platform.startswith("linux"):
        return 0
    value = _env_int("RSLAB_JOB_NICE")
    return DEFAULT_JOB_NICENESS if value is None else min(max(value, 0), 19)


JOB_THREAD_NAME = b"rslab-job"  # what `top -H` and /proc/<pid>/task/*/comm show for a job's threads


def _name_thread(name: bytes) -> None:
    """Give the calling thread its Linux name (prctl PR_SET_NAME); the threads it starts inherit it."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(15, name, 0, 0, 0)  # 15: PR_SET_NAME
    except (OSError, AttributeError):
        pass


def run_at_job_priority(job: Callable[..., Result], *args: Any, **kwargs: Any) -> Result:
    """`job(*args, **kwargs)` in a thread of its own whose scheduling priority is `job_niceness()` below the
    caller's: its result, or its exception raised here.

    Why: QGIS draws the map in a pool of threads of its own process. A job's torch (OpenMP) and GDAL threads
    holding every core made each redraw wait for them: on 2 cores QGIS drew a region of a large GeoTIFF 1.44-1.76x
    as slowly beside two BSDM trainings as alone (median 1.56 over five runs); with the trainings 10 below,
    0.63-1.20x (median 0.97) (bench/responsiveness.py). Threads at a lower priority yield to QGIS's whenever
    those run and lose nothing while QGIS is idle (the trainings' speed then was the same either way, within
    the machine's run-to-run noise). The threads torch and GDAL start from the job's thread inherit its
    priority.

    Why a new thread: a thread cannot raise its priority again once lowered (without privileges), and the
    caller's is one of QGIS's pooled threads, which later draw the map or run other tasks. Linux's
    setpriority lowers one thread given its id; macOS and Windows have no such call that the job's
    OpenMP threads would inherit, so there the job runs in the caller's thread as it is.

    The job's thread is named "rslab-job" (`top -H` shows it), and so are the threads it starts. One kind of them
    outlives it: GDAL's process-wide pool of compression threads, when a job is the first to use it, stays at the
    job's priority; QGIS draws the map without it.
    """
    niceness = job_niceness()
    if niceness <= 0:
        return job(*args, **kwargs)
    outcome: Dict[str, Any] = {}

    def run() -> None:
        me = threading.get_native_id()
        try:  # relative to the priority this thread was started with (its caller's)
            os.setpriority(os.PRIO_PROCESS, me, min(19, os.getpriority(os.PRIO_PROCESS, me) + niceness))
        except OSError:  # a sandbox forbidding it: run at the caller's priority
            pass
        _name_thread(JOB_THREAD_NAME)
        try:
            outcome["result"] = job(*args, **kwargs)
        except BaseException as exc:  # noqa: B036 (handed to the caller, who raises it)
            outcome["error"] = exc

    worker = threading.Thread(target=run, name=JOB_THREAD_NAME.decode(), daemon=True)
    worker.start()
    worker.join()
    if "error" in outcome:
        raise outcome.pop("error")  # popped: this frame, in the exception's traceback, does not hold it
    return outcome["result"]


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
