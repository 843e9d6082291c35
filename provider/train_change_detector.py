"""rslab:train_change_detector: train AR-CDNet on change pairs, keep the best checkpoint."""
from __future__ import annotations

from typing import Any, Dict, Optional
from qgis.core import (
    QgsProcessing,
    QgsProcessingContext,
    QgsProcessingFeedback,
    QgsProcessingParameterBand,
    QgsProcessingParameterEnum,
    QgsProcessingParameterFeatureSource,
    QgsProcessingParameterField,
    QgsProcessingParameterFile,
    QgsProcessingParameterFileDestination,
    QgsProcessingParameterNumber,
    QgsProcessingParameterRasterLayer,
)

from ..core.change_data import ChangePair, pairs_from_folder, training_split
from ..core.change_reference import CODING_LABELS, CODINGS
from ..core.change_training import (WIDTH_PARAMETERS, WIDTH_PRESETS, TrainChangeParams, train_change_detector,
                                   training_inputs)
from ..core.errors import RSLabError
from ..core.outputs import PendingOutputs, check_output_paths, write_json
from .base import RSLabAlgorithm, checkpoint_parameter, feedback_callbacks

WIDTHS = [(f"{name}, {WIDTH_PRESETS[name][0]} / {WIDTH_PRESETS[name][1]} "  # encoder / decoder widths
           f"({'paper; ' if name == 'full' else ''}{WIDTH_PARAMETERS[name]} parameters)", *WIDTH_PRESETS[name])
          for name in ("narrow", "full")]


class TrainChangeDetectorAlgorithm(RSLabAlgorithm):
    GROUP = "Change detection"
    GROUP_ID = "change"

    TRAIN_FOLDER = "TRAIN_FOLDER"
    VALIDATION_FOLDER = "VALIDATION_FOLDER"
    BEFORE = "BEFORE"
    AFTER = "AFTER"
    LABEL = "LABEL"
    LABEL_POLYGONS = "LABEL_POLYGONS"
    LABEL_FIELD = "LABEL_FIELD"
    LABEL_CODING = "LABEL_CODING"
    BANDS = "BANDS"
    ITERATIONS = "ITERATIONS"
    BATCH_SIZE = "BATCH_SIZE"
    CROP = "CROP"
    LEARNING_RATE = "LEARNING_RATE"
    WIDTH = "WIDTH"
    INIT_MODEL = "INIT_MODEL"
    SEED = "SEED"
    OUTPUT_MODEL = "OUTPUT_MODEL"
    OUTPUT_REPORT = "OUTPUT_REPORT"

    def name(self) -> str:
        return "train_change_detector"

    def displayName(self) -> str:  # noqa: N802
        return "Train change detector (AR-CDNet)"

    def shortHelpString(self) -> str:  # noqa: N802
        return (
            "Trains an AR-CDNet change detector and writes the checkpoint with the best validation F1 "
            "(with its model card: bands, normalisation, training data, metrics). Training data: a folder "
            "with sub-folders A/ (before), B/ (after) and label/ (same file names), or one BEFORE / AFTER / "
            "LABEL raster triple; or BEFORE and AFTER with LABEL_POLYGONS, polygons drawn where the user knows the "
            "answer, their LABEL_FIELD 1 for no change and 2 for change: they are burnt onto BEFORE's grid "
            "(pixel centres inside; change wins where they overlap) and read as partial labels. "
            "LABEL_CODING: how the labels read: 0 binary (0 no change, non-zero change) or "
            "1 partial (0 not labelled, 1 no change, 2 change; unlabelled pixels are left out of the loss and of "
            "the validation scores, and each training crop is centred on a labelled pixel). "
            "BANDS: optional bands of both dates to train on, in this order (all if empty; "
            "the band list shows the BEFORE image's bands, the numbers apply to every pair), e.g. Sentinel-2's 10 m "
            "bands; the model card records them, and detection with this model then needs the same BANDS. "
            "Without VALIDATION_FOLDER, 20 % of the "
            "pairs are held out for validation. ITERATIONS (default 2000, at least 1), BATCH_SIZE (8), CROP (256, a "
            "multiple of 32), LEARNING_RATE (5e-4, 1e-6..0.5). AdamW, warm-up then poly decay, random crops, flips, "
            "90-degree turns and date swaps (the README's change-detection section says more). INIT_MODEL starts "
            "from an existing "
            "checkpoint (fine-tuning). WIDTH: 0 narrow (encoder and decoder 32 wide, "
            f"{WIDTH_PARAMETERS['narrow']} parameters, the shipped default's) or 1 full (64, as the paper, "
            f"{WIDTH_PARAMETERS['full']}). SEED: crops, augmentations and initial weights. "
            "OUTPUT_REPORT: JSON with the loss and validation F1 per epoch."
        )

    def initAlgorithm(self, config: Optional[Dict[str, Any]] = None) -> None:  # noqa: N802
        folder = QgsProcessingParameterFile.Folder
        self.addParameter(QgsProcessingParameterFile(self.TRAIN_FOLDER, "Training folder (A/, B/, label/)",
                                                     behavior=folder, optional=True))
        self.addParameter(QgsProcessingParameterFile(self.VALIDATION_FOLDER, "Validation folder", behavior=folder,
                                                     optional=True))
        self.addParameter(QgsProcessingParameterRasterLayer(self.BEFORE, "Before image (if no folder)", optional=True))
        self.addParameter(QgsProcessingParameterRasterLayer(self.AFTER, "After image", optional=True))
        self.addParameter(QgsProcessingParameterRasterLayer(self.LABEL, "Change label raster", optional=True))
        self.addParameter(QgsProcessingParameterFeatureSource(
            self.LABEL_POLYGONS, "Change label polygons",
            [QgsProcessing.TypeVectorPolygon], optional=True))
        self.addParameter(QgsProcessingParameterField(
            self.LABEL_FIELD, "Label polygons' field", "label", self.LABEL_POLYGONS,
            QgsProcessingParameterField.Numeric, optional=True))
        self.addParameter(QgsProcessingParameterEnum(self.LABEL_CODING, "Label values", options=CODING_LABELS,
                                                     defaultValue=0))
        self.addParameter(QgsProcessingParameterBand(self.BANDS, "Bands (all if none is chosen)", None, self.BEFORE,
                                                     optional=True, allowMultiple=True))
        integer = QgsProcessingParameterNumber.Integer
        self.addParameter(QgsProcessingParameterNumber(self.ITERATIONS, "Iterations", integer, 2000, minValue=1))
        self.addParameter(QgsProcessingParameterNumber(self.BATCH_SIZE, "Batch size", integer, 8, minValue=1))
        self.addParameter(QgsProcessingParameterNumber(self.CROP, "Crop size (multiple of 32)", integer, 256, minValue=32))
        self.addParameter(QgsProcessingParameterNumber(self.LEARNING_RATE, "Learning rate",
                                                       QgsProcessingParameterNumber.Double, 5e-4, minValue=1e-6, maxValue=0.5))
        self.addParameter(QgsProcessingParameterEnum(self.WIDTH, "Network width", options=[w[0] for w in WIDTHS],
                                                     defaultValue=0))
        self.addParameter(checkpoint_parameter(self.INIT_MODEL, "Start from checkpoint", optional=True))
        self.addParameter(QgsProcessingParameterNumber(self.SEED, "Random seed", integer, 0, minValue=0))
        self.addParameter(QgsProcessingParameterFileDestination(self.OUTPUT_MODEL, "Checkpoint", "RS Lab checkpoints (*.pt)"))
        self.addParameter(QgsProcessingParameterFileDestination(self.OUTPUT_REPORT, "Training report",
                                                                "JSON files (*.json)", optional=True, createByDefault=False))

    def read_params(self, parameters: Dict[str, Any], context: QgsProcessingContext,
                    burnt: bool = False) -> TrainChangeParams:
        _, base, channels = WIDTHS[self.parameterAsEnum(parameters, self.WIDTH, context)]
        return TrainChangeParams(
            iterations=self.parameterAsInt(parameters, self.ITERATIONS, context),
            batch_size=self.parameterAsInt(parameters, self.BATCH_SIZE, context),
            crop=self.parameterAsInt(parameters, self.CROP, context),
            lr=self.parameterAsDouble(parameters, self.LEARNING_RATE, context),
            base=base, channels=channels, seed=self.parameterAsInt(parameters, self.SEED, context),
            init_checkpoint=self.parameterAsFile(parameters, self.INIT_MODEL, context) or None,
            # burnt polygons are partial labels whatever LABEL_CODING says: 0 is where no polygon was drawn
            label_coding="partial" if burnt else list(CODINGS)[
                self.parameterAsEnum(parameters, self.LABEL_CODING, context)],
            bands=self.band_list(parameters, self.BANDS, context),
        )

    def check_parameters(self, parameters: Dict[str, Any], context: QgsProcessingContext) -> None:
        self.read_params(parameters, context)  # crop a multiple of 32, a batch of one with 64-pixel crops, ...
        self.refuse_both(parameters, self.LABEL, self.LABEL_POLYGONS)

    def _pairs(self, parameters, context, feedback):
        """(pairs, description, whether the labels were burnt from polygons)."""
        folder = self.parameterAsFile(parameters, self.TRAIN_FOLDER, context)
        polygons = self.given(parameters, self.LABEL_POLYGONS)
        if folder:
            if polygons:
                raise RSLabError("LABEL_POLYGONS labels a BEFORE / AFTER pair, not a training folder")
            return pairs_from_folder(folder), f"folder {folder}", False
        paths = [self.raster_path(parameters, n, context, optional=True) for n in (self.BEFORE, self.AFTER, self.LABEL)]
        if polygons:
            self.refuse_both(parameters, self.LABEL, self.LABEL_POLYGONS)
            if not all(paths[:2]):
                raise RSLabError("LABEL_POLYGONS needs BEFORE and AFTER")
            paths[2] = self.burnt_polygons(parameters, self.LABEL_POLYGONS, self.LABEL_FIELD, context, feedback,
                                           paths[0])
        if not all(paths):
            raise RSLabError("give a training folder (A/, B/, label/) or BEFORE, AFTER and LABEL (or LABEL_POLYGONS)")
        return [ChangePair(*paths)], f"rasters {', '.join(paths)}", polygons

    def execute(self, parameters: Dict[str, Any], context: QgsProcessingContext,
                feedback: QgsProcessingFeedback) -> Dict[str, Any]:
        pairs, description, burnt = self._pairs(parameters, context, feedback)
        seed = self.parameterAsInt(parameters, self.SEED, context)
        val_folder = self.parameterAsFile(parameters, self.VALIDATION_FOLDER, context)
        train, val, note = training_split(pairs, pairs_from_folder(val_folder) if val_folder else None, seed)
        if note:
            feedback.pushWarning(note)
        elif not val_folder:
            feedback.pushInfo("validation pairs held out: " + ", ".join(p.name for p in val))
        params = self.read_params(parameters, context, burnt)
        output = self.output_file_path(parameters, self.OUTPUT_MODEL, context)
        report = self.output_file_path(parameters, self.OUTPUT_REPORT, context)
        # before any work: the report naming the checkpoint (or an input) would replace it after the training
        check_output_paths({"checkpoint": output, "report": report},
                           training_inputs(train, val, params.init_checkpoint))
        progress, cancelled = feedback_callbacks(feedback)  # each validation's loss and F1 reach the log from there
        result = self.run_engine(train_change_detector, train, val, output, params, progress, cancelled, None,
                                 description)
        for later in result.notes:
            feedback.pushWarning(later)
        if note:  # the split's note (logged before training) belongs with the run's others in the report
            result.notes.insert(0, note)
        feedback.pushInfo(f"trained on {result.device}")  # the best F1 and its iteration: the run's last message
        out = {self.OUTPUT_MODEL: output}
        if report:  # under a temporary name, renamed when complete; its folder is made if missing
            try:
                with PendingOutputs() as pending:
                    write_json(pending.temp(report), {
                        "best_f1": result.best_f1, "best_iteration": result.best_iteration, "device": result.device,
                        "history": result.history, "timings": result.timings, "label_coding": params.label_coding,
                        "bands": list(params.bands or []) or None, "notes": result.notes}, indent=1)
            except RSLabError as exc:  # written after the checkpoint, which is complete: keep it, and say so
                raise RSLabError(f"{exc} (the checkpoint {output} was written and is kept)") from exc
            out[self.OUTPUT_REPORT] = report
        return out
