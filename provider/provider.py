"""The RS Lab Processing provider (id `rslab`)."""
from __future__ import annotations

import os
import sys
import time
from typing import List

from qgis.core import QgsApplication, QgsProcessingModelAlgorithm, QgsProcessingProvider
from qgis.gui import QgsProcessingAlgorithmDialogBase
from qgis.PyQt.QtCore import QCoreApplication, QTimer
from qgis.PyQt.QtGui import QIcon
from qgis.PyQt.QtWidgets import QApplication

from ..core.anomaly_peaks import PEAK_FORMATS
from .base import ICON, PROVIDER_ID, RUNNING
from .compress_model import CompressModelAlgorithm
from .detect_anomalies import DetectAnomaliesAlgorithm
from .detect_changes import DetectChangesAlgorithm
from .import_cube import ImportCubeAlgorithm
from .model_bops import ModelBopsAlgorithm
from .threshold_anomalies import ThresholdAnomaliesAlgorithm
from .train_change_detector import TrainChangeDetectorAlgorithm

PROCESSING_DIALOGS = os.path.join("processing", "gui", "")  # The Processing plugin's dialogs (runAlgorithm).

ALGORITHMS = (ImportCubeAlgorithm, DetectChangesAlgorithm, TrainChangeDetectorAlgorithm, DetectAnomaliesAlgorithm,
              ThresholdAnomaliesAlgorithm, ModelBopsAlgorithm, CompressModelAlgorithm)


class RSLabProvider(QgsProcessingProvider):
    def id(self) -> str:
        return PROVIDER_ID

    def name(self) -> str:
        return "RS Lab"

    def longName(self) -> str:  # noqa: N802
        return "RS Lab remote-sensing deep learning"

    def icon(self) -> QIcon:
        return QIcon(str(ICON))

    def supportedOutputRasterLayerExtensions(self) -> list:  # noqa: N802
        """GeoTIFF only: the engine writes GeoTIFFs (core/outputs.RASTER_SUFFIXES), so the file dialog offers no
        format whose name would not match the file's content."""
        return ["tif"]

    def supportedOutputVectorLayerExtensions(self) -> list:  # noqa: N802
        """The single-file formats the engine writes points in (the strongest anomalies)."""
        return [suffix.lstrip(".") for suffix in PEAK_FORMATS]

    def loadAlgorithms(self) -> None:  # noqa: N802
        for cls in ALGORITHMS:
            self.addAlgorithm(cls())

    def stop_running(self, timeout: float = 30.0) -> bool:
        """Before the provider is removed (the plugin unloaded or reloaded): cancel its algorithms running now,
        wait until the runs in other threads have ended and handed over their results, and close its algorithm
        dialogs.

        QGIS deletes a removed provider, but an algorithm dialog of the Processing toolbox keeps its copy of the
        algorithm, which points at the provider: when a run started there before the unload ended, the dialog
        asked the algorithm for its id and QGIS died (signal 11); so did Run clicked in a dialog left open.
        A run on the GUI thread (the batch dialog's, a model's) is below this call on the stack and cannot end
        before it returns: it is cancelled, not waited for (waiting stalled QGIS for `timeout` seconds), and its
        dialog stays until it has returned (see `retire`). False when a run in another thread still went on
        after `timeout` seconds."""
        manager = QgsApplication.taskManager()
        names = [algorithm.displayName() for algorithm in self.algorithms()]
        # The toolbox's tasks are described "Executing “<the algorithm's name>”"; the batch dialog's
        # "Batch Processing - <name>" is a progress proxy for its run on the GUI thread, which cannot be
        # cancelled through it.
        tasks = [manager.taskId(task) for task in manager.activeTasks()
                 if task.canCancel() and any(name in task.description() for name in names)]
        for task_id in tasks:
            task = manager.task(task_id)
            if task is not None:
                task.cancel()
        for dialog in self.dialogs():
            if dialog.cancelButton().isEnabled():  # A batch running: its own feedback stops the rows after this.
                dialog.cancelButton().click()
        for feedback in list(RUNNING):  # Runs of processing.run in a script's own thread or task, a model's.
            feedback.cancel()
        deadline = time.monotonic() + timeout
        # A task leaves the manager only after its `finished` (where the dialog takes the results) has run.
        while (self._threaded_runs() or any(manager.task(t) is not None for t in tasks)) \
                and time.monotonic() < deadline:
            QCoreApplication.processEvents()
            time.sleep(0.01)
        if not self.gui_thread_runs():
            self.close_dialogs()
        return not self._threaded_runs() and all(manager.task(t) is None for t in tasks)

    def dialogs(self) -> List[QgsProcessingAlgorithmDialogBase]:
        """The open Processing dialogs (single and batch) of this provider's algorithms and of models that run
        one: a model's output parameters keep the provider of the algorithm that writes them, and Run in a model
        dialog left open over an unload crashed QGIS."""
        found = []
        for widget in QApplication.topLevelWidgets():
            if not isinstance(widget, QgsProcessingAlgorithmDialogBase):
                continue
            algorithm = widget.algorithm()
            provider = algorithm.provider() if algorithm is not None else None
            if provider is not None and provider.id() == self.id():
                found.append(widget)
            elif isinstance(algorithm, QgsProcessingModelAlgorithm) and any(
                    child.algorithmId().startswith(self.id() + ":") for child in algorithm.childAlgorithms().values()):
                found.append(widget)
        return found

    def close_dialogs(self) -> None:
        for dialog in self.dialogs():
            dialog.close()
            dialog.deleteLater()

    def gui_thread_runs(self) -> bool:
        """Whether one of its algorithms runs on the GUI thread now, or a run of one of its Processing dialogs on
        the GUI thread (a batch, a model) is below this call on the stack: called from the GUI thread, whose
        Python frames link back through the event loops that the run's progress reports process. Another
        algorithm's batch below the call does not count: nothing of this provider's is in it."""
        if any(RUNNING.values()):
            return True
        frame = sys._getframe(1)
        dialogs = None
        while frame is not None:
            code = frame.f_code
            if code.co_name == "runAlgorithm" and PROCESSING_DIALOGS in code.co_filename:
                dialogs = self.dialogs() if dialogs is None else dialogs
                if any(frame.f_locals.get("self") is dialog for dialog in dialogs):
                    return True
            frame = frame.f_back
        return False

    @staticmethod
    def _threaded_runs() -> bool:
        return not all(RUNNING.values())


def retire(provider: RSLabProvider, poll_ms: int = 200) -> bool:
    """Remove the provider from the registry (which deletes it) now, or, while a run on the GUI thread is still
    below the caller on the stack, as soon as that run has returned: deleting it under the run made its batch
    dialog call into a deleted algorithm. True when it was removed now."""
    if provider.gui_thread_runs():
        provider.retiring = True
        QTimer.singleShot(poll_ms, lambda: retire(provider, poll_ms))
        return False
    provider.close_dialogs()
    QgsApplication.processingRegistry().removeProvider(provider)
    return True


def register(provider: RSLabProvider, poll_ms: int = 200) -> None:
    """Add the provider to the registry; after a reload while the previous one waits to be retired (see
    `retire`), once that one has gone, since the registry refuses a second provider with the same id."""
    previous = QgsApplication.processingRegistry().providerById(provider.id())
    if previous is not None and getattr(previous, "retiring", False):
        QTimer.singleShot(poll_ms, lambda: register(provider, poll_ms))
    else:
        QgsApplication.processingRegistry().addProvider(provider)
