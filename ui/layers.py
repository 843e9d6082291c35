"""Reading project layers' files, and loading job outputs as styled layers (main thread only)."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Tuple

from qgis.core import (
    QgsColorRampShader,
    QgsContrastEnhancement,
    QgsCoordinateReferenceSystem,
    QgsCoordinateTransform,
    QgsCsException,
    QgsMapLayer,
    QgsMultiBandColorRenderer,
    QgsPointXY,
    QgsProject,
    QgsProviderRegistry,
    QgsRasterLayer,
    QgsRasterMinMaxOrigin,
    QgsRectangle,
    QgsSingleBandPseudoColorRenderer,
    QgsVectorLayer,
)

from ..core.errors import RSLabError
from ..core.raster_io import ASSIGN_CRS_HOW
from ..core.resources import STYLE_DIR

# the QML styles in resources/styles each output is drawn with, by the docks and by Processing alike
CHANGE_STYLE, PROBABILITY_STYLE, UNCERTAINTY_STYLE = "change_mask.qml", "probability.qml", "uncertainty.qml"
SCORES_STYLE, MASK_STYLE, PEAKS_STYLE = "anomaly_scores.qml", "anomaly_mask.qml", "anomaly_peaks.qml"
GROUND_TRUTH_STYLE = "binary_mask.qml"
# pixels QGIS samples for a cumulative cut (its "estimated" accuracy); on a raster with overviews QGIS 3.22
# takes the cut from its smallest overview instead (a few hundred pixels on a long, narrow output)
STRETCH_SAMPLE = 250_000


@dataclass(frozen=True)
class LayerSpec:
    """An output file to show: its layer name and the QML style from resources/styles."""

    path: str
    name: str
    style: Optional[str] = None
    kind: str = "raster"  # or "vector"
    opacity: Optional[float] = None


def layer_file(layer: Optional[QgsMapLayer], role: str) -> str:
    """The file behind a raster layer, or RSLabError saying why it cannot be used: the one check of the docks
    and the Processing algorithms (Processing once passed a raster inside a .zip, '/vsizip/…', on to the
    engine, which answered 'raster file not found')."""
    if layer is None:
        raise RSLabError(f"choose the {role} layer")
    if layer.type() != QgsMapLayer.RasterLayer:
        raise RSLabError(f"the {role} layer '{layer.name()}' is not a raster layer")
    # QGIS's own reading of the source: a file named 'a|b.tif' is that file (splitting at '|' for the
    # options QGIS may append lost it); a GeoPackage table or a file inside a .zip is no file GDAL opens alone
    parts = QgsProviderRegistry.instance().decodeUri(layer.providerType(), layer.source())
    path = parts.get("path") or ""
    inside = parts.get("layerName") or parts.get("vsiPrefix")
    if layer.providerType() != "gdal" or inside or not os.path.isfile(path):
        raise RSLabError(
            f"the {role} layer '{layer.name()}' is not a raster file on disk (provider {layer.providerType()}); "
            "save it as a GeoTIFF first (right-click > Export > Save As…) and pick that layer"
        )
    file_crs = layer.dataProvider().crs()
    if file_crs.isValid() and not same_place(file_crs, layer.crs(), layer.dataProvider().extent()):
        # the engine reads the file: results would be placed by the file's CRS, hundreds of km from the layer
        raise RSLabError(
            f"the {role} layer '{layer.name()}' is shown in {crs_label(layer.crs())} set in QGIS, but its file "
            f"says {crs_label(file_crs)}: write the CRS into the file ({ASSIGN_CRS_HOW}), then add it again")
    return path


def crs_label(crs: QgsCoordinateReferenceSystem) -> str:
    """'EPSG:32616', else the CRS's name, else its PROJ string (a custom CRS read 'unknown', or nothing)."""
    if not crs.isValid():
        return "no CRS"
    return crs.authid() or (crs.description() if crs.description() not in ("", "unknown") else "") or crs.toProj()


def same_place(a: QgsCoordinateReferenceSystem, b: QgsCoordinateReferenceSystem, extent: QgsRectangle) -> bool:
    """Whether CRSs `a` and `b` put the corners and centre of `extent` (in `a`) at the same coordinates: one CRS
    written two ways (a project of an older QGIS keeps a custom CRS as a PROJ string, the file as WKT: unequal
    as objects) is the same place; a CRS set on a layer instead of its file's is not."""
    if a == b:
        return True
    if not b.isValid():
        return False
    points = [QgsPointXY(x, y) for x in (extent.xMinimum(), extent.xMaximum()) for y in (extent.yMinimum(),
                                                                                         extent.yMaximum())]
    points.append(extent.center())
    transform = QgsCoordinateTransform(a, b, QgsProject.instance().transformContext())
    tolerance = 1e-6 * max(extent.width(), extent.height(), 1.0)
    try:
        return all(transform.transform(p).distance(p) <= tolerance for p in points)
    except QgsCsException:
        return False


def style_path(style: str) -> Path:
    path = STYLE_DIR / style
    if not path.is_file():
        raise RSLabError(f"style {style} is missing from resources/styles")
    return path


def make_layer(spec: LayerSpec) -> QgsMapLayer:
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


def fit_score_stretch(layer: QgsRasterLayer) -> Optional[Tuple[float, float]]:
    """Refit a loaded anomaly_scores.qml colour ramp to this layer's cumulative cut; return (min, max).

    The cut fractions come from the style's min/max settings, so the QML
    stays the one place that says how scores are stretched. The ramp's
    entries (colours, transparency) are moved linearly from the style's range
    onto the layer's. Returns None when the layer has another renderer or no
    spread of values.
    """
    renderer = layer.renderer()
    if not isinstance(renderer, QgsSingleBandPseudoColorRenderer) or renderer.shader() is None:
        return None
    origin = renderer.minMaxOrigin()
    lo, hi = layer.dataProvider().cumulativeCut(renderer.band(), origin.cumulativeCutLower(),
                                                origin.cumulativeCutUpper(), layer.extent(), STRETCH_SAMPLE)
    if not hi > lo:
        return None
    shader = renderer.shader().rasterShaderFunction()
    old_lo, old_hi = shader.minimumValue(), shader.maximumValue()
    span = (old_hi - old_lo) or 1.0
    items = []
    for item in shader.colorRampItemList():
        value = lo + (item.value - old_lo) / span * (hi - lo)
        items.append(QgsColorRampShader.ColorRampItem(value, item.color, f"{value:.4g}"))
    shader.setColorRampItemList(items)
    shader.setMinimumValue(lo)
    shader.setMaximumValue(hi)
    renderer.setClassificationMin(lo)
    renderer.setClassificationMax(hi)
    layer.triggerRepaint()
    return lo, hi


def show_true_colour(layer: QgsRasterLayer, bands: Tuple[int, int, int]) -> None:
    """Draw a multi- or hyperspectral layer from `bands` (red, green, blue; core.bands.true_colour_bands).

    QGIS draws any multiband raster from bands 1, 2, 3, which in a hyperspectral
    cube are three near-identical violet bands. The layer gets the bands nearest
    red, green and blue light and a 2-98 % cumulative-cut stretch.
    """
    layer.setRenderer(QgsMultiBandColorRenderer(layer.dataProvider(), *bands))
    layer.setContrastEnhancement(QgsContrastEnhancement.StretchToMinimumMaximum,
                                 QgsRasterMinMaxOrigin.CumulativeCut, layer.extent(), STRETCH_SAMPLE)
    layer.triggerRepaint()
