"""What every RS Lab Processing algorithm shares: feedback wiring, errors, styled outputs."""
from __future__ import annotations

import os
import re
import sys
import traceback
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

from qgis.core import (
    QgsMapLayer,
    QgsProcessingAlgorithm,
    QgsProcessingContext,
    QgsProcessingException,
    QgsProcessingFeedback,
    QgsProcessingLayerPostProcessorInterface,
    QgsProcessingOutputLayerDefinition,
    QgsProcessingParameterFile,
    QgsProcessingParameterRasterLayer,
    QgsProcessingUtils,
    QgsRasterLayer,
    QgsVectorLayer,
)
from qgis.PyQt.QtCore import QCoreApplication, QThread, QVariant
from qgis.PyQt.QtGui import QIcon

from ..core.change_labels import burn_labels
from ..core.dependencies import missing_package_message
from ..core.device import run_at_job_priority
from ..core.errors import CANCELLED_MESSAGE, JobCancelled, RSLabError
from ..core.help_links import help_url
from ..core.resources import ICON_DIR
from ..ui.layers import layer_file, style_path
from .leaked_frames import clear_when_returned

ICON = ICON_DIR / "rslab.svg"
PROVIDER_ID = "rslab"  # RSLabProvider.id(): scripts and models call the algorithms 'rslab:<name>'

CHECKPOINT_FILTER = "RS Lab checkpoints (*.pt);;All files (*)"


def method_options(methods: Sequence[str], labels: Mapping[str, str]) -> List[str]:
    """A METHOD enum's option texts: the name scripts use and the name the docks show ('bsdm_rx: BSDM + RX';
    the dialog listed only 'bsdm_rx', 'rx', 'lrx')."""
    return [f"{method}: {labels[method]}" for method in methods]


def checkpoint_parameter(name: str, description: str, optional: bool = False) -> QgsProcessingParameterFile:
    """A checkpoint input: .pt offered first, any name taken (an `extension="pt"` input refused, with only
    'Incorrect parameter value', a checkpoint the algorithms themselves had written as model.pth)."""
    return QgsProcessingParameterFile(name, description, QgsProcessingParameterFile.File, "", None, optional,
                                      CHECKPOINT_FILTER)


# The feedbacks of RS Lab algorithms running now, each with whether it runs on the GUI thread (the batch
# dialog's and the model dialog's runs do, below the event loop that an unload comes from):
# RSLabProvider.stop_running cancels them all and waits for the others only.
RUNNING: Dict[QgsProcessingFeedback, bool] = {}

# Post-processors must outlive the algorithm run that created them.
_KEEP_ALIVE: List[QgsProcessingLayerPostProcessorInterface] = []


def processing_error(exc: BaseException, message: str) -> QgsProcessingException:
    """The error Processing reports, after clearing the locals of the frames `exc` went through (see
    RSLabAlgorithm.processAlgorithm)."""
    traceback.clear_frames(exc.__traceback__)
    return QgsProcessingException(message)


def on_gui_thread() -> bool:
    application = QCoreApplication.instance()
    return application is not None and QThread.currentThread() == application.thread()


LOG_COUNT_STEP = 0.1  # a counted message ("tile 7 of 1600") reaches the log at most once per tenth of the run


def feedback_callbacks(feedback: QgsProcessingFeedback) -> Tuple[Callable[[float, str], None], Callable[[], bool]]:
    """The core job contract's progress and cancelled callables, from a Processing feedback.

    Processing writes every progress text into the log: "tile i of N" and
    "iteration i of N" gave 288 lines for one RX run on a 3000 x 3000 image and
    2000 for a default training. A message of a new kind always goes through;
    one that only counts on within its kind, once per LOG_COUNT_STEP of progress
    since that kind last reached the log (the bar still moves on every step):
    kinds that take turns ("tile i of N" and "suppressing the background:
    window i of N", every window) are each counted on their own.
    """
    logged: Dict[str, float] = {}  # kind of message -> progress when it last reached the log

    def progress(fraction: float, message: str) -> None:
        feedback.setProgress(100.0 * fraction)
        if not message:
            return
        kind = re.sub(r"\d+", "#", message)
        if kind not in logged or fraction - logged[kind] >= LOG_COUNT_STEP:
            feedback.setProgressText(message)
            logged[kind] = fraction

    return progress, feedback.isCanceled


class StyleFromQml(QgsProcessingLayerPostProcessorInterface):
    """Applies a resources/styles QML file to an output layer once Processing loads it."""

    def __init__(self, style: str) -> None:
        super().__init__()
        self.style = style

    def postProcessLayer(self, layer: QgsMapLayer, context: QgsProcessingContext,  # noqa: N802 (Qt API)
                         feedback: QgsProcessingFeedback) -> None:
        if layer is not None and layer.isValid():
            message, ok = layer.loadNamedStyle(str(style_path(self.style)))
            if not ok:
                feedback.reportError(f"could not apply style {self.style}: {message}")
            layer.triggerRepaint()


class RSLabAlgorithm(QgsProcessingAlgorithm):
    """Base class: subclasses implement `execute(parameters, context, feedback) -> dict`.

    Subclasses name their toolbox group in GROUP (shown) and GROUP_ID (stable).
    """

    GROUP = ""
    GROUP_ID = ""

    def group(self) -> str:
        return self.GROUP

    def groupId(self) -> str:  # noqa: N802
        return self.GROUP_ID

    def icon(self) -> QIcon:
        return QIcon(str(ICON))

    def helpUrl(self) -> str:  # noqa: N802
        """The dialog's Help button: this algorithm's README section (QGIS's fallback, a page of its own
        manual for the provider, does not exist). Named from the provider's id, which the algorithm has only
        once the provider holds it."""
        return help_url(f"{PROVIDER_ID}:{self.name()}")

    def createInstance(self) -> "RSLabAlgorithm":  # noqa: N802
        return type(self)()

    def processAlgorithm(self, parameters: Dict[str, Any], context: QgsProcessingContext,  # noqa: N802
                         feedback: QgsProcessingFeedback) -> Dict[str, Any]:
        """QGIS 3.22 keeps every exception raised here, with its traceback, for good (its sip error handler
        never releases it), and with them the frames of the run and their locals (the image, its statistics,
        the model): each exception's frames are cleared before it leaves, and this frame and its callers (a
        batch dialog's, which hold its progress task) once they have returned."""
        feedback = feedback or QgsProcessingFeedback()  # the API allows none
        RUNNING[feedback] = on_gui_thread()
        raised = True
        try:
            results = self.execute(parameters, context, feedback)
            raised = False
            return results
        except JobCancelled as exc:
            # a failure, not an empty success: `qgis_process run … && next_step` went on after a cancel (exit
            # status 0), and processing.run returned {} to a script that then met a KeyError
            raise processing_error(exc, CANCELLED_MESSAGE) from exc
        except RSLabError as exc:
            raise processing_error(exc, str(exc)) from exc
        except ImportError as exc:  # torch not installed yet: say what to do, not a traceback
            message = missing_package_message(exc)
            traceback.clear_frames(exc.__traceback__)
            if message is None:
                raise
            raise processing_error(exc, message) from exc
        except Exception as exc:  # An engine fault: QGIS logs the traceback (file and line, not the locals).
            traceback.clear_frames(exc.__traceback__)
            raise
        finally:
            RUNNING.pop(feedback, None)
            if raised:
                clear_when_returned(sys._getframe())

    @staticmethod
    def run_engine(job: Callable[..., Any], *args: Any) -> Any:
        """`job(*args)`, the engine's work: below QGIS's priority when Processing runs it in the background
        (core.device.run_at_job_priority: QGIS draws the map in the same pool of threads); as it is on the GUI
        thread (qgis_process, a batch or a model dialog), whose priority must stay QGIS's."""
        return job(*args) if on_gui_thread() else run_at_job_priority(job, *args)

    def execute(self, parameters: Dict[str, Any], context: QgsProcessingContext,
                feedback: QgsProcessingFeedback) -> Dict[str, Any]:
        raise QgsProcessingException(f"{self.name()} does not implement execute()")

    def checkParameterValues(self, parameters: Dict[str, Any],  # noqa: N802
                             context: QgsProcessingContext) -> Tuple[bool, str]:
        """Processing's checks, then `check_parameters`: the dialog warns before a run starts, processing.run
        and qgis_process refuse before any work (QGIS 3.22's batch dialog calls this only as each row starts)."""
        ok, message = super().checkParameterValues(parameters, context)
        if not ok:
            return ok, self._not_a_raster(parameters) or message
        try:
            self.check_parameters(parameters, context)
        except RSLabError as exc:
            return False, str(exc)
        return True, ""

    def _not_a_raster(self, parameters: Dict[str, Any]) -> str:
        """For a raster parameter given a file that exists but is no raster (a vector mask as REFERENCE):
        Processing's own message says 'not found'."""
        for definition in self.parameterDefinitions():
            value = parameters.get(definition.name())
            if (isinstance(definition, QgsProcessingParameterRasterLayer) and isinstance(value, str)
                    and os.path.isfile(value) and not QgsRasterLayer(value, "", "gdal").isValid()):
                message = f"{definition.name()}: {value} is not a raster GDAL can read"
                if not QgsVectorLayer(value, "", "ogr").isValid():
                    return message
                polygons = f"{definition.name()}_POLYGONS"  # detect_changes' REFERENCE, train's LABEL
                if self.parameterDefinition(polygons) is not None:
                    return message + f" (a vector layer: give it as {polygons})"
                # a mask drawn as polygons can be burnt into a raster; an image cannot come from a vector
                return message + (" (a vector layer: rasterise it first)" if definition.name() == "REFERENCE"
                                  else " (a vector layer)")
        return ""

    def check_parameters(self, parameters: Dict[str, Any], context: QgsProcessingContext) -> None:
        """Cheap checks of parameter values and combinations (the engine's own), RSLabError when wrong; no file
        is read. Subclasses extend it."""

    def output_file_path(self, parameters: Dict[str, Any], name: str, context: QgsProcessingContext) -> str:
        """A file output's path with ~ expanded ('' when not asked for): the path the engine writes, returned
        to a model's next step as it is."""
        return os.path.expanduser(self.parameterAsFileOutput(parameters, name, context) or "")

    def raster_path(self, parameters: Dict[str, Any], name: str, context: QgsProcessingContext,
                    optional: bool = False) -> Optional[str]:
        """The file behind a raster layer parameter; RSLabError if the layer is not a local file (None for an
        optional parameter left empty)."""
        layer = self.parameterAsRasterLayer(parameters, name, context)
        if layer is None:
            if optional:
                return None
            raise RSLabError(f"{name}: no raster layer was given")
        return layer_file(layer, name)

    def band_list(self, parameters: Dict[str, Any], name: str,
                  context: QgsProcessingContext) -> Optional[Tuple[int, ...]]:
        """A multiple band parameter's bands in the order given (None when empty). Commas are read as QGIS
        reads semicolons: its own parser took '3,2,1' (as the messages write band lists) for band 0, and an empty
        value for band 0 too (`BANDS=` from a script's empty variable: '' from processing.run, a null QVariant
        from qgis_process)."""
        value = parameters.get(name)
        if value is None or (isinstance(value, QVariant) and value.isNull()) or \
                (isinstance(value, str) and not value.strip()):
            return None
        if isinstance(value, str) and re.search(r"[,\s]", value.strip()):
            parts = [part for part in re.split(r"[;,\s]+", value.strip()) if part]
            if not all(part.isdigit() for part in parts):
                raise RSLabError(f"{name}: '{value}' is not a list of band numbers (write 3,2,1 or 3;2;1)")
            return tuple(int(part) for part in parts) or None
        return tuple(self.parameterAsInts(parameters, name, context)) or None

    @staticmethod
    def output_asked(parameters: Dict[str, Any], name: str) -> bool:
        """Whether an optional output has a destination, read from its raw value for checks made before a run:
        parameterAsOutputLayer names a new temporary file at each call on TEMPORARY_OUTPUT and has Processing load
        it, so a check that called it left a layer that never came ('The following layers were not correctly
        generated', after a good run of the dialog)."""
        value = parameters.get(name)
        if isinstance(value, QgsProcessingOutputLayerDefinition):
            value = value.sink.staticValue()
        return value not in (None, "")

    @staticmethod
    def given(parameters: Dict[str, Any], name: str) -> bool:
        """Whether an optional parameter has a value (a layer, a path; not None or an empty string)."""
        return parameters.get(name) not in (None, "")

    @classmethod
    def refuse_both(cls, parameters: Dict[str, Any], first: str, second: str) -> None:
        """RSLabError when both of two alternative inputs are given (checked before a run and again in it: a
        model's child algorithm runs without the dialog's check)."""
        if cls.given(parameters, first) and cls.given(parameters, second):
            raise RSLabError(f"give {first} or {second}, not both")

    def burnt_polygons(self, parameters: Dict[str, Any], name: str, field_name: str, context: QgsProcessingContext,
                       feedback: QgsProcessingFeedback, grid: str) -> str:
        """Label polygons (parameter `name`, values in `field_name`: 1 no change, 2 change) burnt onto `grid`
        as a partial label raster in the Processing temp folder (core/change_labels.py)."""
        source, layer_name = self.parameterAsCompatibleSourceLayerPathAndLayerName(
            parameters, name, context, ["gpkg", "shp"], "gpkg", feedback)
        field = self.parameterAsString(parameters, field_name, context) or "label"
        # a folder of its own per run: two runs at once (Processing runs algorithms in the background) on images
        # of one file name would otherwise burn into one file
        output = QgsProcessingUtils.generateTempFilename(f"{name.lower()}_{os.path.basename(grid)}.tif")
        burnt = burn_labels(source, field, grid, output, layer_name or None)
        feedback.pushInfo(f"{burnt.polygons} polygons of {name} burnt onto the before image's grid: "
                          f"{burnt.no_change_pixels:,} no-change and {burnt.change_pixels:,} change pixels")
        return burnt.path

    def output_layer_path(self, parameters: Dict[str, Any], name: str, context: QgsProcessingContext) -> str:
        """An output layer's file, with ~ expanded ('' when not asked for).

        The engine expands ~ when it writes; the path Processing loads (and returns to a model) must be that
        same file, or QGIS reports the output as 'not correctly generated' and never styles it.
        """
        path = self.parameterAsOutputLayer(parameters, name, context) or ""
        expanded = os.path.expanduser(path)
        if expanded != path and context.willLoadLayerOnCompletion(path):
            layers = context.layersToLoadOnCompletion()  # a copy: re-keyed, then set back
            layers[expanded] = layers.pop(path)
            context.setLayersToLoadOnCompletion(layers)
        return expanded

    @staticmethod
    def post_process_output(context: QgsProcessingContext, layer_id: str,
                            post: QgsProcessingLayerPostProcessorInterface) -> None:
        """Have Processing run `post` on output `layer_id` when it loads it (a no-op when it does not load it)."""
        if context.willLoadLayerOnCompletion(layer_id):
            _KEEP_ALIVE.append(post)
            context.layerToLoadOnCompletionDetails(layer_id).setPostProcessor(post)

    @classmethod
    def style_output(cls, context: QgsProcessingContext, layer_id: str, style: str) -> None:
        """Have Processing apply resources/styles/<style> when it loads output `layer_id`."""
        cls.post_process_output(context, layer_id, StyleFromQml(style))
