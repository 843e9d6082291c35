"""The RS Lab Processing provider (id `rslab`)."""
from __future__ import annotations

import time

from qgis.core import QgsApplication, QgsProcessingProvider
from qgis.PyQt.QtCore import QCoreApplication
from qgis.PyQt.QtGui import QIcon
from qgis.PyQt.QtWidgets import QApplication

from .base import ICON, RUNNING
from .compress_model import CompressModelAlgorithm
from .detect_anomalies import DetectAnomaliesAlgorithm
from .detect_changes import DetectChangesAlgorithm
from .import_cube import ImportCubeAlgorithm
from .model_bops import ModelBopsAlgorithm
from .train_change_detector import TrainChangeDetectorAlgorithm

ALGORITHMS = (ImportCubeAlgorithm, DetectChangesAlgorithm, TrainChangeDetectorAlgorithm, DetectAnomaliesAlgorithm,
              ModelBopsAlgorithm, CompressModelAlgorithm)


class RSLabProvider(QgsProcessingProvider):
    def id(self) -> str:
        return "rslab"

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

    def loadAlgorithms(self) -> None:  # noqa: N802
        for cls in ALGORITHMS:
            self.addAlgorithm(cls())

    def stop_running(self, timeout: float = 30.0) -> bool:
        """Before the provider is removed (the plugin unloaded or reloaded): cancel its algorithms running now,
        wait until their tasks have ended and handed over their results, and close its algorithm dialogs.

        QGIS deletes a removed provider, but an algorithm dialog of the Processing toolbox keeps its copy of the
        algorithm, which points at the provider: when a run started there before the unload ended, the dialog
        asked the algorithm for its id and QGIS died (signal 11); so did Run clicked in a dialog left open.
        False when something still ran after `timeout` seconds."""
        manager = QgsApplication.taskManager()
        names = [algorithm.displayName() for algorithm in self.algorithms()]
        # The toolbox's tasks are described "Executing “<the algorithm's name>”".
        tasks = [manager.taskId(task) for task in manager.activeTasks()
                 if any(name in task.description() for name in names)]
        for task_id in tasks:
            task = manager.task(task_id)
            if task is not None:
                task.cancel()
        for feedback in list(RUNNING):  # Runs of processing.run in a script's own thread or task.
            feedback.cancel()
        deadline = time.monotonic() + timeout
        # A task leaves the manager only after its `finished` (where the dialog takes the results) has run.
        while (RUNNING or any(manager.task(t) is not None for t in tasks)) and time.monotonic() < deadline:
            QCoreApplication.processEvents()
            time.sleep(0.01)
        for widget in QApplication.topLevelWidgets():
            algorithm = getattr(widget, "algorithm", None)
            try:
                provider = algorithm().provider() if callable(algorithm) else None
            except (RuntimeError, TypeError):  # A widget whose algorithm() is something else.
                continue
            if provider is not None and provider.id() == self.id():
                widget.close()
                widget.deleteLater()
        return not RUNNING and all(manager.task(t) is None for t in tasks)
