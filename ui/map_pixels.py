"""Between the map and a raster file's pixels: which file pixel lies under a map point, and where a pixel lies.

The anomaly dock shows the spectrum of the pixel clicked and takes the map to
an anomaly's pixel; both go through here, so a click and a go-to agree on
where each pixel is, whatever the image's georeferencing or the map's CRS.
"""
from __future__ import annotations

from typing import Optional, Tuple

from qgis.core import QgsCoordinateTransform, QgsCsException, QgsPointXY, QgsProject, QgsRasterLayer, QgsRectangle
from qgis.gui import QgsMapCanvas, QgsMapToolEmitPoint
from qgis.PyQt import sip

from ..core.errors import RSLabError
from ..core.raster_io import centres_of, pixel_of, raster_info
from .job_dock import layer_file


def pixel_at(layer: QgsRasterLayer, point: QgsPointXY) -> Optional[Tuple[int, int]]:
    """(row, col) of the file pixel under `point` (in the layer's CRS), or None outside the image.

    A georeferenced file is placed by its own geotransform (or control points):
    QGIS shows a rotated or south-up image through a north-up warped view of
    another size, whose rows and columns are not the file's (a click on a
    south-up image read the mirrored pixel; on a rotated one, a pixel past the
    file's edge). Images without georeferencing, which QGIS places at y = -row,
    use the extent and size QGIS shows them with.
    """
    path = layer_file(layer, "hyperspectral")
    if raster_info(path).georeferenced:
        return pixel_of(path, point.x(), point.y())
    extent = layer.extent()
    if not extent.contains(point) or layer.width() < 1 or layer.height() < 1:
        return None
    col = int((point.x() - extent.xMinimum()) / extent.width() * layer.width())
    row = int((extent.yMaximum() - point.y()) / extent.height() * layer.height())
    return min(row, layer.height() - 1), min(col, layer.width() - 1)


def pixel_rectangle(layer: QgsRasterLayer, row: int, col: int) -> QgsRectangle:
    """The file pixel (row, col) as a rectangle in the layer's CRS, placed as `pixel_at` reads clicks (the
    other way): by the file's georeferencing, else by the extent QGIS shows the image with."""
    path = layer_file(layer, "hyperspectral")
    width, height = layer.rasterUnitsPerPixelX(), layer.rasterUnitsPerPixelY()
    centres = centres_of(path, [(row, col)])
    if centres is not None:
        x, y = centres[0]
    else:
        extent = layer.extent()
        x = extent.xMinimum() + (col + 0.5) * width
        y = extent.yMaximum() - (row + 0.5) * height
    return QgsRectangle(x - width / 2, y - height / 2, x + width / 2, y + height / 2)


def canvas_transform(canvas: Optional[QgsMapCanvas], layer: QgsRasterLayer) -> Optional[QgsCoordinateTransform]:
    """Map canvas CRS -> the layer's CRS; None when no change is needed (no canvas, either CRS unset, the
    same CRS)."""
    if canvas is None:
        return None
    canvas_crs = canvas.mapSettings().destinationCrs()
    if not canvas_crs.isValid() or not layer.crs().isValid() or canvas_crs == layer.crs():
        return None
    return QgsCoordinateTransform(canvas_crs, layer.crs(), QgsProject.instance())


def canvas_to_layer(canvas: Optional[QgsMapCanvas], point: QgsPointXY, layer: QgsRasterLayer) -> QgsPointXY:
    """`point` from the map canvas CRS into the layer's CRS."""
    transform = canvas_transform(canvas, layer)
    try:
        return transform.transform(point) if transform is not None else point
    except QgsCsException as exc:
        raise RSLabError(f"that point cannot be placed in the CRS of {layer.name()}: {exc}") from exc


def layer_to_canvas(canvas: Optional[QgsMapCanvas], rectangle: QgsRectangle, layer: QgsRasterLayer) -> QgsRectangle:
    """`rectangle` from the layer's CRS into the map canvas CRS (its bounding box there)."""
    transform = canvas_transform(canvas, layer)
    try:
        return (transform.transformBoundingBox(rectangle, QgsCoordinateTransform.ReverseTransform)
                if transform is not None else QgsRectangle(rectangle))
    except QgsCsException as exc:
        raise RSLabError(f"that pixel of {layer.name()} cannot be placed in the map's CRS: {exc}") from exc


def release_map_tool(canvas: QgsMapCanvas, tool: QgsMapToolEmitPoint) -> None:
    """Take a dock's pick tool off the canvas and delete it (the dock is gone); for `destroyed` signals."""
    if sip.isdeleted(canvas) or sip.isdeleted(tool):
        return
    if canvas.mapTool() is tool:
        canvas.unsetMapTool(tool)
    tool.deleteLater()
