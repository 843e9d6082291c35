"""Running any core job as a QgsTask: progress, cancel, and the result handed back on the main thread.

The worker thread only calls the core job (which reads and writes files);
it never touches QgsProject, layers or widgets. `finished()` runs on the main
thread: that is where the caller's callback is invoked and `jobFinished`
emitted (the docks add their output layers there, `ui/job_dock.JobDock`).
"""
from __future__ import annotations

import traceback
from functools import partial
from typing import Any, Callable, Optional, Set

from qgis.core import QgsApplication, QgsMessageLog, Qgis, QgsTask
from qgis.PyQt import sip
from qgis.PyQt.QtCore import QThreadPool, QTimer, pyqtSignal

from ..core.dependencies import missing_package_message
from ..core.device import run_at_job_priority
from ..core.errors import CANCELLED_MESSAGE, JobCancelled, RSLabError

CANCELLED = CANCELLED_MESSAGE  # a JobTask's error when its job was cancelled
UNEXPECTED = "unexpected error"  # how a JobTask's error starts when the job raised a bug (traceback follows)
ERROR_STYLE = "color: #b00020;"  # a status line saying why something failed
INFO_STYLE = "color: #555;"  # a line describing the chosen checkpoint

Job = Callable[[Callable[[float, str], None], Callable[[], bool]], Any]

# QgsTaskManager does not keep the Python wrapper alive; we do, until finished().
_RUNNING: Set["JobTask"] = set()


class JobTask(QgsTask):
    """A core job in the background. `job(progress, cancelled)` returns the job's result."""

    message = pyqtSignal(str)  # emitted from the worker thread, delivered queued to the GUI
    jobFinished = pyqtSignal(object, str)  # result (None on failure), error text ("" on success)
    cancelling = pyqtSignal()  # cancel() called: by the owner, or by the user in QGIS's task manager

    def __init__(
        self,
        description: str,
        job: Job,
        on_finished: Optional[Callable[[Any, str], None]] = None,
    ) -> None:
        super().__init__(description, QgsTask.CanCancel)
        self.title = description  # the description as given: cancel() adds to QGIS's copy
        self._job = job
        self._on_finished = on_finished
        self.result: Any = None
        self.error = ""
        self.superseded = False  # cancelled by its owner for a newer run: not worth a line in the log

    def cancel(self) -> None:
        """Cancel, and say so in the description: QGIS 3.22 itself announces any task that ends unsuccessfully after
        more than 5 s as "Task failed: <description>" in its message bar (3.22 has no flag to keep a task quiet),
        which read as an error after a cancel the user asked for."""
        if not self.isCanceled():
            self.setDescription(f"{self.title}: {CANCELLED}")
            self.cancelling.emit()
        super().cancel()

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
            # below QGIS's priority, in a thread of its own: QGIS draws the map in this pool's threads
            self.result = run_at_job_priority(self._job, self._progress, self.isCanceled)
            return True
        except JobCancelled:
            self.error = CANCELLED
        except RSLabError as exc:
            # Refused after a cancel, the refusal is its echo: after an unload the job's later imports load fresh
            # copies of the plugin's modules, whose classes the job's objects are not instances of.
            self.error = CANCELLED if self.isCanceled() else str(exc)
        except Exception as exc:  # a bug: keep the traceback for the log; a package not installed yet: say so
            message = missing_package_message(exc) if isinstance(exc, ImportError) else None
            self.error = message or f"{UNEXPECTED}:\n" + traceback.format_exc()
        return False

    def finished(self, ok: bool) -> None:  # main thread
        _RUNNING.discard(self)
        if not ok:
            if not self.error:
                self.error = CANCELLED
            if not (self.superseded and self.error == CANCELLED):
                QgsMessageLog.logMessage(f"{self.title}: {self.error}", "RS Lab", Qgis.Warning)
        if self._on_finished is not None:
            self._on_finished(self.result if ok else None, "" if ok else self.error)
        self.jobFinished.emit(self.result if ok else None, "" if ok else self.error)


def was_cancelled(error: str) -> bool:
    """Whether a JobTask's error says it was cancelled (a stop the user asked for, not a failure)."""
    return error.startswith(CANCELLED.split(";")[0])


def failure_text(error: str) -> str:
    """A JobTask's error as a status line shows it: a bug's traceback (logged by JobTask) replaced by where to
    find it."""
    if error.startswith(UNEXPECTED):
        return f"{UNEXPECTED}; the traceback is in the Log Messages panel, tab RS Lab"
    return error or "unknown error"


def stopped_text(reason: str, cancelled: bool, failed: str = "Failed") -> str:
    """The status line of a job that stopped: the reason capitalised when it was cancelled ("Cancelled; no output
    was written"), else '<failed>: <reason>'."""
    return reason[:1].upper() + reason[1:] if cancelled else f"{failed}: {reason}"


WAIT_NOTICE_MS = 300  # a run not started this long after Run is waiting for a thread: the bar says so
WAITING = "Waiting for a free thread"  # the bar's text while a run is queued (a dock's bar is ~30 characters wide)


def waiting_reason() -> str:
    """Why a run waits, for the bar's tooltip: QGIS's task manager runs tasks in Qt's global thread pool, one per
    core, shared with map rendering, so a third job on two cores sat at 0 % as if hung."""
    threads = QThreadPool.globalInstance().maxThreadCount()
    return (f"QGIS runs {threads} background task{'s' if threads != 1 else ''} at a time (one per core) and all are "
            "busy; this run starts when one ends. The task list in QGIS's status bar shows them.")


def start(task: JobTask) -> JobTask:
    """Hand `task` to QGIS's task manager (and keep it alive until it finishes)."""
    _RUNNING.add(task)
    QgsApplication.taskManager().addTask(task)
    return task


def cancel_if_alive(task: QgsTask) -> None:
    """Cancel `task` unless QGIS has already deleted it (it finished); for `destroyed` signals."""
    if not sip.isdeleted(task):
        task.cancel()


class TaskOwner:
    """Mixin for a widget that runs one JobTask at a time (docks, the train and export dialogs): the task is
    cancelled when the widget is deleted (the plugin unloaded; closing the export dialog cancels through its own
    closeEvent, closing the train dialog leaves training running). The widget has `progress_bar` (a
    widgets.TimedProgressBar) and `_set_running(running)`."""

    task: Optional[JobTask] = None
    _cancel_on_destroy: Optional[Callable[[], None]] = None

    def _run_task(self, task: JobTask) -> None:
        self.task = task
        self._cancel_on_destroy = partial(cancel_if_alive, task)
        self.destroyed.connect(self._cancel_on_destroy)
        self._set_running(True)
        self.progress_bar.start()  # at 0 % from Run; its clock of the time left starts again when the job does
        task.begun.connect(self.progress_bar.start)
        start(task)
        QTimer.singleShot(WAIT_NOTICE_MS, partial(self._show_waiting, task))

    def _show_waiting(self, task: JobTask) -> None:
        """Say in the bar that `task` is queued, if it still is (its `begun` then restarts the bar)."""
        if not sip.isdeleted(self) and self.task is task and task.status() == QgsTask.Queued:
            self.progress_bar.wait(WAITING, waiting_reason())

    def _task_ended(self) -> bool:
        """First step of a task's callback: False when the widget is already deleted (nothing to update), else
        True with the widget idle again."""
        if sip.isdeleted(self):
            return False
        self.task = None
        self.destroyed.disconnect(self._cancel_on_destroy)
        self._cancel_on_destroy = None
        self._set_running(False)
        self.progress_bar.stop()
        return True
