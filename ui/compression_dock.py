"""The compression dock: pick a checkpoint, run PIC-PQ or GHOST in the background, compare before and after.

    checkpoint chosen -> checkpoint_summary (card + model_bops_report)   [QgsTask worker]
                      -> "before" readouts, per-layer table and chart   [GUI thread]
    Run -> CompressRequest (paths + CompressParams)                    [GUI thread]
        -> compress_checkpoint, loss/metric records via StepBridge      [QgsTask worker]
        -> "after" readouts, table and chart; Export… enabled           [GUI thread]

A compressed checkpoint chosen directly shows what its model card records of
its compression (the source's BOPs, size and score before, this model's
after) and can be exported, not compressed again.

torch is only imported inside the worker jobs, so the plugin loads without it.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

from qgis.gui import QgsFileWidget
from qgis.PyQt import sip
from qgis.PyQt.QtCore import QObject, Qt, pyqtSignal
from qgis.PyQt.QtGui import QShowEvent
from qgis.PyQt.QtWidgets import (
    QComboBox,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QSizePolicy,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

from ..core.bops import MAX_BITS, MIN_BITS
from ..core.checkpoint import task_label
from ..core.compression import (METHOD_LABELS, CompressParams, CompressResult, check_compression_outputs,
                                parse_max_bits)
from ..core.compression_tasks import DATA_HINTS, TASKS, check_data
from ..core.errors import RSLabError
from ..core.pic_pq import MAX_PENALTY, MAX_REDUCTION
from ..core.weights import SHIPPED, shipped_checkpoints
from . import task as tasks
from .compression_figures import DASH, BopsChart, LayerTable, ReadoutGrid, si, size_text
from .job_dock import CUSTOM_CHECKPOINT, NEW_CHECKPOINT_HINT, JobDock, new_checkpoint_path, user_path
from .settings import remember
from .widgets import (
    checkpoint_widget,
    double_spin_box,
    live_curve,
    scroll_body,
    spin_box,
    tab_in_order,
)

METRIC_LABELS = {"accuracy": "Accuracy", "f1": "F1", "auc": "AUC", "iou": "IoU", "kappa": "Kappa",
                 "fit": "Denoising fit"}
LOSS_PEN = (200, 80, 40)
METRIC_PEN = (40, 110, 200)


# --- formatting -----------------------------------------------------------------------------------


def metric_label(metric: str) -> str:
    return METRIC_LABELS.get(metric, metric or "Score")


def task_metric(task: str) -> str:
    """The score compression reports for a task's models ('' for a task it does not compress)."""
    return TASKS[task].metric if task in TASKS else ""


# --- the parts that run in the worker (no Qt) ----------------------------------------------------


@dataclass
class CheckpointSummary:
    """What the dock shows of a checkpoint before any run: its card and its BOPs report."""

    path: str
    task: str
    architecture: str
    compressed: bool
    compression: Dict[str, Any]  # the card's training["compression"] record ({} for a float model)
    description: str
    report: Dict[str, Any]  # model_bops_report(path)


def checkpoint_summary(path: str, cancelled: Optional[Callable[[], bool]] = None) -> CheckpointSummary:
    """Read the card and count the BOPs of the checkpoint at `path` (worker thread; imports torch)."""
    from ..core.checkpoint import read_card
    from ..core.compression import model_bops_report
    from ..core.errors import JobCancelled

    card = read_card(path)
    if cancelled is not None and cancelled():
        raise JobCancelled()
    report = model_bops_report(path)
    return CheckpointSummary(path=path, task=card.task, architecture=card.architecture,
                             compressed=card.compressed,
                             compression=dict(card.training.get("compression") or {}),
                             description=card.description, report=report)


def default_output_path(source: str, method: str) -> str:
    """Where a run saves the compressed model when no file is given: a new file under the QGIS profile."""
    return new_checkpoint_path(f"{Path(source).stem}_{method}")


@dataclass(frozen=True)
class CompressRequest:
    """Everything the worker needs, read from the widgets on the GUI thread."""

    model: str
    data: str
    output: str
    params: CompressParams
    on_step: Callable[[Dict[str, Any]], None]

    def job(self, progress: Callable[[float, str], None], cancelled: Callable[[], bool]) -> CompressResult:
        from ..core.compression import compress_checkpoint

        return compress_checkpoint(self.model, self.data, self.output, self.params, progress, cancelled,
                                   self.on_step)


class StepBridge(QObject):
    """Carries compress_checkpoint's `on_step` records from the worker thread to the GUI thread."""

    step = pyqtSignal(dict)


# --- the dock -------------------------------------------------------------------------------------


class CompressionDock(JobDock):
    """Compress a checkpoint with PIC-PQ or GHOST and compare BOPs, size and score before and after."""

    MESSAGE_TITLE = "RS Lab compression"
    HELP_SECTION = "Model compression"
    runFinished = pyqtSignal(object, str)  # CompressResult (None on failure), error text
    summaryReady = pyqtSignal(object, str)  # CheckpointSummary (None on failure), error text

    def __init__(self, iface=None, parent: Optional[QWidget] = None) -> None:
        super().__init__(parent)
        self.iface = iface
        self.summary_task: Optional[tasks.JobTask] = None
        self.summary: Optional[CheckpointSummary] = None
        self.summary_error = ""
        self.result: Optional[CompressResult] = None
        self.history: List[Dict[str, Any]] = []
        self.export_dialog = None
        self._bridge: Optional[StepBridge] = None  # the running job's on_step bridge
        self._summary_path = ""
        self._summary_cancel: Optional[Callable[[], None]] = None
        self._phase_base: Dict[str, float] = {}
        self._request: Optional[CompressRequest] = None
        self._build()
        remember("compression", {
            "method": self.method_combo, "epochs": self.epochs_spin, "flops_reduction": self.flops_spin,
            "max_bits": self.bits_edit, "penalty": self.penalty_spin, "generations": self.generations_spin,
            "ghost_threshold": self.threshold_spin, "distillation": self.distillation_spin,
            "ghost_max_bits": self.ghost_bits_spin})
        self._connect()
        self.reload_models()
        self._method_changed()
        self._set_running(False)
        self.model_file.setEnabled(self.model_combo.currentData() is None)
        self.model_info.setText("The checkpoint is read when the panel is shown.")

    def showEvent(self, event: QShowEvent) -> None:  # noqa: N802 (Qt API)
        """Read the default checkpoint the first time the panel is shown (not when it is only created)."""
        super().showEvent(event)
        if not self._summary_path and self.summary_task is None:
            self._checkpoint_changed()

    # construction -----------------------------------------------------------------------------------
    def _build(self) -> None:
        self._build_inputs()
        self._build_method_settings()
        self._build_run_widgets()
        self._build_results()
        self._layout()

    def _build_inputs(self) -> None:
        self.model_combo = QComboBox(self)
        self.model_combo.setSizeAdjustPolicy(QComboBox.AdjustToMinimumContentsLengthWithIcon)
        self.model_file = checkpoint_widget(self)
        self.model_info = QLabel(self)
        self.model_info.setWordWrap(True)
        self.model_info.setTextFormat(Qt.PlainText)
        self.model_info.setStyleSheet(tasks.INFO_STYLE)
        self.method_combo = QComboBox(self)
        self.method_combo.setSizeAdjustPolicy(QComboBox.AdjustToMinimumContentsLengthWithIcon)
        for method in ("pic_pq", "ghost"):
            self.method_combo.addItem(METHOD_LABELS[method], method)
        self.method_combo.setItemData(0, "Prunes filters to a FLOPs target, gives each layer bits from how much of "
                                         "it the pruning kept, then fine-tunes with quantisation", Qt.ToolTipRole)
        self.method_combo.setItemData(1, "Per-layer bits from a k-means distortion threshold, then "
                                         "quantisation-aware training taught by the full-precision model",
                                      Qt.ToolTipRole)
        self.epochs_spin = double_spin_box(self, 0.01, 1000.0, 1.0, 2, 0.5,
                                           "Training budget: one epoch is one pass over the training images "
                                           "(classification) or 100 iterations (tiled data)")
        self.data_file = QgsFileWidget(self)
        self.data_file.setStorageMode(QgsFileWidget.GetFile)
        self.output_file = checkpoint_widget(self, save=True, placeholder=NEW_CHECKPOINT_HINT)

    def _build_method_settings(self) -> None:
        self.pic_pq_box = QGroupBox("PIC-PQ settings", self)
        self.flops_spin = double_spin_box(self, 0.0, MAX_REDUCTION, 0.5, 2, 0.05,
                                          "Fraction of the multiply-accumulates pruned away (0 = quantise only)")
        self.bits_edit = QLineEdit("8,6,4", self)
        self.bits_edit.setToolTip("Maximum weight/activation bits per stage of the network, first stage first "
                                  f"({MIN_BITS}..{MAX_BITS} each; the CIFAR ResNet's first conv and classifier stay "
                                  "at full precision by themselves)")
        self.penalty_spin = double_spin_box(self, 0.0, MAX_PENALTY, round(1 / 6, 4), 4, 0.05,
                                            "Penalty factor λ: how strongly a heavily pruned layer is pushed "
                                            "to fewer bits")
        self.generations_spin = spin_box(self, 1, 1000, 20, 1,
                                         "Generations of the evolutionary search for per-layer pruning scales")
        form = QFormLayout(self.pic_pq_box)
        form.addRow("FLOPs reduction", self.flops_spin)
        form.addRow("Max bits per stage", self.bits_edit)
        form.addRow("Penalty factor", self.penalty_spin)
        form.addRow("Generations", self.generations_spin)

        self.ghost_box = QGroupBox("GHOST settings", self)
        self.threshold_spin = double_spin_box(self, 0.0001, 100.0, 0.1, 4, 0.01,
                                              "k-means distortion threshold: a layer gets the fewest bits whose "
                                              "distortion is below it")
        self.distillation_spin = double_spin_box(self, 0.0, 100000.0, 400.0, 1, 50.0,
                                                 "Weight of the self-distillation loss against the task loss")
        self.ghost_bits_spin = spin_box(self, MIN_BITS, MAX_BITS, MAX_BITS, 1, "The most bits any layer may get")
        form = QFormLayout(self.ghost_box)
        form.addRow("Threshold", self.threshold_spin)
        form.addRow("Distillation weight", self.distillation_spin)
        form.addRow("Maximum bits", self.ghost_bits_spin)

    def _build_run_widgets(self) -> None:
        self._build_job_widgets("Compress")
        self.export_button = QPushButton("Export…", self)
        self.export_button.setToolTip("Write the compressed model as RS Lab checkpoint, ONNX, TorchScript "
                                      "and a BOPs report")
        # long paths and messages wrap or clip instead of widening the panel
        self.status_label.setSizePolicy(QSizePolicy.Ignored, QSizePolicy.Preferred)

    def _build_results(self) -> None:
        self.readout = ReadoutGrid(self)
        self.layer_table = LayerTable(self)
        self.chart = BopsChart(self)
        self.loss_plot, self.loss_curve = self._curve_plot("Training loss", "loss", LOSS_PEN)
        self.metric_plot, self.metric_curve = self._curve_plot("Score", "%", METRIC_PEN)
        curves = QWidget(self)
        curves_layout = QVBoxLayout(curves)
        curves_layout.setContentsMargins(0, 0, 0, 0)
        curves_layout.addWidget(self.loss_plot)
        curves_layout.addWidget(self.metric_plot)
        self.tabs = QTabWidget(self)
        self.tabs.addTab(self.layer_table, "Layers")
        self.tabs.addTab(self.chart, "BOPs per layer")
        self.tabs.addTab(curves, "Training")

    def _curve_plot(self, title: str, label: str, colour: Tuple[int, int, int]):
        plot, curve = live_curve(self, title, "training step", label, colour)
        plot.setMinimumHeight(110)
        return plot, curve

    def _layout(self) -> None:
        inputs = QFormLayout()
        inputs.addRow("Checkpoint", self.model_combo)
        inputs.addRow("", self.model_file)
        inputs.addRow("", self.model_info)
        inputs.addRow("Method", self.method_combo)
        settings = QVBoxLayout()
        settings.addWidget(self.pic_pq_box)
        settings.addWidget(self.ghost_box)
        common = QFormLayout()
        common.addRow("Epochs", self.epochs_spin)
        common.addRow("Evaluation data", self.data_file)
        common.addRow("Save compressed as", self.output_file)
        buttons = QHBoxLayout()
        buttons.addWidget(self.run_button, 1)
        buttons.addWidget(self.cancel_button)
        buttons.addWidget(self.help_button)
        buttons.addWidget(self.export_button)
        body = QWidget(self)
        layout = QVBoxLayout(body)
        layout.addLayout(inputs)
        layout.addLayout(settings)
        layout.addLayout(common)
        layout.addLayout(buttons)
        layout.addWidget(self.progress_bar)
        layout.addWidget(self.status_label)
        layout.addWidget(self.readout)
        layout.addWidget(self.tabs, 1)
        scroll_body(self, body)
        tab_in_order([self.model_combo, self.model_file, self.method_combo, self.flops_spin, self.bits_edit,
                      self.penalty_spin, self.generations_spin, self.threshold_spin, self.distillation_spin,
                      self.ghost_bits_spin, self.epochs_spin, self.data_file, self.output_file, self.run_button,
                      self.cancel_button, self.help_button, self.export_button])

    def _connect(self) -> None:
        self.model_combo.currentIndexChanged.connect(self._checkpoint_changed)
        self.model_file.fileChanged.connect(self._checkpoint_changed)
        self.method_combo.currentIndexChanged.connect(self._method_changed)
        self.run_button.clicked.connect(self.run)
        self.cancel_button.clicked.connect(self.cancel)
        self.export_button.clicked.connect(self.open_export)
        self._watch_form(self.model_combo.currentIndexChanged, self.model_file.fileChanged,
                         self.method_combo.currentIndexChanged, self.data_file.fileChanged,
                         self.output_file.fileChanged, self.bits_edit.textChanged)

    # checkpoints ------------------------------------------------------------------------------------
    def reload_models(self) -> None:
        """The shipped checkpoints of every task present on disk, then the 'Checkpoint file…' entry."""
        self.model_combo.blockSignals(True)
        self.model_combo.clear()
        for task in SHIPPED:
            for label, path in shipped_checkpoints(task):
                self.model_combo.addItem(label, path)
                self.model_combo.setItemData(self.model_combo.count() - 1, path, Qt.ToolTipRole)
        self.model_combo.addItem(CUSTOM_CHECKPOINT, None)
        self.model_combo.blockSignals(False)

    def selected_checkpoint(self) -> str:
        """The chosen checkpoint's path ('' when 'Checkpoint file…' has no file yet)."""
        return self.model_combo.currentData() or user_path(self.model_file.filePath())

    def set_checkpoint(self, path: str) -> None:
        """Choose the checkpoint at `path` (a listed one, else through 'Checkpoint file…')."""
        index = self.model_combo.findData(path)
        if index >= 0:
            self.model_combo.setCurrentIndex(index)
            return
        self.model_combo.setCurrentIndex(self.model_combo.findText(CUSTOM_CHECKPOINT))
        self.model_file.setFilePath(path)

    def _checkpoint_changed(self) -> None:
        """A new checkpoint: forget the last run, and read its card and BOPs in the background."""
        self.model_file.setEnabled(self.model_combo.currentData() is None)
        path = self.selected_checkpoint()
        if path == self._summary_path and (self.summary is not None or self.summary_task is not None):
            return
        self._summary_path = path
        self.summary, self.summary_error, self.result = None, "", None
        self._clear_results()
        self._set_status("")  # 'Done: 16.0x fewer BOPs' was the last checkpoint's run
        self.progress_bar.setValue(0)
        self._update_export_button()
        if not path:
            self.model_info.setText("Choose a checkpoint file (.pt).")
            return
        self.model_info.setText("Reading the checkpoint…")
        self._start_summary(path)

    def _start_summary(self, path: str) -> None:
        if self.summary_task is not None:
            self.summary_task.supersede()  # its result is ignored: it is for another path
        task = tasks.JobTask(f"RS Lab: reading {os.path.basename(path)}", lambda progress, cancelled:
                             checkpoint_summary(path, cancelled), on_finished=lambda result, error: self._summary_done(
                                 task, path, result, error))
        self.summary_task = task
        if self._summary_cancel is not None:
            self.destroyed.disconnect(self._summary_cancel)
        # quietly, as a read superseded by another checkpoint: unloading the plugin logged 'reading x.pt:
        # cancelled; no output was written' as a warning to a user who cancelled nothing
        self._summary_cancel = lambda *_: None if sip.isdeleted(task) else task.supersede()
        self.destroyed.connect(self._summary_cancel)
        tasks.start(task)

    def _summary_done(self, task: tasks.JobTask, path: str, summary: Optional[CheckpointSummary],
                      error: str) -> None:
        """JobTask's callback (GUI thread); results for a checkpoint no longer chosen are dropped."""
        if sip.isdeleted(self) or task is not self.summary_task:
            return
        self.summary_task = None
        self.destroyed.disconnect(self._summary_cancel)
        self._summary_cancel = None
        if path != self.selected_checkpoint():
            return
        self.summary, self.summary_error = summary, error
        if summary is None:
            self.model_info.setText(f"Cannot use this checkpoint: {tasks.failure_text(error).splitlines()[0]}")
            self.model_info.setStyleSheet(tasks.ERROR_STYLE)
        else:
            self.model_info.setStyleSheet(tasks.INFO_STYLE)
            self.model_info.setText(self._describe(summary))
            self._set_data_mode(summary.task)
            self._show_summary(summary)
        self._update_export_button()
        self.summaryReady.emit(summary, error)

    @staticmethod
    def _describe(summary: CheckpointSummary) -> str:
        task = task_label(summary.task)
        text = f"{task} · {summary.architecture}"
        if summary.compressed:
            method = summary.compression.get("method")
            text += " · compressed" + (f" with {METHOD_LABELS.get(method, method)}" if method else "")
            text += ": export it, or choose a full-precision checkpoint to compress"
        return text

    def _set_data_mode(self, task: str) -> None:
        """The data picker asks for a folder (change detection) or a file (the other tasks)."""
        folder = task == "change_detection"
        self.data_file.setStorageMode(QgsFileWidget.GetDirectory if folder else QgsFileWidget.GetFile)
        filters = {"classification": "NumPy archives (*.npz)",
                   "anomaly_detection": "Hyperspectral scenes (*.mat *.tif *.tiff *.img *.dat);;All files (*)"}
        self.data_file.setFilter(filters.get(task, ""))
        self.data_file.lineEdit().setPlaceholderText(DATA_HINTS.get(task, ""))
        self.data_file.setToolTip(DATA_HINTS.get(task, ""))

    # method settings --------------------------------------------------------------------------------
    def _method_changed(self) -> None:
        method = self.method_combo.currentData()
        self.pic_pq_box.setVisible(method == "pic_pq")
        self.ghost_box.setVisible(method == "ghost")

    def params(self) -> CompressParams:
        """The widgets as CompressParams (RSLabError on values compression refuses)."""
        method = self.method_combo.currentData()
        if method == "pic_pq":
            max_bits = parse_max_bits(self.bits_edit.text())
        else:
            max_bits = (self.ghost_bits_spin.value(),)
        return CompressParams(
            method=method, flops_reduction=round(self.flops_spin.value(), 4), max_bits=max_bits,
            penalty=self.penalty_spin.value(), epochs=self.epochs_spin.value(),
            ghost_threshold=self.threshold_spin.value(), distillation_weight=self.distillation_spin.value(),
            generations=self.generations_spin.value(),
        )

    # running ----------------------------------------------------------------------------------------
    def build_request(self, on_step: Callable[[Dict[str, Any]], None]) -> CompressRequest:
        """Read and check the widgets (GUI thread); RSLabError names what is missing or wrong."""
        path = self.selected_checkpoint()
        if not path:
            raise RSLabError("choose a checkpoint to compress (a shipped one, or a .pt file)")
        if self.summary_task is not None:
            raise RSLabError("the checkpoint is still being read; try again in a moment")
        if self.summary is None and not self.summary_error:
            self._checkpoint_changed()  # not read yet (the panel was never shown): read it now
            raise RSLabError("the checkpoint is being read; try again in a moment")
        if self.summary is None or self.summary.path != path:
            first = self.summary_error.splitlines()[0] if self.summary_error else "it was not read"
            raise RSLabError(f"cannot use {os.path.basename(path)}: {first}")
        if self.summary.compressed:
            raise RSLabError(f"{os.path.basename(path)} is already compressed; choose a full-precision checkpoint "
                             "(or Export… this one)")
        params = self.params()
        data = check_data(self.summary.task, user_path(self.data_file.filePath()))
        output = user_path(self.output_file.filePath()) or default_output_path(path, params.method)
        if os.path.isdir(output):
            raise RSLabError(f"{output} is a folder; give a file name for the compressed checkpoint")
        if not output.lower().endswith(".pt"):
            output += ".pt"
        check_compression_outputs(path, output, data_path=data)
        return CompressRequest(model=path, data=data, output=output, params=params, on_step=on_step)

    def run(self) -> None:
        """Start compressing in the background (the Compress button)."""
        if self.is_running():
            return
        bridge = StepBridge()  # no parent: the request keeps it alive as long as the worker may emit
        bridge.step.connect(self._on_step, Qt.QueuedConnection)
        try:
            request = self.build_request(bridge.step.emit)
        except RSLabError as exc:
            self._refuse(str(exc))
            return
        self._bridge = bridge
        self.result = None
        self._clear_after()
        self._clear_curves()
        self._update_export_button()
        self.tabs.setCurrentIndex(2)  # the live curves
        method = METHOD_LABELS[request.params.method].split(" (")[0]
        self._set_status(f"Compressing {os.path.basename(request.model)} with {method}…")
        self.start_job(request, f"RS Lab: compressing {os.path.basename(request.model)} ({method})")

    def _set_running(self, running: bool) -> None:
        super()._set_running(running)
        for widget in (self.model_combo, self.model_file, self.method_combo, self.pic_pq_box, self.ghost_box,
                       self.epochs_spin, self.data_file, self.output_file):
            widget.setEnabled(not running)
        if not running:
            self.model_file.setEnabled(self.model_combo.currentData() is None)
        self._update_export_button()

    def _on_step(self, entry: Dict[str, Any]) -> None:
        """One training record (GUI thread, via the queued bridge): extend the loss or score curve."""
        if sip.isdeleted(self):
            return
        self.history.append(entry)
        phase = str(entry.get("phase", ""))
        if phase == "evolution":  # the evolutionary search reports its fitness, not a training loss
            return
        if phase not in self._phase_base:
            self._phase_base[phase] = max([x for x in self._curve_x()] or [0.0])
        x = self._phase_base[phase] + float(entry.get("step", 0))
        if "loss" in entry and math.isfinite(float(entry["loss"])):
            xs, ys = self.loss_curve.getData()
            self.loss_curve.setData(list(xs if xs is not None else []) + [x],
                                    list(ys if ys is not None else []) + [float(entry["loss"])])
        if "metric" in entry and math.isfinite(float(entry["metric"])):
            xs, ys = self.metric_curve.getData()
            self.metric_curve.setData(list(xs if xs is not None else []) + [x],
                                      list(ys if ys is not None else []) + [float(entry["metric"])])
            name = entry.get("metric_name") or (task_metric(self.summary.task) if self.summary else "")
            self.metric_plot.setTitle(f"{metric_label(str(name))} on the evaluation data", size="9pt")

    def _curve_x(self) -> List[float]:
        xs = []
        for curve in (self.loss_curve, self.metric_curve):
            data = curve.getData()[0]
            if data is not None:
                xs.extend(float(v) for v in data)
        return xs

    def _finished(self, result: Optional[CompressResult], error: str) -> None:
        """JobTask's callback, on the GUI thread."""
        request = self._end_job()
        if request is None:
            return
        self._bridge = None
        if result is None:
            self._update_export_button()
            self._fail(error)
            return
        self.result = result
        self.progress_bar.setValue(100)
        self._show_result(result)
        metric = metric_label(result.metric)
        self._set_status(
            f"Done: {result.bops_ratio:.1f}× fewer BOPs; {metric}\u00a0"
            f"{result.scores_before[result.metric]:.2f}\u00a0→\u00a0{result.scores_after[result.metric]:.2f}\u00a0%.\n"
            f"Saved as {os.path.basename(result.checkpoint)} in {os.path.dirname(result.checkpoint)}"
            + "".join(f"\nNote: {note}" for note in result.notes))
        self.status_label.setToolTip(result.checkpoint)
        self._update_export_button()
        self.tabs.setCurrentIndex(1)
        self.runFinished.emit(result, "")

    # readouts, table and chart ---------------------------------------------------------------------
    def _clear_results(self) -> None:
        self.readout.clear()
        self.layer_table.setRowCount(0)
        self.chart.clear()
        self._clear_curves()

    def _clear_after(self) -> None:
        self.readout.clear_after()
        if self.summary is not None and not self.summary.compressed:
            self._fill_layers(self.summary.report, None)

    def _clear_curves(self) -> None:
        self.history = []
        self._phase_base = {}
        self.loss_curve.setData([], [])
        self.metric_curve.setData([], [])
        self.metric_plot.setTitle("Score", size="9pt")
        for plot in (self.loss_plot, self.metric_plot):  # not the last run's ranges around empty curves
            plot.enableAutoRange()

    def _show_summary(self, summary: CheckpointSummary) -> None:
        """The chosen checkpoint's figures: the before column, or for a compressed one its recorded history."""
        report = summary.report
        metric = summary.compression.get("metric") or task_metric(summary.task)  # recorded since 2026-12-03
        self.readout.set_metric_name(metric_label(metric) + " (%)")
        if not summary.compressed:
            self.readout.fill_totals("before", report)
            self.readout.set("metric", "before", "after a run")
            self._fill_layers(report, None)
            return
        record = summary.compression
        self.readout.fill_totals("after", report)
        if "gbops_before" in record:
            self.readout.set("bops", "before", si(record["gbops_before"] * 1e9))
        if "size_mb_before" in record:
            self.readout.set("size", "before", size_text(record["size_mb_before"]))
            ratio = record["size_mb_before"] / max(report["size_mb"], 1e-12)
            self.readout.set("size", "change", f"{ratio:.1f}× smaller")
        if "bops_ratio" in record:
            self.readout.set("bops", "change", f"{record['bops_ratio']:.1f}× fewer")
        if "params_before" in record:  # recorded since 2026-12-03 (and added to the shipped compressed card)
            self.readout.set("params", "before", si(record["params_before"]))
            self.readout.set("params", "change",
                              f"{100.0 * (report['params'] / max(record['params_before'], 1) - 1):+.0f} %")
        before, after = (record.get("scores_before") or {}), (record.get("scores_after") or {})
        if metric in before:
            self.readout.set("metric", "before", f"{before[metric]:.2f}")
        if metric in after:
            self.readout.set("metric", "after", f"{after[metric]:.2f}")
        if metric in before and metric in after:
            self.readout.set("metric", "change", f"{after[metric] - before[metric]:+.2f} pt")
        self._fill_layers(None, report)

    def _show_result(self, result: CompressResult) -> None:
        before, after = result.before, result.after
        self.readout.fill_totals("before", before)
        self.readout.fill_totals("after", after)
        self.readout.set("bops", "change", f"{result.bops_ratio:.1f}× fewer")
        self.readout.set("params", "change", f"{100.0 * (after['params'] / max(before['params'], 1) - 1):+.0f} %")
        self.readout.set("size", "change", f"{before['size_mb'] / max(after['size_mb'], 1e-12):.1f}× smaller")
        metric = result.metric
        self.readout.set_metric_name(metric_label(metric) + " (%)")
        b, a = result.scores_before.get(metric), result.scores_after.get(metric)
        self.readout.set("metric", "before", DASH if b is None else f"{b:.2f}")
        self.readout.set("metric", "after", DASH if a is None else f"{a:.2f}")
        if a is not None and b is not None:
            self.readout.set("metric", "change", f"{a - b:+.2f} pt")
        self._fill_layers(before, after)

    def _fill_layers(self, before: Optional[Dict[str, Any]], after: Optional[Dict[str, Any]]) -> None:
        """One row and bar per conv/linear layer; with both reports, before → after."""
        rows = self.layer_table.fill(before, after)
        after_by_name = {layer["name"]: layer for layer in (after or {}).get("layers", [])}
        self.chart.show_bops([layer["bops"] for layer in rows] if before is not None else None,
                             [after_by_name.get(layer["name"], {}).get("bops", 0) for layer in rows]
                             if after is not None else None)

    # export -----------------------------------------------------------------------------------------
    def exportable_checkpoint(self) -> Optional[str]:
        """The compressed checkpoint Export… writes: the last run's, else the chosen one if it is compressed."""
        if self.result is not None and self.result.checkpoint and os.path.isfile(self.result.checkpoint):
            return self.result.checkpoint
        if self.summary is not None and self.summary.compressed and self.summary.path == self.selected_checkpoint():
            return self.summary.path
        return None

    def _update_export_button(self) -> None:
        self.export_button.setEnabled(not self.is_running() and self.exportable_checkpoint() is not None)

    def open_export(self) -> None:
        """Open the export dialog for the compressed checkpoint."""
        from .export_dialog import ExportDialog

        path = self.exportable_checkpoint()
        if path is None:
            return
        report = self.result.report() if self.result is not None and self.result.checkpoint == path else None
        if self.export_dialog is not None and not sip.isdeleted(self.export_dialog):
            if self.export_dialog.task is not None:  # saving or checking: brought forward, not cancelled unsaid
                self.export_dialog.show()
                self.export_dialog.raise_()
                self.export_dialog.activateWindow()
                return
            self.export_dialog.close()
            self.export_dialog.deleteLater()
        self.export_dialog = ExportDialog(path, report=report, parent=self)
        self.export_dialog.show()
        self.export_dialog.raise_()
