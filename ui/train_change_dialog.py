"""Training AR-CDNet on the user's own change pairs, with live loss and validation-F1 curves.

Training runs in a JobTask. `train_change_detector` calls `on_epoch` from the
worker thread after every validation; an `EpochBridge` (a QObject living on
the GUI thread) turns that call into a queued Qt signal, so the plots are
only ever touched on the GUI thread.
"""
from __future__ import annotations

import math
import os
from typing import Dict, List, Optional, Sequence, Tuple

import pyqtgraph as pg
from qgis.core import QgsMapLayer, QgsRasterLayer
from qgis.PyQt.QtCore import QObject, Qt, pyqtSignal
from qgis.PyQt.QtWidgets import (
    QComboBox,
    QDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QPlainTextEdit,
    QPushButton,
    QSizePolicy,
    QStackedWidget,
    QVBoxLayout,
    QWidget,
)

from ..core.change_data import ChangePair, pairs_from_folder, training_split
from ..core.change_training import (WIDTH_PARAMETERS, WIDTH_PRESETS, TrainChangeParams, TrainChangeResult,
                                   train_change_detector)
from ..core.errors import RSLabError
from . import task as tasks
from .job_dock import (
    NEW_CHECKPOINT_HINT,
    date_files,
    label_file,
    new_checkpoint_path,
    scratch_folder,
    user_path,
)
from .settings import remember
from .help_button import help_button
from .widgets import (
    BandChooser,
    TimedProgressBar,
    checkpoint_widget,
    coding_combo,
    double_spin_box,
    folder_widget,
    follow_label_layer,
    label_field_combo,
    label_layer_combo,
    live_curve,
    message_label,
    raster_combo,
    spin_box,
)

# (key, label, (base, channels)); None = the free spin boxes. The key is what the
# width combo's items carry (and what QgsSettings remembers).
WIDTHS: List[Tuple[str, str, Optional[Tuple[int, int]]]] = [
    ("narrow", "narrow {}/{} (default)".format(*WIDTH_PRESETS["narrow"]), WIDTH_PRESETS["narrow"]),
    ("full", "full {}/{} (paper, {} parameters)".format(*WIDTH_PRESETS["full"], WIDTH_PARAMETERS["full"]),
     WIDTH_PRESETS["full"]),
    ("custom", "custom", None),
]
WIDTH_SIZES: Dict[str, Optional[Tuple[int, int]]] = {key: sizes for key, _, sizes in WIDTHS}
SOURCES = [("folder", "a folder of pairs (A/, B/, label/)"), ("layers", "layers of this project (one pair)")]


def default_checkpoint_path() -> str:
    """Where a run saves its model when 'Save checkpoint as' is empty: a new file under the QGIS profile."""
    return new_checkpoint_path("arcdnet")




class EpochBridge(QObject):
    """Carries `on_epoch` records from the training thread to the GUI thread."""

    epoch = pyqtSignal(dict)


class TrainChangeDialog(QDialog, tasks.TaskOwner):
    """Train AR-CDNet from a folder of A/, B/, label/ pairs; emits `trained(path)` when a checkpoint is saved."""

    trained = pyqtSignal(str)

    def __init__(self, parent: Optional[QWidget] = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("RS Lab: train a change detector")
        self.result: Optional[TrainChangeResult] = None
        self.history: List[Dict[str, float]] = []
        self._burnt_dir: Optional[str] = None  # where label polygons are burnt into rasters
        self._build()
        # the custom widths before the preset: a restored preset then overwrites them in _width_changed
        remember("train_change", {"iterations": self.iterations_spin, "evaluate_every": self.eval_spin,
                                  "batch": self.batch_spin, "crop": self.crop_spin, "learning_rate": self.lr_spin,
                                  "base": self.base_spin, "channels": self.channels_spin, "width": self.width_combo,
                                  "source": self.source_combo})
        self._connect()
        self._width_changed()
        self._source_changed()
        self._label_changed()
        self._set_running(False)

    # construction -----------------------------------------------------------------------------------
    def _build(self) -> None:
        self.source_combo = QComboBox(self)
        for key, label in SOURCES:
            self.source_combo.addItem(label, key)
        self.source_combo.setToolTip("Train on a folder of image pairs, or on one before / after / label triple of "
                                     "layers loaded in the project (e.g. a scene labelled in places)")
        self.data_dir = folder_widget(self, "folder with A/ (before), B/ (after) and label/ sub-folders")
        self.before_layer, self.after_layer = raster_combo(self), raster_combo(self)
        self.label_layer = label_layer_combo(self, "A label raster, or polygons drawn where you know the answer "
                                                   "(their field: 1 no change, 2 change)")
        self.label_field = label_field_combo(self)
        self.data_pages = QStackedWidget(self)  # page 0: the folder, page 1: the three layers
        self.data_pages.addWidget(self.data_dir)
        layers = QWidget(self)
        layer_rows = QFormLayout(layers)
        layer_rows.setContentsMargins(0, 0, 0, 0)
        layer_rows.addRow("Before", self.before_layer)
        layer_rows.addRow("After", self.after_layer)
        layer_rows.addRow("Labels", self.label_layer)
        layer_rows.addRow("Label field", self.label_field)
        self.data_pages.addWidget(layers)
        self.val_dir = folder_widget(self)  # its placeholder follows the training data's source
        self.coding_combo = coding_combo(self, "How the label rasters' values read. Labels drawn for only part of "
                                               "a scene use 0 = not labelled (left out of the loss and the "
                                               "validation; training crops are centred on labelled pixels), "
                                               "1 = no change, 2 = change")
        self.bands_combo = BandChooser(self, "Bands of both dates to train on (none checked: all), listed from the "
                                             "before layer or the folder's first before image; e.g. Sentinel-2's "
                                             "10 m bands. The model "
                                             "records them, and the change dock checks them when it is selected")
        self.iterations_spin = spin_box(self, 1, 1_000_000, 2000)
        self.eval_spin = spin_box(self, 1, 100_000, 100, tip="One epoch: the model is validated (and the best one kept) "
                                                             "every N iterations")
        self.batch_spin = spin_box(self, 1, 256, 8)
        self.crop_spin = spin_box(self, 32, 2048, 256, 32, tip="Random training crops of this size (a multiple of 32)")
        self.lr_spin = double_spin_box(self, 0.000001, 0.5, 5e-4, 6, 0.0001)
        self.width_combo = QComboBox(self)
        for key, label, _ in WIDTHS:
            self.width_combo.addItem(label, key)
        self.base_spin = spin_box(self, 4, 128, 32, 4, tip="Encoder width (64 = ResNet-18)")
        self.channels_spin = spin_box(self, 4, 256, 32, 4, tip="Decoder width C")
        # empty: each run picks a new name (the change dock reuses this dialog; one name overwrote the last model)
        self.output_file = checkpoint_widget(self, save=True, placeholder=NEW_CHECKPOINT_HINT)
        self.start_button = QPushButton("Start", self)
        self.cancel_button = QPushButton("Cancel", self)
        self.close_button = QPushButton("Close", self)
        self.help_button = help_button(self, "`rslab:train_change_detector`")
        self.progress_bar = TimedProgressBar(self)
        self.status_label = message_label(self)
        self.log = QPlainTextEdit(self)
        self.log.setReadOnly(True)
        self.log.setMaximumBlockCount(5000)
        self.log.setMaximumHeight(120)
        self.loss_plot, self.loss_curve = self._plot("Training loss", "loss", (200, 80, 40))
        self.f1_plot, self.f1_curve = self._plot("Validation F1 (★ = kept)", "F1", (40, 110, 200))
        self.f1_plot.setYRange(-0.08, 1.08, padding=0)  # room for the 0 and 1 labels (else not drawn)
        self.best_marker = pg.ScatterPlotItem(symbol="star", size=16, pen=pg.mkPen("k"),
                                              brush=pg.mkBrush(255, 200, 0))
        self.f1_plot.addItem(self.best_marker)  # the epoch whose weights are kept
        self._layout()

    def _plot(self, title: str, label: str, colour: Tuple[int, int, int]):
        plot, curve = live_curve(self, title, "epoch", label, colour, symbol_size=6)
        plot.setMinimumSize(320, 220)  # below, the y axis has no room for its tick labels
        return plot, curve

    def _layout(self) -> None:
        form = QFormLayout()
        form.addRow("Training data", self.source_combo)
        form.addRow("", self.data_pages)
        form.addRow("Validation data", self.val_dir)
        form.addRow("Label values", self.coding_combo)
        form.addRow("Bands", self.bands_combo)
        form.addRow("Iterations", self.iterations_spin)
        form.addRow("Validate every", self.eval_spin)
        form.addRow("Batch size", self.batch_spin)
        form.addRow("Crop", self.crop_spin)
        form.addRow("Learning rate", self.lr_spin)
        width_row = QHBoxLayout()
        width_row.addWidget(self.width_combo, 1)
        width_row.addWidget(QLabel("base", self))
        width_row.addWidget(self.base_spin)
        width_row.addWidget(QLabel("channels", self))
        width_row.addWidget(self.channels_spin)
        form.addRow("Width", width_row)
        form.addRow("Save checkpoint as", self.output_file)
        buttons = QHBoxLayout()
        buttons.addWidget(self.start_button)
        buttons.addWidget(self.cancel_button)
        buttons.addStretch(1)
        buttons.addWidget(self.help_button)
        buttons.addWidget(self.close_button)
        # the settings beside the plots and the log: stacked, the dialog needed 887 px of height and its
        # buttons fell off a 1366 x 768 laptop screen
        settings = QVBoxLayout()
        settings.addLayout(form)
        settings.addStretch(1)
        settings.addWidget(self.progress_bar)
        settings.addWidget(self.status_label)
        settings.addLayout(buttons)
        watch = QVBoxLayout()
        watch.addWidget(self.loss_plot, 1)
        watch.addWidget(self.f1_plot, 1)
        watch.addWidget(self.log)
        layout = QHBoxLayout(self)
        layout.addLayout(settings)
        layout.addLayout(watch, 1)

    def _connect(self) -> None:
        self.width_combo.currentIndexChanged.connect(self._width_changed)
        self.data_dir.fileChanged.connect(self._list_bands)
        self.before_layer.layerChanged.connect(self._list_bands)
        self.label_layer.layerChanged.connect(self._label_changed)
        self.source_combo.currentIndexChanged.connect(self._source_changed)
        self.start_button.clicked.connect(self.start)
        self.cancel_button.clicked.connect(self.cancel)
        self.close_button.clicked.connect(self.close)

    def _width_changed(self) -> None:
        sizes = WIDTH_SIZES.get(self.width_combo.currentData())
        if sizes is not None:
            self.base_spin.setValue(sizes[0])
            self.channels_spin.setValue(sizes[1])
        self.base_spin.setEnabled(sizes is None)
        self.channels_spin.setEnabled(sizes is None)

    def _source_changed(self) -> None:
        current = 1 if self.from_layers() else 0
        self.data_pages.setCurrentIndex(current)
        # a stacked widget is as tall as its tallest page: the folder's one row stood in the four layer rows'
        # height, with empty bands above and below it; hidden pages now take no room
        for index in range(self.data_pages.count()):
            policy = QSizePolicy.Preferred if index == current else QSizePolicy.Ignored
            self.data_pages.widget(index).setSizePolicy(QSizePolicy.Preferred, policy)
        self.data_pages.adjustSize()
        self.val_dir.lineEdit().setPlaceholderText(
            "optional: if empty, the pair validates on itself" if self.from_layers()
            else "optional: if empty, about 20 % of the pairs are held out")
        self._list_bands()

    def _label_changed(self) -> None:
        """Polygons: their numeric field to choose, and the partial coding (0 is where none was drawn)."""
        polygons = follow_label_layer(self.label_layer.currentLayer(), self.label_field, self.coding_combo)
        self.coding_combo.setEnabled(not polygons)

    def from_layers(self) -> bool:
        return self.source_combo.currentData() == "layers"

    def use_layers(self, before: Optional[QgsRasterLayer], after: Optional[QgsRasterLayer],
                   label: Optional[QgsMapLayer], coding: Optional[str] = None, field: str = "") -> None:
        """Train on these layers of the project (the change dock's before, after and reference, read as `coding`;
        for reference polygons, their `field`)."""
        if coding is not None:  # first: label polygons then impose the partial coding
            self.coding_combo.setCurrentIndex(self.coding_combo.findData(coding))
        self.before_layer.setLayer(before)
        self.after_layer.setLayer(after)
        self.label_layer.setLayer(label)
        self._label_changed()  # also when the label layer was already this one
        if field and self.label_field.isEnabled():
            self.label_field.setField(field)
        self.source_combo.setCurrentIndex(self.source_combo.findData("layers"))

    def _list_bands(self) -> None:
        """The bands of the before layer, or of the training folder's first before image (none without)."""
        if self.from_layers():
            self.bands_combo.list_layer(self.before_layer.currentLayer())
            return
        try:
            first = pairs_from_folder(user_path(self.data_dir.filePath()))[0].before
        except RSLabError:
            self.bands_combo.list_layer(None)
            return
        self.bands_combo.list_layer(QgsRasterLayer(first, "first before image", "gdal"))

    # inputs ---------------------------------------------------------------------------------------------
    def params(self) -> TrainChangeParams:
        """The spin boxes as TrainChangeParams (RSLabError on values the trainer refuses)."""
        return TrainChangeParams(
            iterations=self.iterations_spin.value(), batch_size=self.batch_spin.value(),
            crop=self.crop_spin.value(), lr=self.lr_spin.value(),
            eval_every=min(self.eval_spin.value(), self.iterations_spin.value()),
            base=self.base_spin.value(), channels=self.channels_spin.value(),
            label_coding=self.coding_combo.currentData(), bands=self.bands_combo.chosen(),
        )

    def split(self, seed: int = 0) -> Tuple[List[ChangePair], List[ChangePair], Optional[str]]:
        """(train, validation, note) as Processing splits (core/change_data.training_split): the validation
        folder's pairs, else a held-out share of the folder's pairs; one pair (the layers) also validates."""
        val_folder = user_path(self.val_dir.filePath())
        validation = pairs_from_folder(val_folder) if val_folder else None
        if self.from_layers():
            before_path, after_path = date_files(self.before_layer.currentLayer(), self.after_layer.currentLayer())
            return training_split([ChangePair(before_path, after_path, self._label_path(before_path))], validation,
                                  seed)
        folder = user_path(self.data_dir.filePath())
        if not folder:
            raise RSLabError("choose the training data folder (with A/, B/ and label/ sub-folders)")
        return training_split(pairs_from_folder(folder), validation, seed)

    def _label_path(self, grid: str) -> str:
        """The label layer's raster; for polygons, a raster they are burnt into on `grid` (a temporary file)."""
        self._burnt_dir = self._burnt_dir or scratch_folder(self, "rslab-labels-")
        path, message = label_file(self.label_layer.currentLayer(), self.label_field.currentField(), grid,
                                   self._burnt_dir, "label")
        if message:
            self.log.appendPlainText(message)
        return path

    def checkpoint_path(self) -> str:
        """The file named in 'Save checkpoint as' (with .pt), or a new one under the profile when it is empty."""
        path = user_path(self.output_file.filePath())
        if not path:
            return default_checkpoint_path()
        if os.path.isdir(path):
            raise RSLabError(f"{path} is a folder; give a checkpoint file name")
        return path if path.lower().endswith(".pt") else path + ".pt"

    # running --------------------------------------------------------------------------------------------
    def start(self) -> None:
        """Check the inputs on the GUI thread, then train in the background."""
        if self.task is not None:
            return
        try:
            params = self.params()
            (train, val, note), output = self.split(params.seed), self.checkpoint_path()
        except RSLabError as exc:
            self._fail(str(exc))
            return
        self._reset(train, val, output)
        if note:
            self.log.appendPlainText(note)
        bridge = EpochBridge()  # no parent: the job closure keeps it alive as long as the worker may emit
        bridge.epoch.connect(self._on_epoch, Qt.QueuedConnection)
        if self.from_layers():
            chosen = (self.before_layer, self.after_layer, self.label_layer)
            source = "layers " + ", ".join(combo.currentLayer().name() for combo in chosen)
        else:
            source = user_path(self.data_dir.filePath())
        description = f"{source} ({len(train)} training, {len(val)} validation pairs)"

        def job(progress, cancelled):
            return train_change_detector(train, val, output, params, progress, cancelled,
                                         on_epoch=bridge.epoch.emit, data_description=description)

        self.task = tasks.JobTask("RS Lab: training AR-CDNet", job, on_finished=self._finished)
        self.task.progressChanged.connect(self._progress)
        self.task.message.connect(self.status_label.setText)
        # Closing the window leaves training running (QGIS's task bar shows it); deleting the dialog
        # (the plugin unloaded) stops it.
        self._run_task(self.task)

    def _reset(self, train: Sequence[ChangePair], val: Sequence[ChangePair], output: str) -> None:
        self.result, self.history = None, []
        self.loss_curve.setData([], [])
        self.f1_curve.setData([], [])
        self.best_marker.setData([], [])
        self.status_label.setStyleSheet("")
        self.status_label.setText("Starting…")
        held = "from the validation folder" if user_path(self.val_dir.filePath()) else (
            "the training pair itself" if list(train) == list(val) else "held out")
        self.log.appendPlainText(f"Training pairs ({len(train)}): {', '.join(p.name for p in train)}")
        self.log.appendPlainText(f"Validation pairs ({len(val)}, {held}): {', '.join(p.name for p in val)}")
        if self.bands_combo.chosen():
            self.log.appendPlainText(f"Bands: {', '.join(map(str, self.bands_combo.chosen()))}")
        self.log.appendPlainText(f"Checkpoint: {output}")

    def cancel(self) -> None:
        if self.task is not None:
            self.status_label.setText("Cancelling…")
            self.task.cancel()

    def _progress(self, percent: float) -> None:
        self.progress_bar.show_percent(percent)

    def _on_epoch(self, record: Dict[str, float]) -> None:
        """One validation: extend both curves and log it (GUI thread, via the queued bridge)."""
        self.history.append(record)
        epochs = [r["epoch"] for r in self.history]
        self.loss_curve.setData(epochs, [r["loss"] for r in self.history])
        self.f1_curve.setData(epochs, [r["val_f1"] for r in self.history])
        best = [r for r in self.history if r["kept"]][-1]  # the trainer's choice (the last, when F1 cannot choose)
        self.best_marker.setData([best["epoch"]], [best["val_f1"]])
        step = max(1, math.ceil(len(self.history) / 8))  # whole epochs (pyqtgraph ticked 1.2, 1.4, ...)
        for plot in (self.loss_plot, self.f1_plot):
            plot.getAxis("bottom").setTickSpacing(step, step)
        self.log.appendPlainText(
            f"epoch {int(record['epoch'])} (iteration {int(record['iteration'])}): loss {record['loss']:.4f}, "
            f"validation F1 {record['val_f1']:.3f}, IoU {record['val_iou']:.3f}, {record['seconds']:.0f} s"
        )

    def _finished(self, result: Optional[TrainChangeResult], error: str) -> None:
        """JobTask's callback, on the GUI thread."""
        if not self._task_ended():
            return
        if result is None:
            self._fail(error)
            return
        self.result = result
        self.progress_bar.setValue(100)
        best = f"Best validation F1 {result.best_f1:.3f} at iteration {result.best_iteration} on {result.device}"
        notes = "".join(f"\nNote: {note}" for note in result.notes)
        # the status line names the file (its folder, on a second line, was cut off at the dialog's size); the
        # log below and the tooltip give the whole path
        self.status_label.setText(f"{best}. Saved as {os.path.basename(result.checkpoint)}{notes}")
        self.status_label.setToolTip(result.checkpoint)
        self.log.appendPlainText(f"{best}. Saved to {result.checkpoint}{notes}")
        self.trained.emit(result.checkpoint)

    def _fail(self, error: str) -> None:
        cancelled = tasks.was_cancelled(error)
        self.status_label.setStyleSheet("" if cancelled else tasks.ERROR_STYLE)
        first = tasks.failure_text(error).splitlines()[0]
        self.status_label.setText(tasks.stopped_text(first, cancelled, "Training failed"))
        self.progress_bar.setValue(0)
        self.log.appendPlainText(error)

    def _set_running(self, running: bool) -> None:
        self.start_button.setEnabled(not running)
        self.cancel_button.setEnabled(running)
