"""Adding test rasters to the QGIS project (the `project` fixture in conftest.py clears it around each test)."""
from __future__ import annotations

from qgis.core import QgsRasterLayer


def add_raster(project, path, name: str) -> QgsRasterLayer:
    layer = QgsRasterLayer(str(path), name)
    assert layer.isValid(), path
    project.addMapLayer(layer)
    return layer
