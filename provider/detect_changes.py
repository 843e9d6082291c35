"""rslab:detect_changes: change map, probability and uncertainty between two raster layers."""
from __future__ import annotations

import json
from typing import Any, Dict, Optional

from qgis.core import (
    QgsProcessing,
    QgsProcessingContext,
    QgsProcessingFeedback,
    QgsProcessingParameterBand,
    QgsProcessingParameterEnum,
    QgsProcessingParameterFeatureSource,
    QgsProcessingParameterField,
    QgsProcessingParameterFileDestination,
    QgsProcessingParameterNumber,
    QgsProcessingParameterRasterDestination,
    QgsProcessingParameterRasterLayer,
)

from ..core.change_detection import METHOD_LABELS, METHODS, ChangeOutputs, ChangeParams, detect_changes
from ..core.change_reference import CODING_LABELS, CODINGS
from ..ui.layers import CHANGE_STYLE, PROBABILITY_STYLE, UNCERTAINTY_STYLE
from .base import RSLabAlgorithm, checkpoint_parameter, feedback_callbacks, method_options


class DetectChangesAlgorithm(RSLabAlgorithm):
    GROUP = "Change detection"
    GROUP_ID = "change"

    BEFORE = "BEFORE"
    AFTER = "AFTER"
    METHOD = "METHOD"
    BANDS = "BANDS"
    MODEL = "MODEL"
    THRESHOLD = "THRESHOLD"
    REFERENCE = "REFERENCE"
    REFERENCE_CODING = "REFERENCE_CODING"
    REFERENCE_POLYGONS = "REFERENCE_POLYGONS"
    REFERENCE_FIELD = "REFERENCE_FIELD"
    OUTPUT_CHANGE = "OUTPUT_CHANGE"
    OUTPUT_PROBABILITY = "OUTPUT_PROBABILITY"
    OUTPUT_UNCERTAINTY = "OUTPUT_UNCERTAINTY"
    OUTPUT_REPORT = "OUTPUT_REPORT"

    def name(self) -> str:
        return "detect_changes"

    def displayName(self) -> str:  # noqa: N802
        return "Detect changes (AR-CDNet / CVA)"

    def shortHelpString(self) -> str:  # noqa: N802
        return (
            "Detects changes between two images of the same place taken at different dates. "
            "Writes a change mask (1 changed, 0 unchanged, 255 nodata), the change probability and a per-pixel "
            "uncertainty (0..1: high where the map should not be trusted), on the BEFORE image's grid. "
            "An AFTER image on another grid or CRS is resampled onto it (the log says so).\n\n"
            "METHOD: arcdnet (AR-CDNet deep network, default weights unless MODEL is given) or cva "
            "(change vector analysis with an Otsu threshold, no model).\n"
            "BANDS: optional bands of both dates to use, in this order (all if empty), e.g. Sentinel-2's 10 m "
            "bands for CVA; a model needs the bands it was trained on (a model trained with BANDS names them in "
            "its error message).\n"
            "THRESHOLD: probability at or above which a pixel is changed (0.5, 0.01..0.99; for CVA 0.5 is Otsu's "
            "threshold).\n"
            "REFERENCE: optional change reference: the report then has precision, recall, F1, IoU, OA, kappa "
            "and the uncertainty's ROC-AUC for finding wrong pixels, over the reference's labelled pixels.\n"
            "REFERENCE_CODING: how the reference's values read: 0 binary (0 no change, non-zero change) or "
            "1 partial (0 not labelled, 1 no change, 2 change: references drawn for part of a scene).\n"
            "REFERENCE_POLYGONS: instead of REFERENCE, polygons drawn where the answer is known, their "
            "REFERENCE_FIELD 1 for no change and 2 for change: burnt onto BEFORE's grid (pixel centres inside; "
            "change wins where they overlap) and read as a partial reference.\n"
            "OUTPUT_PROBABILITY: float32 change probability, 0..1 (for re-thresholding). OUTPUT_UNCERTAINTY: "
            "float32, 0..1, high where the map should not be trusted.\n"
            "OUTPUT_REPORT: JSON with metrics, timings, device and the model card summary."
        )

    def initAlgorithm(self, config: Optional[Dict[str, Any]] = None) -> None:  # noqa: N802
        self.addParameter(QgsProcessingParameterRasterLayer(self.BEFORE, "Before image"))
        self.addParameter(QgsProcessingParameterRasterLayer(self.AFTER, "After image"))
        self.addParameter(QgsProcessingParameterEnum(self.METHOD, "Method", options=method_options(METHODS, METHOD_LABELS),
                                                     defaultValue=0))
        self.addParameter(QgsProcessingParameterBand(self.BANDS, "Bands (all if none is chosen)", None, self.BEFORE,
                                                     optional=True, allowMultiple=True))
        self.addParameter(checkpoint_parameter(self.MODEL, "Model (empty: default weights)",
                                               optional=True))
        self.addParameter(QgsProcessingParameterNumber(self.THRESHOLD, "Threshold", QgsProcessingParameterNumber.Double,
                                                       defaultValue=0.5, minValue=0.01, maxValue=0.99))
        self.addParameter(QgsProcessingParameterRasterLayer(self.REFERENCE, "Reference change map", optional=True))
        self.addParameter(QgsProcessingParameterEnum(
            self.REFERENCE_CODING, "Reference values", options=CODING_LABELS, defaultValue=0))
        self.addParameter(QgsProcessingParameterFeatureSource(
            self.REFERENCE_POLYGONS, "Reference polygons",
            [QgsProcessing.TypeVectorPolygon], optional=True))
        self.addParameter(QgsProcessingParameterField(
            self.REFERENCE_FIELD, "Reference polygons' field", "label",
            self.REFERENCE_POLYGONS, QgsProcessingParameterField.Numeric, optional=True))
        self.addParameter(QgsProcessingParameterRasterDestination(self.OUTPUT_CHANGE, "Change mask"))
        self.addParameter(QgsProcessingParameterRasterDestination(self.OUTPUT_PROBABILITY, "Change probability",
                                                                  optional=True, createByDefault=True))
        self.addParameter(QgsProcessingParameterRasterDestination(self.OUTPUT_UNCERTAINTY, "Uncertainty",
                                                                  optional=True, createByDefault=True))
        self.addParameter(QgsProcessingParameterFileDestination(self.OUTPUT_REPORT, "Report", "JSON files (*.json)",
                                                                optional=True, createByDefault=True))

    def read_params(self, parameters: Dict[str, Any], context: QgsProcessingContext, coding: str) -> ChangeParams:
        return ChangeParams(
            method=METHODS[self.parameterAsEnum(parameters, self.METHOD, context)],
            model=self.parameterAsFile(parameters, self.MODEL, context) or None,
            threshold=self.parameterAsDouble(parameters, self.THRESHOLD, context),
            reference_coding=coding,
            bands=self.band_list(parameters, self.BANDS, context),
        )

    def check_parameters(self, parameters: Dict[str, Any], context: QgsProcessingContext) -> None:
        self.read_params(parameters, context, "binary")
        self.refuse_both(parameters, self.REFERENCE, self.REFERENCE_POLYGONS)

    def execute(self, parameters: Dict[str, Any], context: QgsProcessingContext,
                feedback: QgsProcessingFeedback) -> Dict[str, Any]:
        before = self.raster_path(parameters, self.BEFORE, context)
        after = self.raster_path(parameters, self.AFTER, context)
        self.refuse_both(parameters, self.REFERENCE, self.REFERENCE_POLYGONS)
        reference = self.raster_path(parameters, self.REFERENCE, context, optional=True)
        coding = list(CODINGS)[self.parameterAsEnum(parameters, self.REFERENCE_CODING, context)]
        if self.given(parameters, self.REFERENCE_POLYGONS):
            reference = self.burnt_polygons(parameters, self.REFERENCE_POLYGONS, self.REFERENCE_FIELD, context,
                                            feedback, before)
            coding = "partial"  # 0 is where no polygon was drawn
        params = self.read_params(parameters, context, coding)
        outputs = ChangeOutputs(
            change=self.output_layer_path(parameters, self.OUTPUT_CHANGE, context),
            probability=self.output_layer_path(parameters, self.OUTPUT_PROBABILITY, context) or None,
            uncertainty=self.output_layer_path(parameters, self.OUTPUT_UNCERTAINTY, context) or None,
            report=self.output_file_path(parameters, self.OUTPUT_REPORT, context) or None,
        )
        progress, cancelled = feedback_callbacks(feedback)
        result = self.run_engine(detect_changes, before, after, outputs, params, reference, progress, cancelled)
        for note in result.notes:
            feedback.pushWarning(note)
        feedback.pushInfo(f"{params.method} on {result.device}: {result.width} x {result.height} pixels in "
                          f"{result.timings.get('detect', 0):.1f} s")
        if result.metrics:
            feedback.pushInfo("metrics: " + json.dumps({k: round(v, 4) if isinstance(v, float) else v
                                                        for k, v in result.metrics.items()}))
        self.style_output(context, outputs.change, CHANGE_STYLE)
        out = {self.OUTPUT_CHANGE: outputs.change}
        if outputs.probability:
            out[self.OUTPUT_PROBABILITY] = outputs.probability
            self.style_output(context, outputs.probability, PROBABILITY_STYLE)  # 0..1, not stretched per run
        if outputs.uncertainty:
            out[self.OUTPUT_UNCERTAINTY] = outputs.uncertainty
            self.style_output(context, outputs.uncertainty, UNCERTAINTY_STYLE)
        if outputs.report:
            out[self.OUTPUT_REPORT] = outputs.report
        return out
