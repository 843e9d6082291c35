"""Adding job outputs to the project as styled layers (main thread only)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, List, Optional

from qgis.core import QgsLayerTreeGroup, QgsProject, QgsRasterLayer, QgsVectorLayer

from ..core.errors import RSLabError

STYLE_DIR = Path(__file__).resolve().parent.parent / "resources" / "styles"


@dataclass(frozen=True)
class LayerSpec:
    """An output file to show: its layer name and the QML style from resources/styles."""

    path: str
    name: str
    style: Optional[str] = None
    kind: str = "raster"  # or "vector"
    opacity: Optional[float] = None


def style_path(style: str) -> Path:
    path = STYLE_DIR / style
    if not path.is_file():
        raise RSLabError(f"style {style} is missing from resources/styles")
    return path


def make_layer(spec: LayerSpec):
    """Load `spec.path` as a layer and apply its style; RSLabError if QGIS cannot read it."""
    layer = QgsRasterLayer(spec.path, spec.name) if spec.kind == "raster" else QgsVectorLayer(spec.path, spec.name, "ogr")
    if not layer.isValid():
        raise RSLabError(f"QGIS could not open the output {spec.path}")
    if spec.style:
        message, ok = layer.loadNamedStyle(str(style_path(spec.style)))
        if not ok:
            raise RSLabError(f"could not apply style {spec.style}: {message}")
    if spec.opacity is not None and spec.kind == "raster":
        layer.renderer().setOpacity(spec.opacity)
    return layer


def add_layers(
    specs: Iterable[LayerSpec],
    group_name: Optional[str] = None,
    project: Optional[QgsProject] = None,
) -> List:
    """Add layers (first spec on top), optionally inside a new group at the top of the layer tree."""
    project = project or QgsProject.instance()
    layers = [make_layer(spec) for spec in specs]
    root = project.layerTreeRoot()
    group: Optional[QgsLayerTreeGroup] = root.insertGroup(0, group_name) if group_name else None
    for layer in layers:
        project.addMapLayer(layer, addToLegend=group is None)
        if group is not None:
            group.addLayer(layer)
    return layers
