"""Helpers for the dock tests: rasters added to the QGIS project (the `project` fixture in
conftest.py clears it around each test), a Run click that waits for the job, the layer groups."""
from __future__ import annotations

from qgis.core import QgsRasterLayer
from qgis.PyQt.QtCore import Qt

RUN_TIMEOUT_MS = 120_000


def add_raster(project, path, name: str) -> QgsRasterLayer:
    layer = QgsRasterLayer(str(path), name)
    assert layer.isValid(), path
    project.addMapLayer(layer)
    return layer


def click_run(qtbot, dock):
    """Click the dock's Run button and wait for its job; returns runFinished's (result, error)."""
    with qtbot.waitSignal(dock.runFinished, timeout=RUN_TIMEOUT_MS) as done:
        qtbot.mouseClick(dock.run_button, Qt.LeftButton)
    return done.args


def group_names(project):
    return [n.name() for n in project.layerTreeRoot().findGroups()]
