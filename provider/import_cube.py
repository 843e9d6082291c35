"""rslab:import_cube: a MATLAB .mat hyperspectral cube (and ground truth) to GeoTIFFs."""
from __future__ import annotations

from typing import Any, Dict, Optional, Tuple

from qgis.core import (
    QgsMapLayer,
    QgsProcessingContext,
    QgsProcessingFeedback,
    QgsProcessingLayerPostProcessorInterface,
    QgsProcessingParameterFile,
    QgsProcessingParameterRasterDestination,
    QgsProcessingParameterString,
)

from ..core.bands import true_colour_bands
from ..core.import_cube import ImportCubeParams, import_cube
from ..ui.layers import GROUND_TRUTH_STYLE, show_true_colour
from .base import RSLabAlgorithm, feedback_callbacks


class TrueColour(QgsProcessingLayerPostProcessorInterface):
    """Draws the loaded cube from its (red, green, blue) bands (ui.layers.show_true_colour)."""

    def __init__(self, bands: Tuple[int, int, int]) -> None:
        super().__init__()
        self.bands = bands

    def postProcessLayer(self, layer: QgsMapLayer, context: QgsProcessingContext,  # noqa: N802 (Qt API)
                         feedback: QgsProcessingFeedback) -> None:
        if layer is not None and layer.isValid():
            show_true_colour(layer, self.bands)
            feedback.pushInfo(f"drawn in true colour from bands {', '.join(map(str, self.bands))} "
                              "(nearest 640, 550, 470 nm)")


class ImportCubeAlgorithm(RSLabAlgorithm):
    GROUP = "Data"
    GROUP_ID = "data"

    INPUT = "INPUT"
    CUBE_KEY = "CUBE_KEY"
    GT_KEY = "GT_KEY"
    OUTPUT_CUBE = "OUTPUT_CUBE"
    OUTPUT_GT = "OUTPUT_GT"

    def name(self) -> str:
        return "import_cube"

    def displayName(self) -> str:  # noqa: N802
        return "Import MATLAB hyperspectral cube"

    def shortHelpString(self) -> str:  # noqa: N802
        return (
            "Converts a MATLAB .mat file holding a hyperspectral cube (an H x W x B array) and, "
            "optionally, an H x W ground-truth map into GeoTIFFs. Band count and dtype are kept; "
            "NaN pixels of float cubes become nodata. The hyperspectral anomaly benchmarks "
            "(ABU, HYDICE) ship this way.\n\n"
            "A wavelength vector beside the cube ('wavelengths', 'wavelength', or MUUFL's 'wavlength') becomes "
            "each band's wavelength "
            "metadata, and the cube then loads in true colour (the bands nearest 640, 550 and 470 nm).\n\n"
            "CUBE_KEY: name of the cube variable (default 'data'; a file without 'data' is read "
            "from its only 3-D array, if it has just one).\n"
            "GT_KEY: name of the ground-truth variable (default 'map'); only read when "
            "OUTPUT_GT is set."
        )

    def initAlgorithm(self, config: Optional[Dict[str, Any]] = None) -> None:  # noqa: N802
        self.addParameter(QgsProcessingParameterFile(self.INPUT, "MATLAB file", extension="mat"))
        self.addParameter(QgsProcessingParameterString(self.CUBE_KEY, "Cube variable", defaultValue="data"))
        self.addParameter(QgsProcessingParameterString(self.GT_KEY, "Ground-truth variable", defaultValue="map", optional=True))
        self.addParameter(QgsProcessingParameterRasterDestination(self.OUTPUT_CUBE, "Cube"))
        self.addParameter(
            QgsProcessingParameterRasterDestination(self.OUTPUT_GT, "Ground truth", optional=True, createByDefault=False)
        )

    def execute(self, parameters: Dict[str, Any], context: QgsProcessingContext,
                feedback: QgsProcessingFeedback) -> Dict[str, Any]:
        source = self.parameterAsFile(parameters, self.INPUT, context)
        params = ImportCubeParams(
            cube_key=self.parameterAsString(parameters, self.CUBE_KEY, context),
            gt_key=self.parameterAsString(parameters, self.GT_KEY, context) or "",
        )
        cube_path = self.output_layer_path(parameters, self.OUTPUT_CUBE, context)
        gt_path = self.output_layer_path(parameters, self.OUTPUT_GT, context) or None
        progress, cancelled = feedback_callbacks(feedback)
        result = self.run_engine(import_cube, source, cube_path, gt_path, params, progress, cancelled)
        feedback.pushInfo(
            f"{result.height} x {result.width} x {result.bands} {result.dtype} cube written"
            + (f"; {result.note}" if result.note else "")
        )
        outputs = {self.OUTPUT_CUBE: result.cube_path}
        bands = true_colour_bands(result.cube_path)  # None without band wavelengths
        if bands:
            self.post_process_output(context, result.cube_path, TrueColour(bands))
        if result.gt_path:
            outputs[self.OUTPUT_GT] = result.gt_path
            self.style_output(context, result.gt_path, GROUND_TRUTH_STYLE)
        return outputs
