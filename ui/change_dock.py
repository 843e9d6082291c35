"""The change-detection dock: pick two raster layers, run AR-CDNet or CVA in the background, show the result.

The dock only turns widgets into a core job and the job's result back into
layers, labels and a plot:

    widgets -> ChangeRequest (paths + ChangeParams)  [GUI thread]
    -> detect_changes + uncertainty_histogram         [QgsTask worker, files only]
    -> one layer group above the after layer, metrics, histogram  [GUI thread]

The uncertainty histogram is computed in the worker from a windowed,
decimated read of the outputs, so a large raster neither blows memory nor
freezes QGIS after the run.
"""
from __future__ import annotations

import html
import math
import os
import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np
import pyqtgraph as pg
from qgis.core import (
    Qgis,
    QgsLayerTreeGroup,
)
from qgis.PyQt.QtCore import Qt, pyqtSignal
from qgis.PyQt.QtWidgets import (
    QComboBox,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from ..core.bands import band_ranges, model_colour_bands
from ..core.change_model import TASK, trained_bands
from ..core.change_detection import (MASK_NODATA, METHOD_LABELS, METHODS, ChangeOutputs, ChangeParams, ChangeResult,
                                     detect_changes)
from ..core.checkpoint import read_card
from ..core.errors import RSLabError
from ..core.raster_io import gdal_env, open_raster
from ..core.weights import shipped_checkpoints
from .job_dock import (CUSTOM_CHECKPOINT, JobDock, date_files, label_file, layer_file, safe_name, scratch_folder,
                       unused_stem, user_path)
from .layers import CHANGE_STYLE, UNCERTAINTY_STYLE, LayerSpec, make_layer
from .train_change_dialog import TrainChangeDialog
from .settings import remember
from .widgets import (BandChooser, checkpoint_widget, coding_combo, double_spin_box, folder_widget,
                      follow_label_layer, label_field_combo, label_layer_combo, legend_mark, result_plot,
                      scroll_body, tab_in_order)

COMBO_MIN_CHARACTERS = 9  # the Method and Model lists show at least this much of an entry at the dock's least width
CHANGED_PEN = (255, 26, 102)  # the change mask's colour (resources/styles/change_mask.qml)
UNCHANGED_PEN = (90, 140, 200)
HISTOGRAM_PENS = {"unchanged": UNCHANGED_PEN, "changed": CHANGED_PEN}
METRIC_ROWS = (
    ("precision", "Precision"),
    ("recall", "Recall"),
    ("f1", "F1"),
    ("iou", "IoU"),
    ("oa", "OA"),
    ("kappa", "Kappa"),
    ("uncertainty_auc", "Uncertainty AUC"),
)


# --- the part that runs in the worker: files in, numbers out (no Qt) ---------------------------------


@dataclass(frozen=True)
class UncertaintyHistogram:
    """Counts of uncertainty values for changed and unchanged pixels of a (decimated) change map."""

    edges: np.ndarray
    changed: np.ndarray
    unchanged: np.ndarray
    step: int  # one pixel read per step x step block

    @property
    def sampled(self) -> int:
        return int(self.changed.sum() + self.unchanged.sum())

    @property
    def changed_share(self) -> float:
        return float(self.changed.sum()) / self.sampled if self.sampled else 0.0


def uncertainty_histogram(
    change_path: str, uncertainty_path: str, bins: int = 40, max_pixels: int = 1_000_000, strip_rows: int = 256
) -> UncertaintyHistogram:
    """Histogram of the uncertainty (0..1) of changed vs unchanged pixels.

    Reads both rasters in horizontal strips, each decimated (nearest) by the
    same step, so at most about `max_pixels` pixels are counted and only one
    strip of `strip_rows` decimated rows is in memory at a time.
    """
    edges = np.linspace(0.0, 1.0, bins + 1)
    changed = np.zeros(bins, np.int64)
    unchanged = np.zeros(bins, np.int64)
    with gdal_env(), open_raster(change_path) as mask_ds, open_raster(uncertainty_path) as unc_ds:
        width, height = mask_ds.width, mask_ds.height
        step = max(1, math.ceil(math.sqrt(width * height / max_pixels)))
        out_width = max(1, width // step)
        for row in range(0, height, strip_rows * step):
            rows = min(strip_rows * step, height - row)
            out_rows = max(1, rows // step)
            window = ((row, row + rows), (0, width))
            mask = mask_ds.read(1, window=window, out_shape=(out_rows, out_width))
            unc = unc_ds.read(1, window=window, out_shape=(out_rows, out_width)).astype(np.float64)
            valid = (mask != MASK_NODATA) & np.isfinite(unc)
            index = np.clip((unc[valid] * bins).astype(np.int64), 0, bins - 1)
            is_changed = mask[valid] == 1
            changed += np.bincount(index[is_changed], minlength=bins)
            unchanged += np.bincount(index[~is_changed], minlength=bins)
    return UncertaintyHistogram(edges, changed, unchanged, step)


@dataclass
class ChangeRun:
    """What the worker hands back: the core result, the histogram and the job's wall time."""

    result: ChangeResult
    histogram: Optional[UncertaintyHistogram]
    seconds: float


@dataclass(frozen=True)
class ChangeRequest:
    """Everything the worker needs, read from the widgets on the GUI thread."""

    before: str
    after: str
    reference: Optional[str]
    outputs: ChangeOutputs
    params: ChangeParams
    before_name: str
    after_name: str
    after_layer_id: str
    output_dir: str
    other_layer_ids: Tuple[Optional[str], ...]  # the before layer and the reference: the results go above them
    created_dir: bool  # a temporary folder made for this run (removed again if the run leaves it empty)
    burnt_note: str = ""  # reference polygons: how many pixels they labelled (a 0-change burn went unseen)

    def job(self, progress: Callable[[float, str], None], cancelled: Callable[[], bool]) -> ChangeRun:
        """The core job plus the histogram read (worker thread: files only)."""
        start = time.perf_counter()
        result = detect_changes(self.before, self.after, self.outputs, self.params, self.reference,
                                progress, cancelled)
        if self.burnt_note:
            result.notes.insert(0, self.burnt_note)
        histogram = uncertainty_histogram(self.outputs.change, self.outputs.uncertainty) \
            if self.outputs.uncertainty else None
        return ChangeRun(result, histogram, time.perf_counter() - start)


def output_paths(folder: str, before_name: str, after_name: str) -> ChangeOutputs:
    """Output file names in `folder` that do not overwrite an earlier run's files."""
    base = unused_stem(folder, f"{safe_name(before_name)}_to_{safe_name(after_name)}",
                       ("change.tif", "probability.tif", "uncertainty.tif", "report.json"))
    return ChangeOutputs(change=f"{base}_change.tif", probability=f"{base}_probability.tif",
                         uncertainty=f"{base}_uncertainty.tif", report=f"{base}_report.json")


# --- the widget ---------------------------------------------------------------------------------------


class ChangeDetectionDock(JobDock):
    """Dock body for change detection (the plugin wraps it in a QDockWidget)."""

    MESSAGE_TITLE = "RS Lab: change detection"
    HELP_SECTION = "Change detection"
    TEMP_PREFIX = "rslab-changes-"

    runFinished = pyqtSignal(object, str)  # ChangeResult (None on failure), error text ("" on success)

    def __init__(self, iface=None, parent: Optional[QWidget] = None) -> None:
        super().__init__(parent)
        self.iface = iface
        self.result: Optional[ChangeResult] = None
        self.histogram_data: Optional[UncertaintyHistogram] = None
        self.group: Optional[QgsLayerTreeGroup] = None
        self.train_dialog: Optional[TrainChangeDialog] = None
        self._request: Optional[ChangeRequest] = None
        # (checkpoint path, modification time) -> the bands its model was trained on (None: all)
        self._model_bands: Dict[Tuple[str, float], Tuple[Optional[List[int]], List[str]]] = {}  # trained, names
        self._auto_bands: Optional[Tuple[int, ...]] = None  # bands checked for the model, not by the user
        self._burnt_dir: Optional[str] = None  # where reference polygons are burnt into a raster
        self._build()
        remember("change", {"method": self.method_combo, "threshold": self.threshold_spin,
                            "output_folder": self.output_dir})
        self._connect()
        self.reload_models()
        self._pick_distinct_layers()
        self._update_model_widgets()
        self._update_coding_widget()
        self._list_bands()
        self._set_running(False)

    # construction -----------------------------------------------------------------------------------
    def _build(self) -> None:
        self._build_inputs()
        self._build_run_widgets()
        self.histogram = self._make_histogram()
        self._layout()

    def _build_inputs(self) -> None:
        self.before_combo = self._raster_combo()
        self.after_combo = self._raster_combo()
        self.reference_combo = label_layer_combo(self, "")
        self.reference_field = label_field_combo(self)
        self.reference_combo.setToolTip("Optional change reference, a raster or polygons drawn where the answer is "
                                        "known: gives precision, recall, F1, IoU, OA, kappa "
                                        "and the uncertainty AUC over its labelled pixels")
        self.coding_combo = coding_combo(self, "How the reference's values read. References drawn for only part "
                                               "of a scene use 0 = not labelled, 1 = no change, 2 = change")
        self.method_combo = QComboBox(self)
        for method in METHODS:
            self.method_combo.addItem(METHOD_LABELS[method], method)
        self.method_combo.setSizeAdjustPolicy(QComboBox.AdjustToMinimumContentsLengthWithIcon)
        self.method_combo.setItemData(0, "AR-CDNet: a trained network with an online uncertainty branch",
                                      Qt.ToolTipRole)
        self.method_combo.setItemData(1, "Change vector analysis: spectral difference magnitude, Otsu threshold; "
                                         "its uncertainty is the closeness to the threshold", Qt.ToolTipRole)
        self.bands_combo = BandChooser(self, "Bands of both dates to use (none checked: all), e.g. Sentinel-2's 10 m "
                                             "bands for CVA; a model needs the bands it was trained on (a model "
                                             "trained on chosen bands checks them when selected)")
        self.model_combo = QComboBox(self)
        self.model_combo.setSizeAdjustPolicy(QComboBox.AdjustToMinimumContentsLengthWithIcon)
        # the dock's least width keeps this many characters of a model's name and the method legible (a 300 px
        # dock showed 'AR' beside Train…); longer names show whole in the list and as a tooltip
        for combo in (self.method_combo, self.model_combo):
            combo.setMinimumContentsLength(COMBO_MIN_CHARACTERS)
        self.model_file = checkpoint_widget(self)
        self.train_button = QPushButton("Train…", self)
        self.train_button.setToolTip("Train an AR-CDNet model on your own change pairs")
        self.threshold_spin = double_spin_box(self, 0.01, 0.99, 0.5, 2, 0.05,
                                              "Pixels whose change probability reaches this value are marked changed")
        self.output_dir = folder_widget(self, "a new temporary folder per run")

    def _build_run_widgets(self) -> None:
        self._build_job_widgets("Detect changes")
        self.metrics_label = QLabel(self)
        self.metrics_label.setWordWrap(True)
        self.metrics_label.setTextInteractionFlags(Qt.TextSelectableByMouse)

    def _make_histogram(self):
        """The plot with its two curves, made once: pyqtgraph under QGIS's PyQt fails when items are removed."""
        plot = result_plot(self, "uncertainty", "share of pixels", 160)
        plot.setXRange(0, 1, padding=0.02)
        # the legend is a label under the plot: inside it, a narrow dock's legend covered the bars near 0
        self.histogram_legend = QLabel(self)
        self.histogram_legend.setWordWrap(True)
        self.histogram_legend.setTextFormat(Qt.RichText)
        self.histogram_curves = {}
        for name, colour in HISTOGRAM_PENS.items():
            curve = pg.PlotDataItem(stepMode="center", fillLevel=0, pen=pg.mkPen(colour, width=2),
                                    brush=pg.mkBrush(*colour, 70), name=name)
            plot.addItem(curve)
            self.histogram_curves[name] = curve
        return plot

    def _layout(self) -> None:
        inputs = QFormLayout()
        inputs.addRow("Before", self.before_combo)
        inputs.addRow("After", self.after_combo)
        inputs.addRow("Method", self.method_combo)
        inputs.addRow("Bands", self.bands_combo)
        model_row = QHBoxLayout()
        model_row.addWidget(self.model_combo, 1)
        model_row.addWidget(self.train_button)
        inputs.addRow("Model", model_row)
        inputs.addRow("", self.model_file)
        inputs.addRow("Threshold", self.threshold_spin)
        inputs.addRow("Reference", self.reference_combo)
        inputs.addRow("Reference field", self.reference_field)
        inputs.addRow("Reference values", self.coding_combo)
        inputs.addRow("Output folder", self.output_dir)
        buttons = QHBoxLayout()
        buttons.addWidget(self.run_button, 1)
        buttons.addWidget(self.cancel_button)
        buttons.addWidget(self.help_button)
        results = QGroupBox("Result", self)
        result_layout = QVBoxLayout(results)
        result_layout.addWidget(self.metrics_label)
        result_layout.addWidget(self.histogram, 1)
        result_layout.addWidget(self.histogram_legend)
        body = QWidget(self)
        layout = QVBoxLayout(body)
        layout.addLayout(inputs)
        layout.addLayout(buttons)
        layout.addWidget(self.progress_bar)
        layout.addWidget(self.status_label)
        layout.addWidget(results, 1)
        scroll_body(self, body)
        tab_in_order([self.before_combo, self.after_combo, self.method_combo, self.bands_combo, self.model_combo,
                      self.train_button, self.model_file, self.threshold_spin, self.reference_combo,
                      self.reference_field, self.coding_combo, self.output_dir, self.run_button, self.cancel_button,
                      self.help_button])

    def _connect(self) -> None:
        self.method_combo.currentIndexChanged.connect(self._update_model_widgets)
        self.model_combo.currentIndexChanged.connect(self._update_model_widgets)
        self.model_combo.currentIndexChanged.connect(self._check_model_bands)
        self.method_combo.currentIndexChanged.connect(self._check_model_bands)
        self.model_file.fileChanged.connect(self._check_model_bands)
        self.reference_combo.layerChanged.connect(self._update_coding_widget)
        self.before_combo.layerChanged.connect(self._list_bands)
        for combo in (self.before_combo, self.after_combo, self.reference_combo):
            combo.layerChanged.connect(self._clear_result)
        self.run_button.clicked.connect(self.run)
        self.cancel_button.clicked.connect(self.cancel)
        self.train_button.clicked.connect(self.open_training)
        self._watch_form(self.before_combo.layerChanged, self.after_combo.layerChanged,
                         self.reference_combo.layerChanged, self.reference_field.fieldChanged,
                         self.method_combo.currentIndexChanged, self.model_combo.currentIndexChanged,
                         self.model_file.fileChanged, self.output_dir.fileChanged)

    def _pick_distinct_layers(self) -> None:
        """With two or more rasters in the project, start with different before and after layers."""
        if self.before_combo.currentLayer() is self.after_combo.currentLayer() and self.after_combo.count() > 1:
            self.after_combo.setCurrentIndex(1)

    # models ---------------------------------------------------------------------------------------------
    def reload_models(self) -> None:
        """List the shipped checkpoints present on disk, then the 'Checkpoint file…' entry."""
        self.model_combo.clear()
        for label, path in shipped_checkpoints(TASK):
            self.model_combo.addItem(label, path)
            self.model_combo.setItemData(self.model_combo.count() - 1, path, Qt.ToolTipRole)
        self.model_combo.addItem(CUSTOM_CHECKPOINT, None)

    def add_checkpoint(self, path: str, label: Optional[str] = None) -> None:
        """Offer a checkpoint (e.g. one just trained) in the model list and select it."""
        existing = self.model_combo.findData(path)
        if existing < 0:
            existing = self.model_combo.count() - 1  # before "Checkpoint file…"
            self.model_combo.insertItem(existing, label or f"Trained: {os.path.basename(path)}", path)
            self.model_combo.setItemData(existing, path, Qt.ToolTipRole)
        self.model_combo.setCurrentIndex(existing)
        self.method_combo.setCurrentIndex(self.method_combo.findData("arcdnet"))

    def selected_checkpoint(self) -> Optional[str]:
        """The checkpoint path to use, or RSLabError when 'Checkpoint file…' has no file."""
        path = self.model_combo.currentData()
        if path:
            return path
        path = user_path(self.model_file.filePath())
        if not path:
            raise RSLabError("choose a checkpoint file (.pt) for AR-CDNet, train one (Train…), or use CVA")
        return path

    def _update_model_widgets(self) -> None:
        uses_model = self.method_combo.currentData() == "arcdnet"
        self.model_combo.setEnabled(uses_model)
        self.model_file.setEnabled(uses_model and self.model_combo.currentData() is None)

    def _list_bands(self) -> None:
        """The before layer's bands as checkable items (none checked: all bands are used)."""
        self.bands_combo.list_layer(self.before_combo.currentLayer())
        self._auto_bands = None
        self._check_model_bands()

    def _check_model_bands(self) -> None:
        """Check the bands the selected model reads, when the before layer has them: those its card says it
        was trained on (a model trained with BANDS), else, for a model of red, green and blue (the shipped
        ones), the layer's red, green and blue bands when its band descriptions or wavelengths say which and
        they are not bands 1, 2, 3 (a file stored blue-green-red fed as is gives a meaningless map)."""
        # bands checked for the previous model go (those a user checked stay): CVA reads every band unless
        # told, and another model reads its own (a switch back to the RGB model kept 4, 3, 2, 8 and failed)
        if self._auto_bands is not None and self.bands_combo.chosen() == self._auto_bands:
            self.bands_combo.check([])
        self._auto_bands = None
        if self.method_combo.currentData() != "arcdnet":
            return
        path = self.model_combo.currentData() or user_path(self.model_file.filePath())
        if not os.path.isfile(path):
            return
        key = (path, os.path.getmtime(path))  # a checkpoint trained again to the same file is read again
        if key not in self._model_bands:
            try:  # the card alone, without torch: this is the GUI thread
                card = read_card(path)
                self._model_bands[key] = (trained_bands(card), list(card.bands or []))
            except RSLabError:  # not a checkpoint: running says so
                self._model_bands[key] = (None, [])
        bands, names = self._model_bands[key]
        if bands and max(bands) <= self.bands_combo.count():
            self.bands_combo.check(bands)
            self._auto_bands = self.bands_combo.chosen()
        else:
            self._check_colour_bands(names)

    def _check_colour_bands(self, names: List[str]) -> None:
        try:  # no file behind the layer, or one GDAL cannot read: nothing to check (running says why)
            wanted = model_colour_bands(names, layer_file(self.before_combo.currentLayer(), "before")) or []
        except RSLabError:
            return
        if wanted and wanted != list(range(1, len(wanted) + 1)) and not self.bands_combo.chosen():
            self.bands_combo.check(wanted)
            self._auto_bands = self.bands_combo.chosen()

    def chosen_bands(self) -> Optional[Tuple[int, ...]]:
        """The checked bands in their reading order (as checked, or the model's); None = all."""
        return self.bands_combo.chosen()

    def _update_coding_widget(self) -> None:
        """The coding is the user's for a reference raster; reference polygons impose the partial coding."""
        layer = self.reference_combo.currentLayer()
        polygons = follow_label_layer(layer, self.reference_field, self.coding_combo)
        self.coding_combo.setEnabled(layer is not None and not polygons)

    # running --------------------------------------------------------------------------------------------
    def build_request(self) -> ChangeRequest:
        """Read the widgets into a ChangeRequest (GUI thread); RSLabError names what is missing."""
        before_layer, after_layer = self.before_combo.currentLayer(), self.after_combo.currentLayer()
        before, after = date_files(before_layer, after_layer)
        reference, burnt_note = None, ""
        if self.reference_combo.currentLayer() is not None:  # polygons: burnt onto the before grid (a temp file)
            self._burnt_dir = self._burnt_dir or scratch_folder(self, "rslab-reference-")
            reference, burnt_note = label_file(self.reference_combo.currentLayer(), self.reference_field.currentField(),
                                      before, self._burnt_dir, "reference")
        method = self.method_combo.currentData()
        params = ChangeParams(method=method, threshold=round(self.threshold_spin.value(), 2),
                              model=self.selected_checkpoint() if method == "arcdnet" else None,
                              reference_coding=self.coding_combo.currentData(), bands=self.chosen_bands())
        folder, created = self._output_folder()
        return ChangeRequest(
            before=before, after=after, reference=reference,
            outputs=output_paths(folder, before_layer.name(), after_layer.name()), params=params,
            before_name=before_layer.name(), after_name=after_layer.name(), after_layer_id=after_layer.id(),
            output_dir=folder, created_dir=created, burnt_note=burnt_note,
            other_layer_ids=(before_layer.id(), self.reference_combo.currentLayer().id()
                             if self.reference_combo.currentLayer() is not None else None),
        )

    def run(self) -> None:
        """Start detection in the background (the 'Detect changes' button)."""
        if self.is_running():
            return  # one run at a time; the button is disabled meanwhile
        self._clear_result()  # also when the run is refused: the last run's figures under a 'Failed' line misled
        try:
            request = self.build_request()
        except RSLabError as exc:
            self._refuse(str(exc))
            return
        self._set_status(f"Detecting changes: {request.before_name} → {request.after_name} …")
        self.start_job(request, f"RS Lab: changes {request.before_name} → {request.after_name}")

    def _finished(self, run: Optional[ChangeRun], error: str) -> None:
        """JobTask's callback, on the GUI thread."""
        request = self._end_job()
        if request is None:
            return
        if run is None:
            self._remove_empty_folder(request)
            self._fail(error)
            return
        self.result, self.histogram_data = run.result, run.histogram
        error = self._add_result_layers(request, run.result)
        if error:
            self._fail(error)
            return
        self.progress_bar.setValue(100)
        self._show_metrics(run)
        self._plot_histogram(run.histogram)
        self._report_success(request, run.result)
        self.runFinished.emit(run.result, "")

    def _add_layers(self, request: ChangeRequest, result: ChangeResult) -> QgsLayerTreeGroup:
        """One group above the after, before and reference layers (JobDock.add_result_group): uncertainty
        overlay on top of the change mask.

        The probability raster is written to the output folder but not added (the mask and the
        uncertainty carry what a person looks at; the file is there for re-thresholding).
        """
        layers = [make_layer(LayerSpec(result.outputs.uncertainty, "uncertainty", UNCERTAINTY_STYLE)),
                  make_layer(LayerSpec(result.outputs.change, f"changes (threshold {result.threshold:g})",
                                       CHANGE_STYLE))]
        method = "CVA" if result.method == "cva" else f"AR-CDNet, {os.path.basename(result.model.get('path', ''))}"
        if result.bands:  # runs on other bands of one pair (the README compares them) told apart in the tree
            method += f", bands {band_ranges(result.bands)}"
        return self.add_result_group(f"Changes: {request.before_name} → {request.after_name} ({method})",
                                     request.after_layer_id, layers, request.other_layer_ids)

    def _show_metrics(self, run: ChangeRun) -> None:
        """Run facts, then the scores as 'name value' pairs that wrap only between pairs (docks are narrow)."""
        result = run.result
        seconds = f"{run.seconds:.1f} s" if run.seconds >= 1 else f"{run.seconds:.2f} s"
        facts = ["CVA" if result.method == "cva" else "AR-CDNet", result.device, seconds,
                 f"{result.width} × {result.height} px"]
        if result.bands:
            facts.append(f"bands {band_ranges(result.bands)}")
        if run.histogram is not None and run.histogram.sampled:
            facts.append(f"{100 * run.histogram.changed_share:.1f} % changed")
        text = "<p>" + " · ".join(html.escape(fact).replace(" ", "&nbsp;") for fact in facts) + "</p>"
        if result.metrics:
            pairs = []
            for key, label in METRIC_ROWS:
                value = result.metrics.get(key)
                shown = "n/a" if value is None else f"{value:.3f}"
                pairs.append(f"{label.replace(' ', '&nbsp;')}&nbsp;<b>{shown}</b>")
            text += "<p>" + "&nbsp;&nbsp; ".join(pairs) + "</p>"
            if result.reference_coding == "partial":
                text += f"<p>Scored on the reference's {result.metrics.get('pixels', 0):,} labelled pixels.</p>"
        else:
            text += "<p>Accuracy not computed: no reference layer was given.</p>"
        self.metrics_label.setText(text)

    def _clear_result(self, *_: object) -> None:
        """Empty the readout, histogram and status line: they describe the last run's pair and reference, and
        read as the new pair's once another is picked."""
        if self.is_running():
            return
        self.result, self.histogram_data = None, None
        self.metrics_label.clear()
        self._clear_histogram()
        self._set_status("")

    def _forget_results(self) -> None:
        self._clear_result()

    def _clear_histogram(self) -> None:
        for curve in self.histogram_curves.values():
            curve.clear()
        self.histogram_legend.clear()
        self.histogram.setTitle(None)

    def _plot_histogram(self, histogram: Optional[UncertaintyHistogram]) -> None:
        """Share of each class's pixels per uncertainty bin (shares, so the rarer class stays visible)."""
        self._clear_histogram()
        if histogram is None or not histogram.sampled:
            return
        entries = []
        for name, counts in (("unchanged", histogram.unchanged), ("changed", histogram.changed)):
            total = int(counts.sum())
            share = counts / total if total else counts.astype(float)
            curve = self.histogram_curves[name]
            curve.setData(histogram.edges, share)
            entries.append(f"{legend_mark(HISTOGRAM_PENS[name])}&nbsp;{name}&nbsp;({total:,}&nbsp;px)")
        self.histogram_legend.setText("&nbsp;&nbsp;&nbsp; ".join(entries))
        # margins in axis units: pyqtgraph leaves out end labels that would stick out (0 and 1 were not drawn)
        self.histogram.setXRange(-0.08, 1.08, padding=0)
        peak = max(float(curve.getData()[1].max()) for curve in self.histogram_curves.values())
        self.histogram.setYRange(-0.08 * peak, 1.1 * peak, padding=0)
        decimated = f" (1 in {histogram.step}×{histogram.step} px)" if histogram.step > 1 else ""
        self.histogram.setTitle(f"Uncertainty by class{decimated}", size="9pt")

    def _report_success(self, request: ChangeRequest, result: ChangeResult) -> None:
        text = self._done_text(request.output_dir)
        if result.notes:
            text += "".join(f"\nNote: {note}" for note in result.notes)
        self._set_status(text)
        if self.iface is not None and result.notes:
            self.iface.messageBar().pushMessage("RS Lab", "; ".join(result.notes), Qgis.Info, 10)

    def open_training(self) -> None:
        """Open (or raise) the training dialog; a trained model lands in the model list, selected."""
        if self.train_dialog is None:
            self.train_dialog = TrainChangeDialog(self)
            self.train_dialog.trained.connect(self.add_checkpoint)
        # a labelled pair here: offer to train on it, also when the dialog was opened before on another pair
        # (it kept that one); not while it trains
        if self.reference_combo.currentLayer() is not None and self.train_dialog.task is None:
            self.train_dialog.use_layers(self.before_combo.currentLayer(), self.after_combo.currentLayer(),
                                         self.reference_combo.currentLayer(), self.coding_combo.currentData(),
                                         self.reference_field.currentField())
        self.train_dialog.show()
        self.train_dialog.raise_()
