"""Export a (compressed) RS Lab checkpoint: RS Lab checkpoint, ONNX with QDQ, TorchScript, JSON BOPs report.

The dialog loads the checkpoint on the GUI thread when it is chosen (so a
file it cannot load is refused at once, with the reason, and nothing can be
written from it), then runs the export and the ONNX check in the background:

    Save       -> export_all(model, card, example inputs, folder, stem, formats)   [QgsTask worker]
    ONNX check -> export_onnx to a temporary file, check_onnx on sample inputs      [QgsTask worker]

Existing target files are only replaced after a Yes in `confirm_overwrite`;
on No nothing is written.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from functools import partial
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

from qgis.PyQt.QtCore import Qt, pyqtSignal
from qgis.PyQt.QtGui import QCloseEvent
from qgis.PyQt.QtWidgets import (
    QCheckBox,
    QDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QMessageBox,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from ..core.checkpoint import task_label
from ..core.errors import JobCancelled, RSLabError
from ..core.dependencies import PLUGIN_DIR
from ..core.export import SUFFIXES, export_paths  # torch-free at import
from ..core.onnx_check import CHECK_SAMPLES, sample_inputs
from . import task as tasks
from .task import ERROR_STYLE, INFO_STYLE, failure_text
from .job_dock import profile_folder, user_path
from .help_button import help_button
from .widgets import TimedProgressBar, checkpoint_widget, folder_widget, message_label

# (format key of core.export, label); the file suffixes come from core.export.SUFFIXES
FORMATS: Tuple[Tuple[str, str], ...] = (
    ("checkpoint", "RS Lab checkpoint"),
    ("onnx", "ONNX with QDQ"),
    ("torchscript", "TorchScript"),
    ("report", "JSON BOPs report"),
)
FORMAT_TIPS = {
    "checkpoint": "The model and its card (bit widths included): the RS Lab tools load it like any checkpoint",
    "onnx": "Integer weights with QuantizeLinear / DequantizeLinear around every quantised layer; "
            "runs in onnxruntime",
    "torchscript": "A traced module computing exactly what the PyTorch model computes (torch.jit.load)",
    "report": "BOPs, MACs, parameters and size, in total and per layer, with the bit plan and the compression record",
}



def default_export_folder(checkpoint: str) -> str:
    """The checkpoint's own folder, except for the plugin's shipped weights: files written into the plugin
    folder would be lost with the next plugin update, so those export to the profile's rslab/exports."""
    folder = Path(checkpoint).resolve().parent
    return str(profile_folder("exports") if PLUGIN_DIR in (folder, *folder.parents) else folder)


def describe_shape(x: Any) -> str:
    """'1×3×32×32' for a tensor, 'a scalar' for a 0-dim one (BSDM's diffusion step)."""
    return "×".join(map(str, x.shape)) if x.dim() else "a scalar"


def onnx_check_job(model: Any, example: Tuple[Any, ...]) -> Callable[..., Dict[str, float]]:
    """A JobTask job: export `model` to a temporary ONNX file and compare it with PyTorch."""

    def job(progress, cancelled) -> Dict[str, float]:
        from ..core.export import export_onnx
        from ..core.onnx_check import check_onnx

        folder = tempfile.mkdtemp(prefix="rslab-onnx-check-")
        try:
            progress(0.1, "writing a temporary ONNX file")
            path = export_onnx(model, example, os.path.join(folder, "check.onnx"))["path"]
            if cancelled():
                raise JobCancelled()
            progress(0.6, f"running onnxruntime and PyTorch on {CHECK_SAMPLES} sample inputs")
            return check_onnx(model, sample_inputs(example), path, cancelled=cancelled)
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    return job


def describe_check(check: Dict[str, float]) -> str:
    """The verdict of check_onnx and its figures.

    The verdict is layer by layer ("forced": each stretch between quantisers fed the same
    integer codes in both runtimes): every output within one quantisation step and every
    code within one level. End to end, one-level rounding flips (float summation order)
    spread through the layers; that drift is shown as well, for what it is.
    """
    samples = int(check.get("samples", 0))
    forced = check.get("forced.max_steps", float("nan"))
    outputs = [k[:-len(".max_abs_diff")] for k in check if k.endswith(".max_abs_diff") and not k.startswith("forced.")]
    if math.isnan(forced):
        worst = max((check[f"{o}.max_abs_diff"] for o in outputs), default=float("nan"))
        return (f"Full precision (no quantised layer) over {samples} sample inputs:\n"
                f"max |ONNX - PyTorch| = {worst:.3g}")
    agrees = check.get("agrees_within_one_step", 0.0) >= 1.0
    text = (f"{'Agrees' if agrees else 'DISAGREES'} layer by layer over {samples} sample inputs: "
            f"at most {forced:.3g} quantisation steps per output, codes within "
            f"{int(check.get('forced.codes.max_diff', 0))} level(s)")
    if outputs:
        worst = max(check[f"{o}.max_abs_diff"] for o in outputs)
        text += (f".\nEnd to end (rounding drift): max |ONNX - PyTorch| = {worst:.3g}, "
                 f"{100 * check.get('codes.fraction_differing', 0.0):.2f} % of codes differ")
    return text


class ExportDialog(QDialog, tasks.TaskOwner):
    """Export one checkpoint to the chosen formats; `exported({format: path}, error)` after every Save."""

    exported = pyqtSignal(dict, str)
    checked = pyqtSignal(object, str)  # check_onnx's dict (None on failure), error text

    def __init__(self, checkpoint: str = "", report: Optional[Dict[str, Any]] = None,
                 parent: Optional[QWidget] = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("RS Lab: export a model")
        self.report = report  # the compression run's report, written into the JSON report of that checkpoint
        self._report_for = user_path(checkpoint) if report else ""
        self._defaults = ("", "")  # the folder and base name load() filled in, replaced when still untouched
        self.model: Any = None
        self.card: Any = None
        self.example: Optional[Tuple[Any, ...]] = None
        self.load_error = ""
        self.check_result: Optional[Dict[str, float]] = None
        self.written: Dict[str, str] = {}
        self._build()
        self._connect()
        self._set_running(False)
        if checkpoint:
            self.checkpoint_file.setFilePath(checkpoint)  # loads it through fileChanged
        else:
            self._update_buttons()

    # construction -----------------------------------------------------------------------------------
    def _build(self) -> None:
        self.checkpoint_file = checkpoint_widget(self)
        self.model_info = QLabel(self)
        self.model_info.setWordWrap(True)
        self.model_info.setTextFormat(Qt.PlainText)
        self.folder = folder_widget(self)
        self.name_edit = QLineEdit(self)
        self.name_edit.setPlaceholderText("base name of the files")
        self.format_boxes: Dict[str, QCheckBox] = {}
        formats = QGroupBox("Formats", self)
        box_layout = QVBoxLayout(formats)
        for key, label in FORMATS:
            box = QCheckBox(f"{label} ({SUFFIXES[key]})", self)
            box.setChecked(True)
            box.setToolTip(FORMAT_TIPS[key])
            self.format_boxes[key] = box
            box_layout.addWidget(box)
        self.formats_box = formats
        self.check_button = QPushButton("ONNX check", self)
        self.check_button.setToolTip("Export to a temporary ONNX file and compare onnxruntime with PyTorch "
                                     f"on {CHECK_SAMPLES} random inputs")
        self.check_label = QLabel("Not checked yet.", self)
        self.check_label.setWordWrap(True)
        self.check_label.setTextFormat(Qt.PlainText)
        self.check_label.setTextInteractionFlags(Qt.TextSelectableByMouse)
        self.save_button = QPushButton("Save", self)
        self.save_button.setDefault(True)
        self.close_button = QPushButton("Close", self)
        self.help_button = help_button(self, "Model compression")  # its Export… paragraph
        self.progress_bar = TimedProgressBar(self)
        self.status_label = message_label(self)

        form = QFormLayout()
        form.addRow("Checkpoint", self.checkpoint_file)
        form.addRow("", self.model_info)
        form.addRow("Output folder", self.folder)
        form.addRow("Base name", self.name_edit)
        check = QHBoxLayout()  # the label on a row of its own: a word-wrapped label beside a button gets clipped
        check.addWidget(self.check_button)
        check.addStretch(1)
        buttons = QHBoxLayout()
        buttons.addWidget(self.help_button)
        buttons.addStretch(1)
        buttons.addWidget(self.save_button)
        buttons.addWidget(self.close_button)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(formats)
        layout.addLayout(check)
        layout.addWidget(self.check_label)
        layout.addWidget(self.progress_bar)
        layout.addWidget(self.status_label)
        layout.addStretch(1)
        layout.addLayout(buttons)
        self.setMinimumWidth(520)
        self.resize(600, 560)  # room for a two-line model summary and a four-line check result

    def _connect(self) -> None:
        self.checkpoint_file.fileChanged.connect(self.load)
        self.save_button.clicked.connect(self.save)
        self.check_button.clicked.connect(self.run_check)
        self.close_button.clicked.connect(self.close)
        for box in self.format_boxes.values():
            box.toggled.connect(self._update_buttons)

    # the checkpoint ---------------------------------------------------------------------------------
    def load(self, path: Optional[str] = None) -> bool:
        """Load the checkpoint (GUI thread); on failure say why and disable Save and the check."""
        from ..core.checkpoint import build_model, load_checkpoint
        from ..core.compression_tasks import example_inputs_for

        path = user_path(path if path is not None else self.checkpoint_file.filePath())
        self.model = self.card = self.example = None
        self.check_result = None
        self.check_label.setText("Not checked yet.")
        self.load_error = ""
        try:
            if not path:
                raise RSLabError("choose a checkpoint to export")
            checkpoint = load_checkpoint(path)
            model = build_model(checkpoint)
            example = example_inputs_for(checkpoint.card)
        except RSLabError as exc:
            self.load_error = str(exc)
        except Exception as exc:  # a checkpoint whose weights break the model in some other way
            self.load_error = f"{os.path.basename(path)} cannot be loaded ({type(exc).__name__}: {exc})"
        if self.load_error:
            self.model_info.setStyleSheet(ERROR_STYLE)
            self.model_info.setText(f"Cannot export: {self.load_error}")
            self._update_buttons()
            return False
        self.model, self.card, self.example = model, checkpoint.card, example
        compressed = checkpoint.card.compressed
        bits = sorted({b for layer in (checkpoint.card.bit_widths or {}).values() for b in layer.values()})
        self.model_info.setStyleSheet(INFO_STYLE)
        self.model_info.setText(
            f"{task_label(checkpoint.card.task)} · {checkpoint.card.architecture} · "
            + (f"compressed ({', '.join(map(str, bits))} bits)" if compressed else "full precision (32 bits)")
            + f" · input {' + '.join(describe_shape(x) for x in example)}")
        # defaults follow the checkpoint until the user types their own
        folder, name = default_export_folder(path), f"{Path(path).stem}_export"
        if user_path(self.folder.filePath()) in ("", self._defaults[0]):
            self.folder.setFilePath(folder)
        if self.name_edit.text().strip() in ("", self._defaults[1]):
            self.name_edit.setText(name)
        self._defaults = (folder, name)
        self._set_status("")
        self._update_buttons()
        return True

    # inputs -----------------------------------------------------------------------------------------
    def formats(self) -> List[str]:
        return [key for key, _ in FORMATS if self.format_boxes[key].isChecked()]

    def targets(self) -> Dict[str, str]:
        """{format: path} Save would write; RSLabError when something is missing or wrong."""
        if self.model is None:
            raise RSLabError(self.load_error or "choose a checkpoint to export")
        folder = user_path(self.folder.filePath())
        if not folder:
            raise RSLabError("choose the output folder")
        if os.path.exists(folder) and not os.path.isdir(folder):
            raise RSLabError(f"the output folder {folder} is a file")
        stem = self._stem()
        if not stem or "/" in stem or os.sep in stem:
            raise RSLabError("give a plain base name for the files (no folder)")
        formats = self.formats()
        if not formats:
            raise RSLabError("tick at least one format")
        return export_paths(folder, stem, formats)

    def _stem(self) -> str:
        stem = self.name_edit.text().strip()
        return stem[:-3] if stem.lower().endswith(".pt") else stem

    def confirm_overwrite(self, paths: List[str]) -> bool:
        """Ask before replacing existing files (Yes/No, No by default); tests replace this method."""
        names = "\n".join(os.path.basename(p) for p in paths)
        answer = QMessageBox.question(
            self, "RS Lab: replace files?",
            f"These files exist in {os.path.dirname(paths[0])}:\n{names}\n\nReplace them?",
            QMessageBox.Yes | QMessageBox.No, QMessageBox.No)
        return answer == QMessageBox.Yes

    # running ----------------------------------------------------------------------------------------
    def save(self) -> None:
        """Write the chosen formats in the background (after asking before any overwrite)."""
        if self.task is not None:
            return
        try:
            targets = self.targets()
        except RSLabError as exc:
            self._fail(str(exc))
            self.exported.emit({}, str(exc))
            return
        existing = [p for p in targets.values() if os.path.exists(p)]
        if existing and not self.confirm_overwrite(existing):
            text = "nothing written: the existing files were kept"
            self._set_status(text[0].upper() + text[1:])
            self.exported.emit({}, text)
            return
        folder, stem = user_path(self.folder.filePath()), self._stem()
        model, card, example, formats = self.model, self.card, self.example, list(targets)
        extra = self._report_extra()

        def job(progress, cancelled) -> Dict[str, str]:
            from ..core.export import export_all

            return export_all(model, card, example, folder, stem, formats, overwrite=bool(existing),
                              progress=progress, cancelled=cancelled, extra=extra)

        self.written = {}
        self._start(job, "RS Lab: exporting a model", self._saved)

    def _report_extra(self) -> Dict[str, Any]:
        """What the JSON report carries beyond the BOPs: the source checkpoint and its compression record."""
        extra: Dict[str, Any] = {"source_checkpoint": user_path(self.checkpoint_file.filePath()),
                                 "card": self.card.summary()}
        source = user_path(self.checkpoint_file.filePath())
        # the run's report belongs to the checkpoint it wrote; another one carries its own card's record
        compression = (self.report if self.report and source == self._report_for else None) \
            or self.card.training.get("compression")
        if compression:
            extra["compression"] = compression
        return json.loads(json.dumps(extra, default=str))  # plain JSON values only

    def run_check(self) -> None:
        """Export to a temporary ONNX file and show how far onnxruntime is from PyTorch."""
        if self.task is not None:
            return
        if self.model is None:
            self._fail(self.load_error or "choose a checkpoint to export")
            self.checked.emit(None, self.load_error)
            return
        self.check_label.setText("Checking…")
        self._start(onnx_check_job(self.model, self.example), "RS Lab: ONNX check", self._check_done)

    def _start(self, job, description: str, done: Callable[[Any, str], None]) -> None:
        self._set_status("Working…")
        self.task = tasks.JobTask(description, job, on_finished=partial(self._task_done, done))
        self.task.progressChanged.connect(self.progress_bar.show_percent)
        self.task.message.connect(self._set_status)
        self._run_task(self.task)

    def _task_done(self, done: Callable[[Any, str], None], result: Any, error: str) -> None:
        if self._task_ended():
            done(result, error)

    def _saved(self, written: Optional[Dict[str, str]], error: str) -> None:
        if written is None:
            self._fail(error)
            self.exported.emit({}, error)
            return
        self.written = dict(written)
        self.progress_bar.setValue(100)
        self._set_status("Written:\n" + "\n".join(written.values()))
        self.exported.emit(dict(written), "")

    def _check_done(self, check: Optional[Dict[str, float]], error: str) -> None:
        if check is None:
            first = error.splitlines()[0] if error else "failed"
            self.check_label.setStyleSheet(ERROR_STYLE)
            self.check_label.setText(f"ONNX check failed: {first}")
            self._set_status("")
            self.checked.emit(None, error)
            return
        self.check_result = check
        self.progress_bar.setValue(100)
        self.check_label.setStyleSheet("")
        self.check_label.setText(describe_check(check))
        self._set_status("")
        self.checked.emit(check, "")

    def closeEvent(self, event: QCloseEvent) -> None:  # noqa: N802
        """Closing the dialog cancels a running export or check: it would otherwise write files unseen."""
        self._cancel_running()
        super().closeEvent(event)

    def reject(self) -> None:
        """Esc: as Close."""
        self._cancel_running()
        super().reject()

    def _cancel_running(self) -> None:
        if self.task is not None:
            tasks.cancel_if_alive(self.task)

    # state ------------------------------------------------------------------------------------------
    def _set_running(self, running: bool) -> None:
        for widget in (self.checkpoint_file, self.folder, self.name_edit, self.formats_box):
            widget.setEnabled(not running)
        self._update_buttons()

    def _update_buttons(self) -> None:
        idle = self.task is None
        self.save_button.setEnabled(idle and self.model is not None and bool(self.formats()))
        self.check_button.setEnabled(idle and self.model is not None)

    def _fail(self, error: str) -> None:
        self.status_label.setStyleSheet(ERROR_STYLE)
        self.status_label.setText("Not exported: " + failure_text(error).splitlines()[0])
        self.progress_bar.setValue(0)
        self._fit_height()

    def _set_status(self, text: str) -> None:
        self.status_label.setStyleSheet("")
        self.status_label.setText(text)
        self._fit_height()

    def _fit_height(self) -> None:
        """Grow to show every line of the status (four written paths) and of the model summary: at the size
        set once, wrapped labels were squeezed and overlapped, and two of the four paths were hidden."""
        self.layout().activate()
        needed = self.layout().totalHeightForWidth(self.width()) if self.layout().hasHeightForWidth() \
            else self.sizeHint().height()
        if needed > self.height():
            self.resize(self.width(), needed)
