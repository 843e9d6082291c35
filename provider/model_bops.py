"""rslab:model_bops: bit operations, MACs, size and per-layer figures of a checkpoint."""
from __future__ import annotations

from typing import Any, Dict, Optional
from qgis.core import (
    QgsProcessingContext,
    QgsProcessingFeedback,
    QgsProcessingOutputNumber,
    QgsProcessingParameterEnum,
    QgsProcessingParameterFileDestination,
    QgsProcessingParameterNumber,
)

from ..core.bops import MODES
from ..core.compression_tasks import MAX_INPUT_SIZE, MIN_INPUT_SIZE, check_input_size
from ..core.errors import RSLabError
from .base import RSLabAlgorithm, checkpoint_parameter


class ModelBopsAlgorithm(RSLabAlgorithm):
    GROUP = "Model compression"
    GROUP_ID = "compression"

    MODEL = "MODEL"
    MODE = "MODE"
    INPUT_SIZE = "INPUT_SIZE"
    OUTPUT_REPORT = "OUTPUT_REPORT"

    def name(self) -> str:
        return "model_bops"

    def displayName(self) -> str:  # noqa: N802
        return "Model BOPs and size"

    def shortHelpString(self) -> str:  # noqa: N802
        return (
            "Counts the bit operations (BOPs = MACs x weight bits x activation bits, full precision as 32 x 32; "
            "HAWQ-V3) of every conv and linear layer of an RS Lab checkpoint, float or compressed, for one "
            "input sample. MODE 'pic_pq' ignores groups and 'ghost' takes a layer's activation bits from the "
            "previous layer's weight bits (the papers' own counters). INPUT_SIZE: image side in pixels, "
            f"{MIN_INPUT_SIZE} to {MAX_INPUT_SIZE} (0 = 32 for classification, 256 for change detection; one "
            "pixel token for the BSDM denoiser). "
            "OUTPUT_REPORT: JSON with total_bops, total_macs, size_mb and per-layer MACs, bits and BOPs. "
            "Returns TOTAL_BOPS and SIZE_MB, numbers a model's next step can take."
        )

    def initAlgorithm(self, config: Optional[Dict[str, Any]] = None) -> None:  # noqa: N802
        self.addParameter(checkpoint_parameter(self.MODEL, "Checkpoint"))
        self.addParameter(QgsProcessingParameterEnum(self.MODE, "Counting convention", options=list(MODES), defaultValue=0))
        self.addParameter(QgsProcessingParameterNumber(self.INPUT_SIZE, "Input size (pixels, 0 = task default)",
                                                       QgsProcessingParameterNumber.Integer, 0, minValue=0,
                                                       maxValue=MAX_INPUT_SIZE))
        self.addParameter(QgsProcessingParameterFileDestination(self.OUTPUT_REPORT, "BOPs report", "JSON files (*.json)"))
        # numbers a model's next step can take (returned by every run)
        self.addOutput(QgsProcessingOutputNumber("TOTAL_BOPS", "Total BOPs"))
        self.addOutput(QgsProcessingOutputNumber("SIZE_MB", "Model size (MB)"))

    def check_parameters(self, parameters: Dict[str, Any], context: QgsProcessingContext) -> None:
        check_input_size(self.parameterAsInt(parameters, self.INPUT_SIZE, context))

    def execute(self, parameters: Dict[str, Any], context: QgsProcessingContext,
                feedback: QgsProcessingFeedback) -> Dict[str, Any]:
        from ..core.compression import model_bops_report
        from ..core.outputs import PendingOutputs, check_output_paths, write_json

        model = self.parameterAsFile(parameters, self.MODEL, context)
        if not model:
            raise RSLabError("MODEL: no checkpoint was given")
        mode = MODES[self.parameterAsEnum(parameters, self.MODE, context)]
        size = self.parameterAsInt(parameters, self.INPUT_SIZE, context) or None
        output = self.output_file_path(parameters, self.OUTPUT_REPORT, context)
        check_output_paths({"report": output}, {"checkpoint": model})
        report = model_bops_report(model, mode, size)
        with PendingOutputs() as pending:
            write_json(pending.temp(output), report, indent=1)
        feedback.pushInfo(f"{report['total_bops'] / 1e9:.3f} GBOPs, {report['total_macs'] / 1e6:.2f} M MACs, "
                          f"{report['params']} parameters, {report['size_mb']:.3f} MB ({mode})")
        if report.get("input") == "one pixel token" and size:
            # said only in the report's `input` before: 0.064 GBOPs read as a 256 x 256 image's cost
            feedback.pushWarning(f"Note: a BSDM denoiser runs pixel by pixel, so INPUT_SIZE ({size}) does not apply: "
                                 f"these are one pixel's BOPs; a {size} x {size} image takes {size * size:,} times "
                                 "as many per suppression round")
        return {self.OUTPUT_REPORT: output, "TOTAL_BOPS": report["total_bops"], "SIZE_MB": report["size_mb"]}
