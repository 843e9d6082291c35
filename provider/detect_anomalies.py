"""rslab:detect_anomalies: per-pixel anomaly scores of a hyperspectral raster (BSDM + RX, RX, local RX).

Anomaly scores have no fixed range (RX scores of one scene run from ~80 to
~2000, local RX from ~0.4 to ~4000), so after anomaly_scores.qml is applied
its colour ramp is refitted to the layer's own cumulative cut
(`ui.layers.fit_score_stretch`, which the dock uses too).
"""
from __future__ import annotations

import json
from typing import Any, Dict, Optional

from qgis.core import (
    QgsMapLayer,
    QgsProcessing,
    QgsProcessingContext,
    QgsProcessingFeedback,
    QgsProcessingParameterEnum,
    QgsProcessingParameterFileDestination,
    QgsProcessingParameterNumber,
    QgsProcessingParameterRasterDestination,
    QgsProcessingParameterRasterLayer,
    QgsProcessingParameterVectorDestination,
    QgsProcessingUtils,
)
from qgis.PyQt.QtCore import QVariant

from ..core.anomaly import AnomalyOutputs, AnomalyResult, check_anomaly_outputs, detect_anomalies
from ..core.anomaly_mask import describe_mask
from ..core.anomaly_params import LRX_MAX_OUTER, METHOD_LABELS, METHODS, AnomalyParams
from ..core.anomaly_peaks import PEAK_COUNT, PEAK_SEPARATION
from ..ui.layers import MASK_STYLE, PEAKS_STYLE, SCORES_STYLE, fit_score_stretch
from .base import RSLabAlgorithm, StyleFromQml, checkpoint_parameter, feedback_callbacks, method_options

LOGGED_PEAKS = 5  # the strongest anomalies named in the log (the report lists PEAK_COUNT)


class ScoreStyle(StyleFromQml):
    """anomaly_scores.qml, then its ramp fitted to the layer (see fit_score_stretch)."""

    def __init__(self) -> None:
        super().__init__(SCORES_STYLE)

    def postProcessLayer(self, layer: QgsMapLayer, context: QgsProcessingContext,  # noqa: N802 (Qt API)
                         feedback: QgsProcessingFeedback) -> None:
        super().postProcessLayer(layer, context, feedback)
        if layer is not None and layer.isValid():
            fit_score_stretch(layer)


class DetectAnomaliesAlgorithm(RSLabAlgorithm):
    GROUP = "Hyperspectral"
    GROUP_ID = "hyperspectral"

    INPUT = "INPUT"
    METHOD = "METHOD"
    ITERATIONS = "ITERATIONS"
    SEED = "SEED"
    INNER_WINDOW = "INNER_WINDOW"
    OUTER_WINDOW = "OUTER_WINDOW"
    REFERENCE = "REFERENCE"
    FALSE_ALARM_RATE = "FALSE_ALARM_RATE"
    OUTPUT_SCORES = "OUTPUT_SCORES"
    OUTPUT_MASK = "OUTPUT_MASK"
    OUTPUT_PEAKS = "OUTPUT_PEAKS"
    OUTPUT_REPORT = "OUTPUT_REPORT"
    MODEL = "MODEL"
    OUTPUT_MODEL = "OUTPUT_MODEL"

    def name(self) -> str:
        return "detect_anomalies"

    def displayName(self) -> str:  # noqa: N802
        return "Detect hyperspectral anomalies (BSDM + RX, RX, local RX)"

    def shortHelpString(self) -> str:  # noqa: N802
        return (
            "Scores every pixel of a hyperspectral image for how anomalous its spectrum is (higher = more "
            "anomalous). Unsupervised: no labels, nothing to train beforehand. Outputs are on the input's grid; "
            "nodata pixels stay nodata.\n\n"
            "INPUT: the hyperspectral raster (two bands or more; e.g. a cube made with 'Import MATLAB "
            "hyperspectral cube'). Bands its ENVI header flags bad (bbl) are left out; the log lists them.\n"
            "METHOD: bsdm_rx (a spectral diffusion denoiser trained on the scene suppresses the background, "
            "then global RX), rx (global RX: Mahalanobis distance to the scene mean) or lrx (local dual-window "
            "RX on the 10 leading principal components). bsdm_rx writes the suppressed cube as a temporary "
            "float32 file of up to the uncompressed image's size (in the system's temporary folder, or beside "
            "OUTPUT_SCORES when that lacks the room).\n"
            "ITERATIONS: BSDM training iterations (bsdm_rx only; default 500).\n"
            "SEED: random seed of BSDM's noise draw, pixel sample and weights (bsdm_rx only); the same seed "
            "gives the same scores.\n"
            "INNER_WINDOW, OUTER_WINDOW: odd window sizes in pixels for lrx: the background of a pixel is the "
            "outer window minus the inner (guard) window, which should cover a target; the outer window is at most "
            f"{LRX_MAX_OUTER}.\n"
            "REFERENCE: optional anomaly map (non-zero = anomaly, 0 = background even where 0 is its nodata value; "
            "on another grid it is resampled, nearest neighbour, and pixels outside it are left out; checked before "
            "any work): the report then has "
            "AUC(D,F) (detection vs false alarm, higher is better), AUC(F,tau) (false alarm vs threshold, lower "
            "is better) and AUC_BS = AUC(D,F) - AUC(F,tau), on min-max normalised scores.\n"
            "FALSE_ALARM_RATE: optional fraction of pixels (above 0, below 1, e.g. 0.01) to flag: the scores are "
            "thresholded so that this share of pixels lies above, and a binary mask is written (to "
            "OUTPUT_MASK, or to a temporary file when that output is skipped).\n"
            "OUTPUT_SCORES: float32 anomaly scores (NaN = nodata).\n"
            "OUTPUT_MASK: uint8 mask, 1 anomaly, 0 background, 255 nodata; needs FALSE_ALARM_RATE.\n"
            f"OUTPUT_PEAKS: optional point layer (GeoPackage or GeoJSON) of the {PEAK_COUNT} strongest anomalies, "
            "with their rank, row, column and score, labelled by rank on the map.\n"
            "OUTPUT_REPORT: JSON with the parameters, metrics (with a reference), threshold, score range, the "
            f"{PEAK_COUNT} strongest anomalies (highest local maxima of the scores, over {PEAK_SEPARATION} pixels "
            "apart: row, column, score, and x, y in the image's CRS), "
            "timings and device.\n"
            "MODEL: optional BSDM denoiser checkpoint (bsdm_rx) to use instead of training one on the image, "
            "for example a compressed one from rslab:compress_model.\n"
            "OUTPUT_MODEL: optional checkpoint file to save the denoiser trained on this image (bsdm_rx), "
            "which rslab:compress_model can compress."
        )

    def initAlgorithm(self, config: Optional[Dict[str, Any]] = None) -> None:  # noqa: N802
        integer = QgsProcessingParameterNumber.Integer
        self.addParameter(QgsProcessingParameterRasterLayer(self.INPUT, "Hyperspectral image"))
        self.addParameter(QgsProcessingParameterEnum(self.METHOD, "Method", options=method_options(METHODS, METHOD_LABELS),
                                                     defaultValue=0))
        self.addParameter(QgsProcessingParameterNumber(self.ITERATIONS, "BSDM training iterations (bsdm_rx)",
                                                       integer, defaultValue=500, minValue=1))
        self.addParameter(QgsProcessingParameterNumber(self.SEED, "Random seed (bsdm_rx)", integer, defaultValue=0,
                                                       minValue=0))
        self.addParameter(QgsProcessingParameterNumber(self.INNER_WINDOW, "Inner (guard) window, pixels (lrx)",
                                                       integer, defaultValue=3, minValue=1))
        self.addParameter(QgsProcessingParameterNumber(self.OUTER_WINDOW, "Outer window, pixels (lrx)", integer,
                                                       defaultValue=11, minValue=3, maxValue=LRX_MAX_OUTER))
        self.addParameter(QgsProcessingParameterRasterLayer(self.REFERENCE, "Reference (non-zero = anomaly)",
                                                            optional=True))
        # labels short: a longer one widened the dialog's panel past its default size (a sideways scroll bar)
        self.addParameter(QgsProcessingParameterNumber(self.FALSE_ALARM_RATE, "Mask's false-alarm rate (0..1)",
                                                       QgsProcessingParameterNumber.Double,
                                                       optional=True, minValue=0.0, maxValue=1.0))
        self.addParameter(QgsProcessingParameterRasterDestination(self.OUTPUT_SCORES, "Anomaly scores"))
        self.addParameter(QgsProcessingParameterRasterDestination(self.OUTPUT_MASK, "Anomaly mask", optional=True,
                                                                  createByDefault=False))
        self.addParameter(QgsProcessingParameterFileDestination(self.OUTPUT_REPORT, "Report", "JSON files (*.json)",
                                                                optional=True, createByDefault=True))
        self.addParameter(checkpoint_parameter(self.MODEL, "Trained BSDM denoiser to use",
                                               optional=True))
        self.addParameter(QgsProcessingParameterFileDestination(self.OUTPUT_MODEL, "Trained BSDM denoiser",
                                                                "RS Lab checkpoints (*.pt)", optional=True,
                                                                createByDefault=False))
        self.addParameter(QgsProcessingParameterVectorDestination(self.OUTPUT_PEAKS, "Strongest anomalies",
                                                                  QgsProcessing.TypeVectorPoint, optional=True,
                                                                  createByDefault=True))

    # parameters ---------------------------------------------------------------------------------------
    def optional_number(self, parameters: Dict[str, Any], name: str,
                        context: QgsProcessingContext) -> Optional[float]:
        """A number parameter that may be absent: None when not given (Processing has no 'unset' double)."""
        value = parameters.get(name)
        if value is None or value == "" or (isinstance(value, QVariant) and value.isNull()):
            return None
        return self.parameterAsDouble(parameters, name, context)

    def read_params(self, parameters: Dict[str, Any], context: QgsProcessingContext) -> AnomalyParams:
        return AnomalyParams(
            method=METHODS[self.parameterAsEnum(parameters, self.METHOD, context)],
            iterations=self.parameterAsInt(parameters, self.ITERATIONS, context),
            seed=self.parameterAsInt(parameters, self.SEED, context),
            inner_window=self.parameterAsInt(parameters, self.INNER_WINDOW, context),
            outer_window=self.parameterAsInt(parameters, self.OUTER_WINDOW, context),
            false_alarm_rate=self.optional_number(parameters, self.FALSE_ALARM_RATE, context),
            model=self.parameterAsFile(parameters, self.MODEL, context) or None,
        )

    def read_outputs(self, parameters: Dict[str, Any], context: QgsProcessingContext,
                     params: AnomalyParams) -> AnomalyOutputs:
        """Output paths; with a false-alarm rate but the mask output skipped, the mask goes to a temporary file."""
        mask = self.output_layer_path(parameters, self.OUTPUT_MASK, context) or None
        if mask is None and params.false_alarm_rate is not None:
            mask = QgsProcessingUtils.generateTempFilename("anomaly_mask.tif")
        return AnomalyOutputs(
            scores=self.output_layer_path(parameters, self.OUTPUT_SCORES, context),
            mask=mask,
            report=self.output_file_path(parameters, self.OUTPUT_REPORT, context) or None,
            model=self.output_file_path(parameters, self.OUTPUT_MODEL, context) or None,
            peaks=self.output_layer_path(parameters, self.OUTPUT_PEAKS, context) or None,
        )

    def check_parameters(self, parameters: Dict[str, Any], context: QgsProcessingContext) -> None:
        params = self.read_params(parameters, context)  # windows, rate (above 0, below 1), iterations
        asked = {name: name if self.output_asked(parameters, name) else None  # which outputs, not their files
                 for name in (self.OUTPUT_MASK, self.OUTPUT_MODEL)}
        check_anomaly_outputs(params, AnomalyOutputs(scores="", mask=asked[self.OUTPUT_MASK],
                                                     model=asked[self.OUTPUT_MODEL]))

    # running ------------------------------------------------------------------------------------------
    def execute(self, parameters: Dict[str, Any], context: QgsProcessingContext,
                feedback: QgsProcessingFeedback) -> Dict[str, Any]:
        cube = self.raster_path(parameters, self.INPUT, context)
        reference = self.raster_path(parameters, self.REFERENCE, context, optional=True)
        params = self.read_params(parameters, context)
        outputs = self.read_outputs(parameters, context, params)
        progress, cancelled = feedback_callbacks(feedback)
        result = self.run_engine(detect_anomalies, cube, outputs, params, reference, progress, cancelled)
        self.log_result(result, feedback)
        self.style_scores(context, outputs.scores)
        out = {self.OUTPUT_SCORES: outputs.scores}
        if outputs.mask:
            out[self.OUTPUT_MASK] = outputs.mask
            if not self.given(parameters, self.OUTPUT_MASK) and context.willLoadLayerOnCompletion(outputs.scores):
                # asked for by FALSE_ALARM_RATE alone: loaded with the scores when they are loaded (it was
                # written, returned, and left unseen), in a model too when its scores are a model output; not
                # where the scores are not loaded (a batch with loading off, processing.run, a model step whose
                # scores are not a model output), which the project's presence alone did not tell apart
                details = QgsProcessingContext.LayerDetails("Anomaly mask", context.project(), self.OUTPUT_MASK)
                details.layerTypeHint = QgsProcessingUtils.LayerHint.Raster  # else QGIS tries OGR first, logging a warning
                context.addLayerToLoadOnCompletion(outputs.mask, details)
            self.style_output(context, outputs.mask, MASK_STYLE)
        if outputs.peaks:
            out[self.OUTPUT_PEAKS] = outputs.peaks
            self.style_output(context, outputs.peaks, PEAKS_STYLE)
        if outputs.report:
            out[self.OUTPUT_REPORT] = outputs.report
        if outputs.model:
            out[self.OUTPUT_MODEL] = outputs.model
        return out

    @staticmethod
    def log_result(result: AnomalyResult, feedback: QgsProcessingFeedback) -> None:
        seconds = sum(result.timings.values())
        feedback.pushInfo(f"{result.method} on {result.device}: {result.width} x {result.height} pixels, "
                          f"{result.bands} bands in {seconds:.1f} s; scores {result.score_range[0]:.4g} to "
                          f"{result.score_range[1]:.4g}")
        if result.training_loss:
            feedback.pushInfo(f"BSDM loss {result.training_loss[0]:.4g} -> {result.training_loss[-1]:.4g} "
                              f"over {len(result.training_loss)} iterations")
        if result.metrics:
            feedback.pushInfo("metrics: " + json.dumps({k: round(v, 4) if isinstance(v, float) else v
                                                        for k, v in result.metrics.items()}))
        for note in result.notes:
            feedback.pushInfo(f"note: {note}")
        if result.threshold is not None:
            for line in describe_mask(result.params["false_alarm_rate"], result.threshold, result.mask_pixels,
                                      result.valid_pixels, result.mask_detection):
                feedback.pushInfo(line)
        if result.peaks:
            feedback.pushInfo("strongest anomalies (row, column: score): " + "; ".join(
                f"{peak.row}, {peak.col}: {peak.score:.4g}" for peak in result.peaks[:LOGGED_PEAKS])
                + (f"; the report lists {len(result.peaks)}" if result.outputs and result.outputs.report else ""))

    @classmethod
    def style_scores(cls, context: QgsProcessingContext, layer_id: str) -> None:
        """Like style_output, with the ramp refitted to the layer (a QML stores fixed min/max values)."""
        cls.post_process_output(context, layer_id, ScoreStyle())
