"""Letting go of what QGIS 3.22 keeps after a Python algorithm raised.

QGIS 3.22's sip handler for an exception raised in processAlgorithm never releases its traceback, which
holds the frame of processAlgorithm, and that frame holds the frames that called it. On the GUI thread those
are the batch or model dialog's: its feedback stayed alive, and with it the progress task connected to the
feedback, so the task list kept "Batch Processing - …" for good, and File > Exit asked about that task and,
told to quit anyway, left QGIS open. The frames cannot be let go of while they run; they are cleared (their
local variables dropped) as soon as they have returned, from the GUI thread's event loop.
"""
from __future__ import annotations

import inspect
from types import FrameType
from typing import List, Optional

from qgis.PyQt.QtCore import QCoreApplication, QObject, QTimer, pyqtSignal, pyqtSlot

POLL_MS = 200  # How often the frames still running are looked at again.

_SUSPENDED = inspect.CO_GENERATOR | inspect.CO_COROUTINE | inspect.CO_ASYNC_GENERATOR


def clear_returned(frame: Optional[FrameType]) -> Optional[FrameType]:
    """Clear `frame` and its callers, up to the first that still runs, which is returned (None when all were
    cleared). A generator's or coroutine's frame is left alone (clearing it closes it), and so are its callers."""
    while frame is not None:
        if frame.f_code.co_flags & _SUSPENDED:
            return None
        try:
            frame.clear()
        except RuntimeError:  # Still running: it and its callers are cleared once they have returned.
            return frame
        # Reading f_locals (RSLabProvider.gui_thread_runs does) left a copy of the locals on the frame, which
        # clear() keeps; reading it again after clear() empties it.
        frame.f_locals  # noqa: B018
        frame = frame.f_back
    return None


class _FrameClearer(QObject):
    """Lives on the GUI thread; a run in another thread hands its frame over by a queued signal."""

    raised = pyqtSignal(object)

    def __init__(self) -> None:
        super().__init__()
        self.pending: List[FrameType] = []
        self.timer = QTimer(self)
        self.timer.setInterval(POLL_MS)
        self.timer.timeout.connect(self._clear)
        self.raised.connect(self._add)

    @pyqtSlot(object)
    def _add(self, frame: FrameType) -> None:
        self.pending.append(frame)
        self.timer.start()

    def _clear(self) -> None:
        running = {id(frame): frame for frame in map(clear_returned, self.pending) if frame is not None}
        self.pending = list(running.values())  # Runs from one caller wait on one frame, listed once.
        if not self.pending:
            self.timer.stop()


_CLEARER: Optional[_FrameClearer] = None


def clear_when_returned(frame: FrameType) -> None:
    """Clear `frame` (an algorithm's processAlgorithm that is raising) and the frames that called it, once each
    has returned. Without a Qt application (no event loop to wait in) nothing is done."""
    global _CLEARER
    application = QCoreApplication.instance()
    if application is None:
        return
    if _CLEARER is None:
        _CLEARER = _FrameClearer()
        _CLEARER.moveToThread(application.thread())
    _CLEARER.raised.emit(frame)
