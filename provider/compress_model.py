"""rslab:compress_model: PIC-PQ or GHOST compression of an RS Lab checkpoint."""
from __future__ import annotations

from typing import Any, Dict, Optional

from qgis.core import (
    QgsProcessingContext,
    QgsProcessingFeedback,
    QgsProcessingOutputNumber,
    QgsProcessingParameterEnum,
    QgsProcessingParameterFile,
    QgsProcessingParameterFileDestination,
    QgsProcessingParameterNumber,
    QgsProcessingParameterString,
)

from ..core.compression import METHODS, CompressParams, parse_max_bits
from ..core.errors import RSLabError
from ..core.pic_pq import MAX_PENALTY, MAX_REDUCTION
from .base import RSLabAlgorithm, checkpoint_parameter, feedback_callbacks, method_options

# the METHOD options, short so the algorithm dialog needs no sideways scrolling at QGIS's default size (its help
# panel names each method in full)
SHORT_LABELS = {"pic_pq": "PIC-PQ (pruning, mixed bits)", "ghost": "GHOST (hybrid quantisation)"}


class CompressModelAlgorithm(RSLabAlgorithm):
    GROUP = "Model compression"
    GROUP_ID = "compression"

    MODEL = "MODEL"
    METHOD = "METHOD"
    DATA = "DATA"
    DATA_FOLDER = "DATA_FOLDER"
    FLOPS_REDUCTION = "FLOPS_REDUCTION"
    MAX_BITS = "MAX_BITS"
    PENALTY = "PENALTY"
    EPOCHS = "EPOCHS"
    GHOST_THRESHOLD = "GHOST_THRESHOLD"
    DISTILLATION_WEIGHT = "DISTILLATION_WEIGHT"
    SEED = "SEED"
    OUTPUT_MODEL = "OUTPUT_MODEL"
    OUTPUT_REPORT = "OUTPUT_REPORT"

    def name(self) -> str:
        return "compress_model"

    def displayName(self) -> str:  # noqa: N802
        return "Compress model (PIC-PQ / GHOST)"

    def shortHelpString(self) -> str:  # noqa: N802
        return (
            "Compresses an RS Lab checkpoint. METHOD 0 pic_pq: prunes filters globally to the FLOPS_REDUCTION "
            "target (importance from feature-map rank, scaled per layer by regularised evolution), gives each "
            "layer bits from its pruned/unpruned L1 ratio (MAX_BITS per stage, each 2..8, e.g. 8,6,4, and the "
            "PENALTY factor), then fine-tunes and trains with quantisation. METHOD 1 ghost: per-layer bits from a "
            "k-means distortion threshold (GHOST_THRESHOLD, default 0.1; at most the largest MAX_BITS value), then "
            "quantisation-aware training with the full-precision model as teacher (self-distillation with a "
            "learned switch, weighted by DISTILLATION_WEIGHT, default 400). DATA: a .npz "
            "of images (classification), or an ABU .mat scene / hyperspectral raster (BSDM denoiser); "
            "DATA_FOLDER instead, for change detection: a folder with A/, B/, label/ (pairs the model was not "
            "trained on are scored). EPOCHS: training budget (an epoch is one "
            "pass over the images, or 100 iterations for tiled data). OUTPUT_MODEL: an RS Lab checkpoint with "
            "the bit widths in its model card, usable by the task tools (not MODEL itself). OUTPUT_REPORT: JSON "
            "with BOPs, size and scores before and after. Returns BOPS_RATIO (before / after), a number a "
            "model's next step can take."
        )

    def initAlgorithm(self, config: Optional[Dict[str, Any]] = None) -> None:  # noqa: N802
        double, integer = QgsProcessingParameterNumber.Double, QgsProcessingParameterNumber.Integer
        self.addParameter(checkpoint_parameter(self.MODEL, "Checkpoint to compress"))
        self.addParameter(QgsProcessingParameterEnum(self.METHOD, "Method", options=method_options(METHODS, SHORT_LABELS),
                                                     defaultValue=0))
        # two parameters: QGIS 3.22's file parameter takes files or folders, not both (a folder given as DATA
        # was refused with 'Incorrect parameter value for DATA')
        self.addParameter(QgsProcessingParameterFile(self.DATA, "Data file (.npz, .mat, raster)", optional=True))
        self.addParameter(QgsProcessingParameterFile(self.DATA_FOLDER, "…or folder (A/, B/, label/)",
                                                     QgsProcessingParameterFile.Folder, optional=True))
        self.addParameter(QgsProcessingParameterNumber(self.FLOPS_REDUCTION,
                                                       f"FLOPs reduction (PIC-PQ, 0..{MAX_REDUCTION:g})",
                                                       double, 0.5, minValue=0.0, maxValue=MAX_REDUCTION))
        self.addParameter(QgsProcessingParameterString(self.MAX_BITS, "Maximum bits per stage", "8,6,4"))
        self.addParameter(QgsProcessingParameterNumber(self.PENALTY, "Penalty factor (PIC-PQ lambda)", double,
                                                       1 / 6, minValue=0.0, maxValue=MAX_PENALTY))
        self.addParameter(QgsProcessingParameterNumber(self.EPOCHS, "Training epochs", double, 1.0, minValue=0.01))
        self.addParameter(QgsProcessingParameterNumber(self.GHOST_THRESHOLD, "GHOST k-means threshold", double, 0.1,
                                                       minValue=1e-6))
        self.addParameter(QgsProcessingParameterNumber(self.DISTILLATION_WEIGHT, "GHOST distillation weight", double,
                                                       400.0, minValue=0.0))
        self.addParameter(QgsProcessingParameterNumber(self.SEED, "Random seed", integer, 0, minValue=0))
        self.addParameter(QgsProcessingParameterFileDestination(self.OUTPUT_MODEL, "Compressed checkpoint",
                                                                "RS Lab checkpoints (*.pt)"))
        self.addParameter(QgsProcessingParameterFileDestination(self.OUTPUT_REPORT, "Compression report",
                                                                "JSON files (*.json)", optional=True, createByDefault=False))
        self.addOutput(QgsProcessingOutputNumber("BOPS_RATIO", "BOPs ratio (before / after)"))  # for a model's next step

    def read_params(self, parameters: Dict[str, Any], context: QgsProcessingContext) -> CompressParams:
        return CompressParams(
            method=METHODS[self.parameterAsEnum(parameters, self.METHOD, context)],
            flops_reduction=self.parameterAsDouble(parameters, self.FLOPS_REDUCTION, context),
            max_bits=parse_max_bits(self.parameterAsString(parameters, self.MAX_BITS, context), "MAX_BITS"),
            penalty=self.parameterAsDouble(parameters, self.PENALTY, context),
            epochs=self.parameterAsDouble(parameters, self.EPOCHS, context),
            ghost_threshold=self.parameterAsDouble(parameters, self.GHOST_THRESHOLD, context),
            distillation_weight=self.parameterAsDouble(parameters, self.DISTILLATION_WEIGHT, context),
            seed=self.parameterAsInt(parameters, self.SEED, context),
        )

    def check_parameters(self, parameters: Dict[str, Any], context: QgsProcessingContext) -> None:
        self.read_params(parameters, context)
        self.data_path(parameters, context)

    def data_path(self, parameters: Dict[str, Any], context: QgsProcessingContext) -> str:
        """DATA or DATA_FOLDER, whichever was given; RSLabError unless exactly one was."""
        file = self.parameterAsFile(parameters, self.DATA, context)
        folder = self.parameterAsFile(parameters, self.DATA_FOLDER, context)
        if file and folder:
            raise RSLabError("give DATA (a file) or DATA_FOLDER (a folder of change pairs), not both")
        if not (file or folder):
            raise RSLabError("DATA: no training / evaluation data was given (a file as DATA, or a folder of "
                             "change pairs as DATA_FOLDER)")
        return file or folder

    def execute(self, parameters: Dict[str, Any], context: QgsProcessingContext,
                feedback: QgsProcessingFeedback) -> Dict[str, Any]:
        from ..core.compression import compress_checkpoint

        model = self.parameterAsFile(parameters, self.MODEL, context)
        if not model:
            raise RSLabError("MODEL: no checkpoint was given")
        data = self.data_path(parameters, context)
        params = self.read_params(parameters, context)
        output = self.output_file_path(parameters, self.OUTPUT_MODEL, context)
        report_path = self.output_file_path(parameters, self.OUTPUT_REPORT, context)
        progress, cancelled = feedback_callbacks(feedback)

        def on_step(entry):
            if "metric" in entry:
                feedback.pushInfo(f"{entry.get('phase', '')} step {entry.get('step', '')}: "
                                  f"{entry['metric']:.3f}")

        result = self.run_engine(compress_checkpoint, model, data, output, params, progress, cancelled, on_step,
                                 None, report_path or None)  # None: no task options
        metric = result.metric
        feedback.pushInfo(f"BOPs {result.before['gbops']:.3f} G -> {result.after['gbops']:.3f} G "
                          f"({result.bops_ratio:.1f}x fewer); size {result.before['size_mb']:.3f} -> "
                          f"{result.after['size_mb']:.3f} MB; {metric} {result.scores_before[metric]:.2f} -> "
                          f"{result.scores_after[metric]:.2f}")
        for note in result.notes:
            feedback.pushWarning(f"Note: {note}")
        out = {self.OUTPUT_MODEL: output, "BOPS_RATIO": result.bops_ratio}
        if report_path:
            out[self.OUTPUT_REPORT] = report_path
        return out
