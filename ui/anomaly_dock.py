"""The hyperspectral anomaly dock: run BSDM + RX, RX or local RX on a raster layer, compare methods, look at spectra.

    widgets -> AnomalyRequest (paths + AnomalyParams)             [GUI thread]
    -> detect_anomalies (metrics and exact ROC), scene mean spectrum  [QgsTask worker, files only]
    -> one layer group above the input, metrics, ROC, spectrum        [GUI thread]

ROC curves (ui/roc_plot.py) are kept per input layer and method (the latest
run of each), so runs of different methods on one layer can be compared in
one plot.

The spectrum plot (ui/spectrum_plot.py) shows a picked pixel's spectrum (one
pixel window read from the layer's file, core/spectra.py) beside the scene's
mean spectrum (computed once per file by windows, in the worker).

Each run also lists the strongest anomalies (core/anomaly_peaks.py, found in
the worker); choosing one takes the map there, flashes its pixel and shows
its spectrum, so an analyst can walk through the candidates strongest first.
"""
from __future__ import annotations

import html
import os
import time
from dataclasses import dataclass
from functools import partial
from typing import Callable, Dict, Optional, Sequence, Tuple

import numpy as np
from qgis.core import (
    QgsGeometry,
    QgsLayerTreeGroup,
    QgsLayerTreeLayer,
    QgsPointXY,
    QgsProject,
    QgsRasterLayer,
    QgsRectangle,
)
from qgis.gui import QgsMapCanvas, QgsMapToolEmitPoint
from qgis.PyQt import sip
from qgis.PyQt.QtCore import Qt, pyqtSignal
from qgis.PyQt.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from ..core.anomaly import AnomalyOutputs, AnomalyResult, detect_anomalies
from ..core.anomaly_mask import MaskOutputs, MaskResult, describe_mask_detection, threshold_scores
from ..core.anomaly_params import LRX_MAX_OUTER, METHOD_LABELS, AnomalyParams
from ..core.anomaly_peaks import PEAK_SEPARATION, Peak
from ..core.bands import true_colour_bands
from ..core.errors import RSLabError
from ..core.job import JobMonitor
from ..core.spectra import mean_spectrum_job, read_pixel, read_spectrum, scene_mean
from . import task as tasks
from .job_dock import JobDock, layer_file, safe_name, unused_stem
from .layers import MASK_STYLE, PEAKS_STYLE, SCORES_STYLE, LayerSpec, fit_score_stretch, make_layer, show_true_colour
from .map_pixels import canvas_to_layer, layer_to_canvas, pixel_at, pixel_rectangle, release_map_tool
from .peak_table import PeakTable
from .roc_plot import MaskPoint, RocCurve, RocPlot, thinned_roc
from .settings import remember
from .spectrum_plot import SpectrumPlot
from .widgets import MultibandRasterCombo, double_spin_box, folder_widget, odd_spin_box, scroll_body, spin_box

METHOD_TIPS = {
    "bsdm_rx": "A spectral diffusion denoiser trained on the scene removes the background, then global RX",
    "rx": "Global RX: Mahalanobis distance of each pixel to the scene mean",
    "lrx": "Local RX: each pixel against the ring between an outer and an inner (guard) window",
}
TRUE_COLOUR_TIP = "Draw the image from its bands nearest red, green and blue light (640, 550, 470 nm)"
ZOOM_PIXELS = 64  # going to an anomaly on a map that shows over 4 times this many pixels across zooms to this many
NO_PEAKS_TEXT = "Run a method to list this image's strongest anomalies."
MASK_OF = "rslab/mask_of"  # on a mask layer: the scores file it cuts (a new mask hides the others of those scores)


# --- the part that runs in the worker: files in, numbers out (no Qt) ---------------------------------


@dataclass
class AnomalyRun:
    """What the worker hands back: the core result, the ROC (with a reference), the mean spectrum and wall time."""

    result: AnomalyResult
    roc: Optional[RocCurve]
    mean_spectrum: Optional[np.ndarray]
    seconds: float


@dataclass(frozen=True)
class AnomalyRequest:
    """Everything the worker needs, read from the widgets on the GUI thread."""

    cube: str
    reference: Optional[str]
    outputs: AnomalyOutputs
    params: AnomalyParams
    layer_id: str
    layer_name: str
    reference_layer_id: Optional[str]  # the results go above it too
    output_dir: str
    created_dir: bool  # a temporary folder made for this run (removed again if the run leaves it empty)
    need_mean: bool  # the scene mean spectrum of `cube` is not cached yet

    def job(self, progress: Callable[[float, str], None], cancelled: Callable[[], bool]) -> AnomalyRun:
        """The core job, then the ROC points and the mean spectrum (worker thread: files only)."""
        start = time.perf_counter()
        # the mean first: a cancel during it leaves nothing written, where after the detector had
        # renamed its outputs into place it would fail a finished run and leave its files behind
        before = 0.1 if self.need_mean else 0.0
        mean = scene_mean(self.cube, JobMonitor(progress, cancelled, 0.0, before)) if self.need_mean else None
        result = detect_anomalies(self.cube, self.outputs, self.params, self.reference,
                                  lambda fraction, text: progress(before + (1.0 - before) * fraction, text), cancelled)
        roc = thinned_roc(result.roc) if result.roc is not None else None
        return AnomalyRun(result, roc, mean, time.perf_counter() - start)


@dataclass(frozen=True)
class MaskRequest:
    """A new mask of an image's latest scores at the form's false-alarm rate (the 'New mask' button): the
    scores are cut again (core/anomaly_mask.py), nothing is detected again."""

    scores: str
    reference: Optional[str]
    outputs: MaskOutputs
    rate: float
    method: str  # of the run whose scores are cut
    layer_id: str
    layer_name: str
    reference_layer_id: Optional[str]
    output_dir: str  # the run's folder (the scores' folder)
    created_dir: bool = False

    def job(self, progress: Callable[[float, str], None], cancelled: Callable[[], bool]) -> MaskResult:
        return threshold_scores(self.scores, self.outputs, self.rate, self.reference, progress, cancelled)


def mask_outputs(scores: str, rate: float) -> MaskOutputs:
    """A new mask's file beside the scores it cuts (`<run>_<rate>_mask.tif`), not overwriting an earlier one."""
    folder, name = os.path.split(scores)
    run = name[:-len("_scores.tif")] if name.endswith("_scores.tif") else os.path.splitext(name)[0]
    return MaskOutputs(f"{unused_stem(folder, f'{run}_{rate:g}', ('mask.tif',))}_mask.tif")


def mask_layer(path: str, method: str, rate: float, scores: str) -> QgsRasterLayer:
    """A mask raster as the dock adds it: styled, named by its method and rate, marked with the scores it cuts."""
    layer = make_layer(LayerSpec(path, f"{METHOD_LABELS[method]} mask (false-alarm rate {rate:g})", MASK_STYLE))
    layer.setCustomProperty(MASK_OF, scores)
    return layer


def mask_paragraph(rate: float, threshold: float, pixels: int, detection: Dict[str, object],
                   notes: Sequence[str] = ()) -> str:
    """The readout's lines on a mask: where it cuts, how many pixels it flags, what it finds of a reference."""
    flagged = "1 pixel scores" if pixels == 1 else f"{pixels:,} pixels score"
    lines = [f"Mask: {flagged} above {threshold:.4g} (false-alarm rate {rate:g})"]
    found = describe_mask_detection(detection)
    if found:
        lines.append(found[0].upper() + found[1:])
    return "<p>" + "<br>".join(html.escape(line) for line in [*lines, *notes]) + "</p>"


def output_paths(folder: str, layer_name: str, method: str, with_mask: bool) -> AnomalyOutputs:
    """Output file names in `folder` that do not overwrite an earlier run's files."""
    base = unused_stem(folder, f"{safe_name(layer_name)}_{method}",
                       ("scores.tif", "mask.tif", "report.json", "peaks.gpkg"))
    return AnomalyOutputs(scores=f"{base}_scores.tif", mask=f"{base}_mask.tif" if with_mask else None,
                          report=f"{base}_report.json", peaks=f"{base}_peaks.gpkg")


# --- the widget ---------------------------------------------------------------------------------------


class AnomalyDock(JobDock):
    """Dock body for hyperspectral anomaly detection (the plugin wraps it in a QDockWidget)."""

    MESSAGE_TITLE = "RS Lab: anomaly detection"
    HELP_SECTION = "Hyperspectral anomaly detection"
    TEMP_PREFIX = "rslab-anomalies-"

    runFinished = pyqtSignal(object, str)  # AnomalyResult (None on failure), error text ("" on success)
    meanReady = pyqtSignal(str)  # the file whose mean spectrum was just computed (lazy path)

    def __init__(self, iface=None, parent: Optional[QWidget] = None) -> None:
        super().__init__(parent)
        self.iface = iface
        self.result: Optional[AnomalyResult] = None
        self.group: Optional[QgsLayerTreeGroup] = None
        self.roc_runs: Dict[str, Dict[str, RocCurve]] = {}  # input layer id -> method -> latest ROC
        self._pick_status = ""  # the status a pick that showed no spectrum set (see _pick_message)
        self._roc_reference: Dict[str, Optional[str]] = {}  # input layer id -> the reference its ROCs used
        # input layer id -> its latest run: the picked pixel's score, the strongest anomalies listed, new masks
        self._latest: Dict[str, AnomalyRun] = {}
        self._masks: Dict[str, MaskResult] = {}  # input layer id -> the latest new mask of its latest run's scores
        self._metrics: Dict[str, str] = {}  # input layer id -> its latest run's readout (shown with that image)
        self.mean_spectra: Dict[str, np.ndarray] = {}  # file -> scene mean spectrum
        self._mean_tasks: Dict[str, tasks.JobTask] = {}
        self._request: Optional[AnomalyRequest] = None
        self.map_tool: Optional[QgsMapToolEmitPoint] = None
        self._build()
        remember("anomaly", {"method": self.method_combo, "iterations": self.iterations_spin, "seed": self.seed_spin,
                             "inner_window": self.inner_spin, "outer_window": self.outer_spin,
                             "mask": self.far_check, "false_alarm_rate": self.far_spin, "output_folder": self.output_dir})
        self._connect()
        self._update_method_widgets()
        self._show_roc_of_current_layer()
        self._set_running(False)

    # construction -----------------------------------------------------------------------------------
    def _build(self) -> None:
        self._build_inputs()
        self._build_run_widgets()
        self.roc = RocPlot(self)
        self.spectrum = SpectrumPlot(self)
        self._layout()

    def _build_inputs(self) -> None:
        self.layer_combo = MultibandRasterCombo(self)
        self.layer_combo.setToolTip("The hyperspectral image (a raster layer with many bands, stored in a file; "
                                    "one-band layers are not listed)")
        self.method_combo = QComboBox(self)
        for index, (method, label) in enumerate(METHOD_LABELS.items()):
            self.method_combo.addItem(label, method)
            self.method_combo.setItemData(index, METHOD_TIPS[method], Qt.ToolTipRole)
        self.method_combo.setSizeAdjustPolicy(QComboBox.AdjustToMinimumContentsLengthWithIcon)
        self.iterations_spin = spin_box(self, 1, 100_000, 500, 50, "BSDM training iterations (the paper uses 500)")
        self.seed_spin = spin_box(self, 0, 99_999, 0, 1, "Random seed: the same seed gives the same scores")
        self.inner_spin = odd_spin_box(self, 1, LRX_MAX_OUTER - 2, 3,
                                       "Inner (guard) window in pixels, odd; it should cover a target")
        self.outer_spin = odd_spin_box(self, 3, LRX_MAX_OUTER, 11,
                                       f"Outer window in pixels, odd, larger than the inner one, at most {LRX_MAX_OUTER}")
        self.reference_combo = self._raster_combo(allow_empty=True)
        self.reference_combo.setToolTip("Optional anomaly reference (non-zero = anomaly; on another grid it is resampled): "
                                        "gives AUC(D,F), AUC(F,τ), AUC_BS and the ROC curve")
        self.far_check = QCheckBox("false-alarm rate", self)
        self.far_check.setToolTip("Also write a mask of the pixels above the score that this share of pixels exceeds")
        self.far_spin = double_spin_box(self, 0.0001, 0.5, 0.01, 4, 0.005)
        self.mask_button = QPushButton("New mask", self)
        self.mask_button.setToolTip("Cut the picked image's latest scores at this false-alarm rate: a new mask in "
                                    "seconds, without detecting again (BSDM would train again)")
        self.output_dir = folder_widget(self, "a new temporary folder per run")
        self.output_dir.setToolTip("Output folder for the scores, mask and report")

    def _build_run_widgets(self) -> None:
        self._build_job_widgets("Detect anomalies")
        self.metrics_label = QLabel(self)
        self.metrics_label.setWordWrap(True)
        self.metrics_label.setTextInteractionFlags(Qt.TextSelectableByMouse)
        # made before the spectrum's buttons: Tab follows the order widgets are made in, which is their layout's
        self.peak_caption = QLabel(NO_PEAKS_TEXT, self)
        self.peak_caption.setWordWrap(True)
        self.peak_table = PeakTable(self)
        self.pick_button = QPushButton("Pick pixel", self)
        self.pick_button.setCheckable(True)
        self.pick_button.setToolTip("Click a pixel on the map to plot its spectrum beside the scene mean")
        self.pick_button.setEnabled(self.iface is not None)
        self.true_colour_button = QPushButton("True colour", self)
        self.true_colour_button.setToolTip(TRUE_COLOUR_TIP)

    def _layout(self) -> None:
        inputs = QFormLayout()
        inputs.addRow("Image", self.layer_combo)
        inputs.addRow("Method", self.method_combo)
        bsdm = QHBoxLayout()
        bsdm.addWidget(self.iterations_spin, 1)
        bsdm.addWidget(QLabel("seed", self))
        bsdm.addWidget(self.seed_spin, 1)
        inputs.addRow("Iterations", bsdm)
        windows = QHBoxLayout()
        windows.addWidget(QLabel("inner", self))
        windows.addWidget(self.inner_spin, 1)
        windows.addWidget(QLabel("outer", self))
        windows.addWidget(self.outer_spin, 1)
        inputs.addRow("Windows", windows)
        inputs.addRow("Reference", self.reference_combo)
        far = QHBoxLayout()
        far.addWidget(self.far_check)
        far.addWidget(self.far_spin, 1)
        far.addWidget(self.mask_button)
        inputs.addRow("Mask", far)
        inputs.addRow("Output", self.output_dir)
        buttons = QHBoxLayout()
        buttons.addWidget(self.run_button, 1)
        buttons.addWidget(self.cancel_button)
        buttons.addWidget(self.help_button)
        results = QGroupBox("Result", self)
        result_layout = QVBoxLayout(results)
        result_layout.addWidget(self.metrics_label)
        result_layout.addWidget(self.roc, 1)
        peaks = QGroupBox("Strongest anomalies", self)
        peak_layout = QVBoxLayout(peaks)
        peak_layout.addWidget(self.peak_caption)
        peak_layout.addWidget(self.peak_table)
        spectrum = QGroupBox("Spectrum", self)
        spectrum_layout = QVBoxLayout(spectrum)
        view_buttons = QHBoxLayout()
        view_buttons.addWidget(self.pick_button, 1)
        view_buttons.addWidget(self.true_colour_button)
        spectrum_layout.addLayout(view_buttons)
        spectrum_layout.addWidget(self.spectrum, 1)
        body = QWidget(self)
        layout = QVBoxLayout(body)
        layout.addLayout(inputs)
        layout.addLayout(buttons)
        layout.addWidget(self.progress_bar)
        layout.addWidget(self.status_label)
        layout.addWidget(results, 1)
        layout.addWidget(peaks)
        layout.addWidget(spectrum, 1)
        scroll_body(self, body)

    def _connect(self) -> None:
        self.method_combo.currentIndexChanged.connect(self._update_method_widgets)
        self.far_check.toggled.connect(self.far_spin.setEnabled)
        self.far_check.toggled.connect(self._update_mask_button)
        self.layer_combo.layerChanged.connect(self._update_mask_button)
        self.mask_button.clicked.connect(self.new_mask)
        self.far_spin.setEnabled(self.far_check.isChecked())  # the mask choice may be restored (ui/settings.py)
        self.layer_combo.layerChanged.connect(self._show_roc_of_current_layer)
        self.reference_combo.layerChanged.connect(self._show_roc_of_current_layer)
        self.layer_combo.layerChanged.connect(self._update_true_colour_button)
        self.layer_combo.layerChanged.connect(self._show_peaks_of_current_layer)
        self.peak_table.peakChosen.connect(self.go_to_peak)
        self._update_true_colour_button()
        self.true_colour_button.clicked.connect(self.show_image_in_true_colour)
        self.run_button.clicked.connect(self.run)
        self.cancel_button.clicked.connect(self.cancel)
        self.pick_button.toggled.connect(self._toggle_pick)
        self._watch_form(self.layer_combo.layerChanged, self.reference_combo.layerChanged,
                         self.method_combo.currentIndexChanged, self.output_dir.fileChanged)

    def _update_method_widgets(self) -> None:
        method = self.method_combo.currentData()
        for spin in (self.iterations_spin, self.seed_spin):
            spin.setEnabled(method == "bsdm_rx")
        for spin in (self.inner_spin, self.outer_spin):
            spin.setEnabled(method == "lrx")

    # running --------------------------------------------------------------------------------------------
    def build_request(self) -> AnomalyRequest:
        """Read the widgets into an AnomalyRequest (GUI thread); RSLabError names what is missing or wrong."""
        layer = self.layer_combo.currentLayer()
        cube = layer_file(layer, "hyperspectral")
        reference_layer, reference = self._reference_of(layer)
        params = self.params()
        folder, created = self._output_folder()
        return AnomalyRequest(
            cube=cube, reference=reference,
            outputs=output_paths(folder, layer.name(), params.method, params.false_alarm_rate is not None),
            params=params, layer_id=layer.id(), layer_name=layer.name(),
            reference_layer_id=reference_layer.id() if reference_layer is not None else None,
            output_dir=folder, created_dir=created,
            need_mean=cube not in self.mean_spectra,
        )

    def _reference_of(self, layer: QgsRasterLayer) -> Tuple[Optional[QgsRasterLayer], Optional[str]]:
        """The reference layer picked and its file (None, None without one); RSLabError when it is `layer`."""
        reference_layer = self.reference_combo.currentLayer()
        if reference_layer is None:
            return None, None
        reference = layer_file(reference_layer, "reference")
        if reference_layer.id() == layer.id():
            raise RSLabError("the reference is the image itself; pick the anomaly map (non-zero = anomaly)")
        return reference_layer, reference

    def params(self) -> AnomalyParams:
        """The method and only its own settings (a disabled spin box never makes a run fail)."""
        method = self.method_combo.currentData()
        options = {"method": method}
        if method == "bsdm_rx":
            options.update(iterations=self.iterations_spin.value(), seed=self.seed_spin.value())
        if method == "lrx":
            options.update(inner_window=self.inner_spin.value(), outer_window=self.outer_spin.value())
        if self.far_check.isChecked():
            options["false_alarm_rate"] = round(self.far_spin.value(), 6)
        return AnomalyParams(**options)

    def run(self) -> None:
        """Start detection in the background (the 'Detect anomalies' button)."""
        if self.is_running():
            return  # one run at a time; the button is disabled meanwhile
        self.metrics_label.clear()  # also when the run is refused: no earlier figures under a 'Failed' line
        try:
            request = self.build_request()
        except RSLabError as exc:
            self._refuse(str(exc))
            return
        self.result = None
        self._set_status(f"Detecting anomalies in {request.layer_name} ({METHOD_LABELS[request.params.method]}) …")
        self.start_job(request, f"RS Lab: anomalies in {request.layer_name}")

    def _finished(self, run: Optional[AnomalyRun], error: str) -> None:
        """JobTask's callback, on the GUI thread."""
        request = self._end_job()
        if request is None:
            return
        if isinstance(request, MaskRequest):
            self._mask_finished(request, run, error)
            return
        if run is None:
            self._remove_empty_folder(request)
            self._fail(error)
            if tasks.was_cancelled(error):  # the image's last finished run stands: its readout beside its ROC
                self._show_roc_of_current_layer()
            return
        self.result = run.result
        if run.mean_spectrum is not None:
            self.mean_spectra[request.cube] = run.mean_spectrum
        error = self._add_result_layers(request, run.result)
        if error:
            self._fail(error)
            return
        if self.group is not None:
            self._latest[request.layer_id] = run
            self._masks.pop(request.layer_id, None)
            self._remember_roc(request, run)
        self.progress_bar.setValue(100)
        self._metrics[request.layer_id] = self._metrics_text(run, request.layer_name)
        # the readout and the ROC are the image's picked now (another image picked during the run showed this
        # run's readout above its own curves); the status says where this run's results are
        self._show_roc_of_current_layer()
        self._show_peaks_of_current_layer()
        self._update_mask_button()
        status = self._done_text(request.output_dir)
        current = self.layer_combo.currentLayer()
        if QgsProject.instance().mapLayer(request.layer_id) is None:
            self.metrics_label.setText(self._metrics[request.layer_id])  # its image is gone: its readout (named)
        elif current is None or current.id() != request.layer_id:
            status += f" (a run on {request.layer_name}: pick it to see its readout)"
        self._set_status(status)
        self.runFinished.emit(run.result, "")

    def _add_layers(self, request: AnomalyRequest, result: AnomalyResult) -> QgsLayerTreeGroup:
        """One group above the input layer and its earlier runs (JobDock.add_result_group): the strongest
        anomalies (points labelled by rank) over the mask (if any) over the scores."""
        label = METHOD_LABELS[result.method]
        scores = make_layer(LayerSpec(result.outputs.scores, f"{label} scores", SCORES_STYLE))
        fit_score_stretch(scores)
        layers = [make_layer(LayerSpec(result.outputs.peaks, f"{label} strongest anomalies", PEAKS_STYLE,
                                       kind="vector")), scores]
        if result.outputs.mask:
            layers.insert(1, mask_layer(result.outputs.mask, result.method, result.params["false_alarm_rate"],
                                        result.outputs.scores))
        return self.add_result_group(f"Anomalies: {request.layer_name} ({label})", request.layer_id, layers,
                                     (request.reference_layer_id,))

    def _metrics_text(self, run: AnomalyRun, layer_name: str, mask: Optional[MaskResult] = None) -> str:
        """Run facts, then the AUCs as 'name value' pairs that wrap only between pairs (docks are narrow), then the
        mask: the run's, or `mask`, a new one of its scores."""
        result = run.result
        seconds = f"{run.seconds:.1f} s" if run.seconds >= 1 else f"{run.seconds:.2f} s"
        facts = [METHOD_LABELS[result.method], layer_name, result.device, seconds,
                 f"{result.width} × {result.height} px × {result.bands} bands"]
        text = "<p>" + " · ".join(html.escape(fact).replace(" ", "&nbsp;") for fact in facts) + "</p>"
        if result.metrics:
            pairs = [("AUC(D,F)", result.metrics["auc_df"]), ("AUC(F,τ)", result.metrics["auc_ftau"]),
                     ("AUC_BS", result.metrics["auc_bs"])]
            text += "<p>" + "&nbsp;&nbsp; ".join(f"{name}&nbsp;<b>{value:.4f}</b>" for name, value in pairs) + "</p>"
        else:
            text += "<p>Accuracy not computed: no reference layer was given.</p>"
        if mask is not None:
            text += mask_paragraph(mask.false_alarm_rate, mask.threshold, mask.mask_pixels, mask.mask_detection,
                                   mask.notes)
        elif result.threshold is not None:
            text += mask_paragraph(result.params["false_alarm_rate"], result.threshold, result.mask_pixels,
                                   result.mask_detection)
        if result.notes:  # how BSDM trained, a resampled reference, a denoiser read from a file
            text += "<p>" + "<br>".join(html.escape(note) for note in result.notes) + "</p>"
        return text

    def _remember_roc(self, request: AnomalyRequest, run: AnomalyRun) -> None:
        """Keep this run's ROC beside earlier ones on the same layer; a new reference starts the comparison over."""
        if run.roc is None:
            return
        if self._roc_reference.get(request.layer_id) != request.reference:
            self.roc_runs.pop(request.layer_id, None)
        self._roc_reference[request.layer_id] = request.reference
        self.roc_runs.setdefault(request.layer_id, {})[run.result.method] = run.roc

    def _current_reference(self) -> Optional[str]:
        layer = self.reference_combo.currentLayer()
        try:
            return layer_file(layer, "reference") if layer is not None else None
        except RSLabError:
            return None

    def _show_roc_of_current_layer(self, *_: object) -> None:
        """Draw the kept ROC curves of the image picked (one per method), when they were drawn against the
        reference picked now (curves of another reference, under a run without one, misled), and the readout
        of that image's latest run (another image's AUCs read as this one's)."""
        layer = self.layer_combo.currentLayer()
        self.metrics_label.setText(self._metrics.get(layer.id(), "") if layer is not None else "")
        runs = self.roc_runs.get(layer.id(), {}) if layer is not None else {}
        if runs and self._roc_reference.get(layer.id()) != self._current_reference():
            runs = {}
        self.roc.show_runs(runs, self._mask_point(layer, runs))

    def _mask_point(self, layer: Optional[QgsRasterLayer], runs: Dict[str, RocCurve]) -> Optional[MaskPoint]:
        """Where the picked image's latest mask (a new one, else its run's) lies on the curves shown, against their
        reference; None when there is none, or when it was counted against another reference or on scores whose
        curve is not shown."""
        latest = self._latest.get(layer.id()) if layer is not None else None
        if latest is None or latest.roc is None or latest.result.method not in runs:
            return None
        mask = self._masks.get(layer.id())
        if mask is not None:
            found, rate, reference = mask.mask_detection, mask.false_alarm_rate, mask.inputs.get("reference")
        else:
            found, rate = latest.result.mask_detection, latest.result.params.get("false_alarm_rate")
            reference = latest.result.inputs.get("reference")
        shown = self._roc_reference.get(layer.id())
        if not found or found["false_alarm_rate"] is None or not reference or not shown or \
                os.path.abspath(reference) != os.path.abspath(shown):
            return None
        return MaskPoint(found["false_alarm_rate"], found["detection_rate"], rate, latest.result.method)

    def _forget_results(self) -> None:
        """A reopened project has the same layer ids: its images showed the closed session's curves and readouts
        (of runs whose layers had gone with it)."""
        self.result = None
        for kept in (self.roc_runs, self._roc_reference, self._latest, self._masks, self._metrics):
            kept.clear()
        self._show_roc_of_current_layer()
        self._show_peaks_of_current_layer()
        self._update_mask_button()

    # a new mask of the latest scores ---------------------------------------------------------------------
    def _set_running(self, running: bool) -> None:
        super()._set_running(running)
        self._update_mask_button(running=running)

    def _update_mask_button(self, *_: object, running: Optional[bool] = None) -> None:
        """'New mask' works on the picked image's latest run, with a rate, between runs."""
        layer = self.layer_combo.currentLayer()
        running = self.is_running() if running is None else running
        self.mask_button.setEnabled(not running and self.far_check.isChecked() and layer is not None
                                    and layer.id() in self._latest)

    def build_mask_request(self) -> MaskRequest:
        """A new mask of the picked image's latest scores at the form's rate; RSLabError says what is missing."""
        layer = self.layer_combo.currentLayer()
        latest = self._latest.get(layer.id()) if layer is not None else None
        if latest is None:
            raise RSLabError("run a method on this image first: a new mask cuts its latest scores")
        scores = latest.result.outputs.scores
        if not os.path.isfile(scores):
            raise RSLabError(f"the latest run's scores ({scores}) are gone; run the method again")
        reference_layer, reference = self._reference_of(layer)
        rate = round(self.far_spin.value(), 6)
        return MaskRequest(scores=scores, reference=reference, outputs=mask_outputs(scores, rate), rate=rate,
                           method=latest.result.method, layer_id=layer.id(), layer_name=layer.name(),
                           reference_layer_id=reference_layer.id() if reference_layer is not None else None,
                           output_dir=os.path.dirname(scores))

    def new_mask(self) -> None:
        """Cut the picked image's latest scores at the form's false-alarm rate (the 'New mask' button)."""
        if self.is_running():
            return
        try:
            request = self.build_mask_request()
        except RSLabError as exc:
            self._refuse(str(exc))
            return
        self._set_status(f"Masking the {METHOD_LABELS[request.method]} scores of {request.layer_name} at a "
                         f"false-alarm rate of {request.rate:g} …")
        self.start_job(request, f"RS Lab: anomaly mask of {request.layer_name}")

    def _mask_finished(self, request: MaskRequest, result: Optional[MaskResult], error: str) -> None:
        """The new mask goes into its run's group, shown in place of the masks there before; the readout of
        that image gives its cut and, with a reference, what it finds."""
        if result is None:
            self._fail(error)
            return
        if not self.project_closed:
            try:
                self._add_mask_layer(request, result)
            except RSLabError as exc:
                self._fail(str(exc))
                return
        self.progress_bar.setValue(100)
        latest = self._latest.get(request.layer_id)
        if latest is not None and latest.result.outputs.scores == request.scores:
            self._masks[request.layer_id] = result
            self._metrics[request.layer_id] = self._metrics_text(latest, request.layer_name, result)
            self._show_roc_of_current_layer()
        self._set_status(self._done_text(request.output_dir))
        self.runFinished.emit(result, "")

    def _add_mask_layer(self, request: MaskRequest, result: MaskResult) -> None:
        """Above the scores it cuts, in their group (its other masks hidden: only the new cut shows); in a group
        of its own above the image when the scores are no longer in the project."""
        layer = mask_layer(result.outputs.mask, request.method, request.rate, request.scores)
        root = QgsProject.instance().layerTreeRoot()
        scores = next((node for node in root.findLayers()
                       if node.layer() is not None and node.layer().source() == request.scores), None)
        if scores is None:
            self.group = self.add_result_group(f"Anomalies: {request.layer_name} ({METHOD_LABELS[request.method]})",
                                               request.layer_id, [layer], (request.reference_layer_id,))
            return
        group = scores.parent()
        index = group.children().index(scores)
        for node in group.children():  # the masks of these scores: hidden, the new one above them all
            if isinstance(node, QgsLayerTreeLayer) and node.layer() is not None and \
                    node.layer().customProperty(MASK_OF) == request.scores:
                node.setItemVisibilityChecked(False)
                index = min(index, group.children().index(node))
        QgsProject.instance().addMapLayer(layer, False)
        group.insertLayer(index, layer)
        self.group = group

    # the strongest anomalies ----------------------------------------------------------------------------
    def _show_peaks_of_current_layer(self, *_: object) -> None:
        """List the strongest anomalies of the picked image's latest run (another image's would mislead)."""
        layer = self.layer_combo.currentLayer()
        latest = self._latest.get(layer.id()) if layer is not None else None
        self.peak_table.show_peaks(latest.result.peaks if latest is not None else [])
        if latest is None:
            self.peak_caption.setText(NO_PEAKS_TEXT)
            return
        method, peaks = latest.result.method, latest.result.peaks
        what = "go to it and see its spectrum" if self.iface is not None else "see its spectrum"
        self.peak_caption.setText(
            f"The {len(peaks)} highest peaks of the {METHOD_LABELS[method]} scores, each over "
            f"{PEAK_SEPARATION} pixels from a stronger one; choose one to {what}." if peaks else
            f"The {METHOD_LABELS[method]} run scored no valid pixel.")

    def go_to_peak(self, peak: Peak) -> Optional[np.ndarray]:
        """Centre the map on `peak` of the picked image (zoomed in to ZOOM_PIXELS pixels around it when the map
        shows far more), flash its pixel, and show its spectrum (show_spectrum_at's return)."""
        layer = self.layer_combo.currentLayer()
        if layer is None:
            return None
        try:
            pixel = pixel_rectangle(layer, peak.row, peak.col)
            on_canvas = layer_to_canvas(self._canvas(), pixel, layer)
        except RSLabError as exc:
            self._pick_message(str(exc))
            return None
        if self.iface is not None:
            canvas = self.iface.mapCanvas()
            view = QgsRectangle(on_canvas)
            view.scale(ZOOM_PIXELS)
            if canvas.extent().width() > 4 * view.width():
                canvas.setExtent(view)
            else:
                canvas.setCenter(on_canvas.center())
            canvas.refresh()
            canvas.flashGeometries([QgsGeometry.fromRect(pixel)], layer.crs())  # no CRS: drawn as it is
        return self.show_spectrum_at(on_canvas.center())

    # looking at the image -------------------------------------------------------------------------------
    def _true_colour_bands(self) -> Optional[Tuple[int, int, int]]:
        """The picked image's bands nearest red, green and blue light, from its file's band wavelengths."""
        layer = self.layer_combo.currentLayer()
        try:
            return true_colour_bands(layer_file(layer, "hyperspectral")) if layer is not None else None
        except RSLabError:
            return None

    def _update_true_colour_button(self, *_: object) -> None:
        """Enabled when the image's band wavelengths reach red, green and blue light."""
        found = self._true_colour_bands() is not None
        self.true_colour_button.setEnabled(found)
        self.true_colour_button.setToolTip(TRUE_COLOUR_TIP if found else
                                           f"{TRUE_COLOUR_TIP}. This image's bands carry no wavelengths that do.")

    def show_image_in_true_colour(self) -> Optional[Tuple[int, int, int]]:
        """Draw the picked image from its bands nearest 640, 550 and 470 nm (the 'True colour' button)."""
        bands = self._true_colour_bands()
        if bands is None:
            self._set_status("This image's bands carry no wavelengths in the visible: it is drawn as before.")
            return None
        layer = self.layer_combo.currentLayer()
        show_true_colour(layer, bands)
        self._set_status(f"{layer.name()} drawn in true colour from bands {bands[0]}, {bands[1]}, {bands[2]}.")
        return bands

    # spectrum -------------------------------------------------------------------------------------------
    def _toggle_pick(self, on: bool) -> None:
        """Pick pixel on: clicks on the map canvas show spectra; off (or another map tool chosen): stop."""
        if self.iface is None:
            return
        canvas = self.iface.mapCanvas()
        if sip.isdeleted(canvas):  # QGIS closing: the canvas went first and deactivated the tool
            return
        if self.map_tool is None:
            self.map_tool = QgsMapToolEmitPoint(canvas)
            self.map_tool.canvasClicked.connect(self._canvas_clicked)
            self.map_tool.deactivated.connect(self._map_tool_deactivated)
            self.destroyed.connect(partial(release_map_tool, canvas, self.map_tool))
        if on:
            canvas.setMapTool(self.map_tool)
        elif canvas.mapTool() is self.map_tool:
            canvas.unsetMapTool(self.map_tool)

    def _canvas_clicked(self, point: QgsPointXY, _button: object) -> None:
        self.show_spectrum_at(point)

    def _map_tool_deactivated(self) -> None:
        self.pick_button.setChecked(False)

    def _canvas(self) -> Optional[QgsMapCanvas]:
        return self.iface.mapCanvas() if self.iface is not None else None

    def show_spectrum_at(self, point: QgsPointXY) -> Optional[np.ndarray]:
        """Plot the spectrum of the image pixel under `point` (map canvas coordinates) beside the scene mean.

        Returns the spectrum, or None (with the reason in the status line)
        when there is no image, the point is outside it or the pixel is nodata.
        """
        layer = self.layer_combo.currentLayer()
        try:
            path = layer_file(layer, "hyperspectral")
        except RSLabError as exc:
            self._report_failure(str(exc))
            return None
        try:
            cell = pixel_at(layer, canvas_to_layer(self._canvas(), point, layer))
        except RSLabError as exc:
            self._pick_message(str(exc))
            return None
        if cell is None:
            self._pick_message(f"That point is outside {layer.name()}; click a pixel of the image.")
            return None
        row, col = cell
        picked = read_spectrum(path, row, col)
        if picked is None:
            self._pick_message(f"Pixel (row {row}, column {col}) of {layer.name()} is nodata.")
            self.spectrum.clear()  # not the spectrum picked before under this status, nor another image's mean
            return None
        spectrum, bands, axis_title = picked
        if self._pick_status and self.status_label.text() == self._pick_status:
            self._set_status("")  # an earlier pick's 'is nodata' stood under this pixel's spectrum
        self._pick_status = ""
        self._clear_refusal()  # A refused run's reason, if any, was about the form.
        self.spectrum.show_pixel(bands, spectrum, axis_title, self._pixel_name(layer, row, col))
        if not self.spectrum.show_mean(self.mean_spectra.get(path)):
            self.spectrum.clear_mean()
            self._start_mean_task(path)
        return spectrum

    def _pick_message(self, text: str) -> None:
        """Why a click showed no spectrum, in the status line (cleared by the next pick that shows one)."""
        self._pick_status = text
        self._set_status(text)

    def _pixel_name(self, layer: QgsRasterLayer, row: int, col: int) -> str:
        """'pixel (row, col) of <layer> · <method> score s' (the latest run on this layer: its method named, as the
        runs' score ranges differ by orders of magnitude)."""
        pixel = f"pixel (row {row}, col {col}) of {layer.name()}"
        latest = self._latest.get(layer.id())
        scores = latest.result.outputs.scores if latest is not None else ""
        score = read_pixel(scores, row, col) if scores and os.path.isfile(scores) else None
        if score is not None:
            pixel += f" · {METHOD_LABELS[latest.result.method]} score {score[0]:.4g}"
        return pixel

    def _start_mean_task(self, path: str) -> None:
        """Compute the scene mean in the background (a pixel was picked before any run on this image)."""
        if path in self._mean_tasks:
            return
        task = tasks.JobTask(f"RS Lab: mean spectrum of {os.path.basename(path)}", mean_spectrum_job(path),
                             on_finished=partial(self._mean_finished, path))
        self._mean_tasks[path] = task
        self.destroyed.connect(partial(tasks.cancel_if_alive, task))
        tasks.start(task)

    def _mean_finished(self, path: str, mean: Optional[np.ndarray], error: str) -> None:
        if sip.isdeleted(self):
            return
        self._mean_tasks.pop(path, None)
        if mean is None:
            if not tasks.was_cancelled(error):
                self._report_failure(error, "mean spectrum")
            return
        self.mean_spectra[path] = mean
        self.spectrum.show_mean(mean)
        self.meanReady.emit(path)

    # messages -------------------------------------------------------------------------------------------