"""The RS Lab Processing provider (id `rslab`)."""
from __future__ import annotations

from qgis.core import QgsProcessingProvider
from qgis.PyQt.QtGui import QIcon

from .base import ICON
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
