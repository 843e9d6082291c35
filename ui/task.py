"""Running any core job as a QgsTask: progress bar, cancel, and layers added on the main thread.

The worker thread only calls the core job (which reads and writes files);
it never touches QgsProject, layers or widgets. `finished()` runs on the main
thread: that is where output layers are added, styled, and the caller's
callback is invoked.
"""
from __future__ import annotations

import traceback
from typing import Any, Callable, List, Optional, Set

from qgis.core import QgsApplication, QgsMessageLog, Qgis, QgsTask
from qgis.PyQt import sip
from qgis.PyQt.QtCore import pyqtSignal

from ..core.dependencies import missing_package_message
from ..core.errors import JobCancelled, RSLabError
from .layers import LayerSpec, add_layers

CANCELLED = "cancelled; no output was written"  # a JobTask's error when its job was cancelled

Job = Callable[[Callable[[float, str], None], Callable[[], bool]], Any]

# QgsTaskManager does not keep the Python wrapper alive; we do, until finished().
_RUNNING: Set["JobTask"] = set()


class JobTask(QgsTask):
    """A core job in the background. `job(progress, cancelled)` returns the job's result."""

    message = pyqtSignal(str)  # emitted from the worker thread, delivered queued to the GUI
    jobFinished = pyqtSignal(object, str)  # result (None on failure), error text ("" on success)

    def __init__(
        self,
        description: str,
        job: Job,
        layers: Optional[Callable[[Any], List[LayerSpec]]] = None,
        group_name: Optional[str] = None,
        on_finished: Optional[Callable[[Any, str], None]] = None,
    ) -> None:
        super().__init__(description, QgsTask.CanCancel)
        self._job = job
        self._layers = layers
        self._group_name = group_name
        self._on_finished = on_finished
        self.result: Any = None
        self.error = ""
        self.added_layers: List = []
        self.superseded = False  # cancelled by its owner for a newer run: not worth a line in the log

    def supersede(self) -> None:
        """Cancel a run whose result nobody wants any more (a read for a checkpoint no longer chosen), quietly:
        a user who cancelled nothing read 'reading x.pt: cancelled; no output was written' among the warnings."""
        self.superseded = True
        self.cancel()

    def _progress(self, fraction: float, text: str) -> None:
        self.setProgress(100.0 * fraction)
        if text:
            self.message.emit(text)

    def run(self) -> bool:  # worker thread
        try:
            self.result = self._job(self._progress, self.isCanceled)
            return True
        except JobCancelled:
            self.error = CANCELLED
        except RSLabError as exc:
            self.error = str(exc)
        except Exception as exc:  # a bug: keep the traceback for the log; a package not installed yet: say so
            message = missing_package_message(exc) if isinstance(exc, ImportError) else None
            self.error = message or "unexpected error:\n" + traceback.format_exc()
        return False

    def finished(self, ok: bool) -> None:  # main thread
        _RUNNING.discard(self)
        if ok and self._layers is not None:
            try:
                self.added_layers = add_layers(self._layers(self.result), self._group_name)
            except RSLabError as exc:
                ok, self.error = False, str(exc)
        if not ok:
            if not self.error:
                self.error = CANCELLED
            if not (self.superseded and self.error == CANCELLED):
                QgsMessageLog.logMessage(f"{self.description()}: {self.error}", "RS Lab", Qgis.Warning)
        if self._on_finished is not None:
            self._on_finished(self.result if ok else None, "" if ok else self.error)
        self.jobFinished.emit(self.result if ok else None, "" if ok else self.error)


def stopped_text(reason: str, cancelled: bool, failed: str = "Failed") -> str:
    """The status line of a job that stopped: the reason capitalised when it was cancelled ("Cancelled; no output
    was written"), else '<failed>: <reason>'."""
    return reason[:1].upper() + reason[1:] if cancelled else f"{failed}: {reason}"


def start(task: JobTask) -> JobTask:
    """Hand `task` to QGIS's task manager (and keep it alive until it finishes)."""
    _RUNNING.add(task)
    QgsApplication.taskManager().addTask(task)
    return task


def cancel_if_alive(task: QgsTask) -> None:
    """Cancel `task` unless QGIS has already deleted it (it finished); for `destroyed` signals."""
    if not sip.isdeleted(task):
        task.cancel()
