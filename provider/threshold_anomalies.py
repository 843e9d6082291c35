"""rslab:threshold_anomalies: a new anomaly mask at another false-alarm rate, from scores already computed
(core/anomaly_mask.py): seconds, where running rslab:detect_anomalies again retrains BSDM for minutes."""
from __future__ import annotations

from typing import Any, Dict, Optional

from qgis.core import (
    QgsProcessingContext,
    QgsProcessingFeedback,
    QgsProcessingParameterFileDestination,
    QgsProcessingParameterNumber,
    QgsProcessingParameterRasterDestination,
    QgsProcessingParameterRasterLayer,
)

from ..core.anomaly_mask import MaskOutputs, MaskResult, describe_mask, threshold_scores
from ..core.anomaly_params import check_false_alarm_rate
from ..ui.layers import MASK_STYLE
from .base import RSLabAlgorithm, feedback_callbacks


class ThresholdAnomaliesAlgorithm(RSLabAlgorithm):
    GROUP = "Hyperspectral"
    GROUP_ID = "hyperspectral"

    INPUT = "INPUT"
    FALSE_ALARM_RATE = "FALSE_ALARM_RATE"
    REFERENCE = "REFERENCE"
    OUTPUT_MASK = "OUTPUT_MASK"
    OUTPUT_REPORT = "OUTPUT_REPORT"

    def name(self) -> str:
        return "threshold_anomalies"

    def displayName(self) -> str:  # noqa: N802
        return "Anomaly mask at a false-alarm rate (from scores)"

    def shortHelpString(self) -> str:  # noqa: N802
        return (
            "Writes the anomaly mask of a score raster at a false-alarm rate, without detecting again: the "
            "scores do not depend on the rate, so trying another one takes seconds (BSDM + RX would train its "
            "denoiser again). The mask is the one 'Detect hyperspectral anomalies' writes at that rate.\n\n"
            "INPUT: the one-band anomaly scores of a detection run (its OUTPUT_SCORES; NaN or nodata = not "
            "scored), not the image nor a mask.\n"
            "FALSE_ALARM_RATE: the share of scored pixels to flag, above 0 and below 1 (e.g. 0.005): the mask "
            "flags the pixels scoring above the (k+1)-th highest score, k = floor(rate x scored pixels); fewer "
            "where scores tie at the cut.\n"
            "REFERENCE: optional anomaly map (non-zero = anomaly; on another grid it is resampled, nearest "
            "neighbour): the log and the report then say how many of its anomaly pixels the mask flags (the "
            "detection rate) and how many of its background pixels (the false alarms).\n"
            "OUTPUT_MASK: uint8 mask, 1 anomaly, 0 background, 255 nodata.\n"
            "OUTPUT_REPORT: optional JSON with the rate, threshold, pixels flagged, score range and, with a "
            "reference, the detection counts."
        )

    def initAlgorithm(self, config: Optional[Dict[str, Any]] = None) -> None:  # noqa: N802
        self.addParameter(QgsProcessingParameterRasterLayer(self.INPUT, "Anomaly scores"))
        self.addParameter(QgsProcessingParameterNumber(self.FALSE_ALARM_RATE, "False-alarm rate (0..1)",
                                                       QgsProcessingParameterNumber.Double, defaultValue=0.01,
                                                       minValue=0.0, maxValue=1.0))
        self.addParameter(QgsProcessingParameterRasterLayer(self.REFERENCE, "Reference (non-zero = anomaly)",
                                                            optional=True))
        self.addParameter(QgsProcessingParameterRasterDestination(self.OUTPUT_MASK, "Anomaly mask"))
        self.addParameter(QgsProcessingParameterFileDestination(self.OUTPUT_REPORT, "Report", "JSON files (*.json)",
                                                                optional=True, createByDefault=False))

    def check_parameters(self, parameters: Dict[str, Any], context: QgsProcessingContext) -> None:
        check_false_alarm_rate(self.parameterAsDouble(parameters, self.FALSE_ALARM_RATE, context))

    def execute(self, parameters: Dict[str, Any], context: QgsProcessingContext,
                feedback: QgsProcessingFeedback) -> Dict[str, Any]:
        scores = self.raster_path(parameters, self.INPUT, context)
        reference = self.raster_path(parameters, self.REFERENCE, context, optional=True)
        rate = self.parameterAsDouble(parameters, self.FALSE_ALARM_RATE, context)
        outputs = MaskOutputs(mask=self.output_layer_path(parameters, self.OUTPUT_MASK, context),
                              report=self.output_file_path(parameters, self.OUTPUT_REPORT, context) or None)
        progress, cancelled = feedback_callbacks(feedback)
        result = self.run_engine(threshold_scores, scores, outputs, rate, reference, progress, cancelled)
        self.log_result(result, feedback)
        self.style_output(context, outputs.mask, MASK_STYLE)
        out = {self.OUTPUT_MASK: outputs.mask}
        if outputs.report:
            out[self.OUTPUT_REPORT] = outputs.report
        return out

    @staticmethod
    def log_result(result: MaskResult, feedback: QgsProcessingFeedback) -> None:
        for line in describe_mask(result.false_alarm_rate, result.threshold, result.mask_pixels, result.valid_pixels,
                                  result.mask_detection):
            feedback.pushInfo(line)
        for note in result.notes:
            feedback.pushInfo(f"note: {note}")
