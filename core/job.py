"""The job contract shared by every long-running function in core.

A job is a plain function::

    result = job(inputs..., params, progress=None, cancelled=None)

`progress(fraction, message)` and `cancelled() -> bool` are optional
callables: a QgsTask passes `setProgress`/`isCanceled`, a Processing
algorithm passes its feedback, a test passes nothing. `JobMonitor` wraps the
two so job code can say `monitor.step(0.3, "reading")` and
`monitor.check()` without testing for None everywhere, and hand a slice of
its progress range to a sub-step with `monitor.sub(start, end)`.
"""
from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Optional, TypeVar

from .errors import JobCancelled

ProgressFn = Callable[[float, str], None]
CancelledFn = Callable[[], bool]
T = TypeVar("T")


class JobMonitor:
    """Progress reporting and cancellation checks for one job (or a slice of it)."""

    def __init__(
        self,
        progress: Optional[ProgressFn] = None,
        cancelled: Optional[CancelledFn] = None,
        start: float = 0.0,
        end: float = 1.0,
    ) -> None:
        self._progress = progress
        self._cancelled = cancelled
        self._start = start
        self._end = end
        self.timings: Dict[str, float] = {}

    def step(self, fraction: float, message: str = "") -> None:
        """Report `fraction` (0..1 of this monitor's range) and check for cancel."""
        self.check()
        if self._progress is not None:
            fraction = min(max(fraction, 0.0), 1.0)
            self._progress(self._start + fraction * (self._end - self._start), message)

    def done(self, message: str = "") -> None:
        """Report the end of this monitor's range without checking for cancel.

        For a job's last report, after its outputs are renamed into place: a cancel
        arriving then can no longer undo them, so it must not fail a finished job
        (whose caller would then say nothing was written, and leave the files).
        """
        if self._progress is not None:
            self._progress(self._end, message)

    def check(self) -> None:
        """Raise JobCancelled if the caller asked to stop."""
        if self._cancelled is not None and self._cancelled():
            raise JobCancelled()

    def wait_for(self, work: Callable[[], T], poll: float = 0.1) -> T:
        """`work()`, run in a helper thread while this monitor looks for a cancel every `poll` seconds.

        For a step that cannot look for one itself: torch's first optimiser imports
        torch._dynamo (1.5-2.5 s on 2 cores), and a Cancel pressed then waited for it
        (3 s in QGIS). After a cancel the helper finishes on its own and its result is
        dropped; an exception in `work` is raised here.
        """
        outcome: Dict[str, Any] = {}

        def run() -> None:
            try:
                outcome["value"] = work()
            except BaseException as exc:  # Raised in the waiting thread.
                outcome["error"] = exc

        helper = threading.Thread(target=run, name="rslab-wait-for", daemon=True)
        helper.start()
        while helper.is_alive():
            self.check()
            helper.join(poll)
        self.check()
        if "error" in outcome:
            raise outcome["error"]
        return outcome["value"]

    def sub(self, start: float, end: float) -> "JobMonitor":
        """A monitor whose 0..1 maps onto [start, end] of this one's range."""
        span = self._end - self._start
        child = JobMonitor(
            self._progress,
            self._cancelled,
            self._start + start * span,
            self._start + end * span,
        )
        child.timings = self.timings
        return child

    def timed(self, name: str) -> "_Timer":
        """Context manager that adds the elapsed seconds to `timings[name]`."""
        return _Timer(self.timings, name)


class _Timer:
    def __init__(self, timings: Dict[str, float], name: str) -> None:
        self._timings = timings
        self._name = name
        self._t0 = 0.0

    def __enter__(self) -> "_Timer":
        self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        elapsed = time.perf_counter() - self._t0
        self._timings[self._name] = self._timings.get(self._name, 0.0) + elapsed


@dataclass
class JobResult:
    """Fields every job result carries: which device ran it, how long it took, and the files it read (absolute
    paths, so a saved report can be traced back to its inputs)."""

    device: str = "cpu"
    timings: Dict[str, float] = field(default_factory=dict)
    inputs: Dict[str, Optional[str]] = field(default_factory=dict)


def absolute_paths(paths: Dict[str, Optional[str]]) -> Dict[str, Optional[str]]:
    """`paths` with each given path made absolute (~ expanded); None stays None. For job reports."""
    return {name: os.path.abspath(os.path.expanduser(path)) if path else None for name, path in paths.items()}
