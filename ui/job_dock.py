"""What the job docks share: input layers as files, output folders, and one core job at a time
in the background with progress, cancel and clear failures.

A dock subclasses `JobDock`, builds a request (paths + params dataclass +
`job(progress, cancelled)`), calls `start_job`, and implements
`_finished(run, error)` starting with `request = self._end_job()`.
"""
from __future__ import annotations

import datetime as _dt
import os
import re
import shutil
import tempfile
from functools import partial
from pathlib import Path
from typing import Any, Iterable, List, Optional, Sequence, Set, Tuple

from qgis.core import Qgis, QgsApplication, QgsLayerTreeGroup, QgsMapLayer, QgsProject, QgsProviderRegistry
from qgis.gui import QgsMapLayerComboBox
from qgis.PyQt import sip
from qgis.PyQt.QtCore import QObject
from qgis.PyQt.QtWidgets import QPushButton, QWidget

from ..core.change_labels import burn_labels
from ..core.errors import RSLabError
from . import task as tasks
from .layers import layer_file
from .help_button import help_button
from .widgets import TimedProgressBar, message_label, raster_combo


def date_files(before: Optional[QgsMapLayer], after: Optional[QgsMapLayer]) -> Tuple[str, str]:
    """The files behind a before and an after layer; RSLabError for a missing, unusable or repeated layer."""
    paths = layer_file(before, "before"), layer_file(after, "after")
    if before.id() == after.id():
        raise RSLabError("the before and after layers are the same layer; pick two dates")
    return paths


def scratch_folder(owner: QObject, prefix: str) -> str:
    """A new temporary folder that goes when `owner` (a dock, a dialog) is destroyed.

    For files a run needs but the user does not keep (label polygons burnt into
    a raster): an owner reuses its one folder run after run, so repeated runs
    leave nothing behind in the system's temporary folder.
    """
    folder = tempfile.mkdtemp(prefix=prefix)
    owner.destroyed.connect(partial(shutil.rmtree, folder, True))
    return folder


def label_file(layer: Optional[QgsMapLayer], field: str, grid: str, folder: str, role: str) -> Tuple[str, str]:
    """(raster path, message) for a label layer: its file, or for polygons a raster in `folder` they are burnt
    into on `grid`'s pixels (core/change_labels.py) and a message saying how many pixels they label."""
    if layer is None or layer.type() != QgsMapLayer.VectorLayer:
        return layer_file(layer, role), ""
    parts = QgsProviderRegistry.instance().decodeUri(layer.providerType(), layer.source())
    if layer.providerType() != "ogr" or not os.path.isfile(parts.get("path", "")):
        raise RSLabError(f"the {role} layer '{layer.name()}' is not a file on disk (provider {layer.providerType()}); "
                         "save it as a GeoPackage first (right-click > Export > Save Features As…) and pick that layer")
    if not field:
        raise RSLabError(f"choose the field of '{layer.name()}' that holds 1 (no change) or 2 (change)")
    output = os.path.join(folder, f"{safe_name(layer.name())}_{role}.tif")
    burnt = burn_labels(parts["path"], field, grid, output, parts.get("layerName") or None)
    return burnt.path, (f"{burnt.polygons} polygons of '{layer.name()}' burnt onto the before layer's grid: "
                        f"{burnt.no_change_pixels:,} no-change and {burnt.change_pixels:,} change pixels")


SAFE_NAME_MAX = 80  # characters of a layer name kept in an output file name (two of them fit in one name)


def safe_name(text: str) -> str:
    """A layer name made safe, and short enough, to use in a file name: two 120-character Sentinel-2 product
    names made a 260-byte output name, and the run said 'choose a shorter name' of a name nobody chose."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_.")[:SAFE_NAME_MAX].rstrip("_.") or "layer"


def unused_stem(folder: str, stem: str, suffixes: Iterable[str]) -> str:
    """`folder/stem` (or `stem_2`, `stem_3`, …) such that no `<stem>_<suffix>` file exists yet."""
    suffixes = list(suffixes)
    candidate, n = stem, 1
    while any(os.path.exists(os.path.join(folder, f"{candidate}_{s}")) for s in suffixes):
        n += 1
        candidate = f"{stem}_{n}"
    return os.path.join(folder, candidate)


def user_path(text: str) -> str:
    """A file or folder as typed ('~/out', 'out'): absolute, with ~ expanded ('' stays ''). The core expands ~
    itself; the UI must name the same file, to find an unused name and to open the output as a layer."""
    text = text.strip()
    return os.path.abspath(os.path.expanduser(text)) if text else ""


RESULT_OF = "rslab/result_of"  # on a result group: the id of the input layer it was computed from
CUSTOM_CHECKPOINT = "Checkpoint file…"  # the model lists' last entry: a checkpoint the user picks
NEW_CHECKPOINT_HINT = "a new file under the QGIS profile (rslab/checkpoints)"  # placeholder of 'save as' fields


def profile_folder(name: str) -> Path:
    """`rslab/<name>` under the QGIS profile: files the user keeps (checkpoints, exports) outlive temporary
    folders and, unlike the plugin's own folder, plugin updates."""
    return Path(QgsApplication.qgisSettingsDirPath()) / "rslab" / name


_HANDED_OUT: Set[str] = set()  # new checkpoint names given to runs in this session (their files come at the end)


def new_checkpoint_path(stem: str) -> str:
    """`<stem>_<date-time>.pt` under the QGIS profile, so models outlive temporary folders; `_2`, `_3`, … when
    that file exists or another run of this session was given that name (two runs started in one second: the
    file is written only when a run ends, and the second run's model replaced the first's)."""
    folder = profile_folder("checkpoints")
    base = folder / f"{stem}_{_dt.datetime.now():%Y%m%d-%H%M%S}"
    path, n = f"{base}.pt", 1
    while os.path.exists(path) or path in _HANDED_OUT:
        n += 1
        path = f"{base}_{n}.pt"
    _HANDED_OUT.add(path)
    return path


def numbered_group_name(parent: QgsLayerTreeGroup, name: str) -> str:
    """`name`, or `name, run 2` (3, …) when `parent` already holds a group of that name: a method run again on one
    layer gave two groups named alike, each holding layers named alike, which only their files told apart."""
    taken = {child.name() for child in parent.children() if isinstance(child, QgsLayerTreeGroup)}
    candidate, n = name, 1
    while candidate in taken:
        n += 1
        candidate = f"{name}, run {n}"
    return candidate


class JobDock(QWidget, tasks.TaskOwner):
    """Base of the task docks. Subclasses provide the widgets named below and `_finished`.

    A run's layers belong to the project it started in: when that project is closed or replaced meanwhile
    (QgsProject's `cleared`), `project_closed` says so and the dock keeps the outputs but adds no layers.
    """

    MESSAGE_TITLE = "RS Lab"
    TEMP_PREFIX = "rslab-"
    HELP_SECTION = ""  # the start of the README heading the dock's Help button opens

    # set by subclasses: iface, output_dir; run_button, cancel_button, help_button, progress_bar, status_label
    # come from _build_job_widgets
    iface: Any
    task: Optional[tasks.JobTask]
    project_closed = False  # the project was closed or replaced since the current (or last) run started
    _refusal = ""  # the status line of a run refused before it started, until the form changes

    def _build_job_widgets(self, run_text: str) -> None:
        """The run, cancel and help buttons, the progress bar and the status line of a job dock."""
        self.run_button = QPushButton(run_text, self)
        self.cancel_button = QPushButton("Cancel", self)
        self.help_button = help_button(self, self.HELP_SECTION)
        self.progress_bar = TimedProgressBar(self)
        self.status_label = message_label(self)
        QgsProject.instance().cleared.connect(self._project_cleared)

    def _raster_combo(self, allow_empty: bool = False) -> QgsMapLayerComboBox:
        return raster_combo(self, allow_empty)

    def _output_folder(self) -> Tuple[str, bool]:
        """(folder, created): the chosen folder, or a new temporary one when none is chosen."""
        folder = user_path(self.output_dir.filePath())
        if not folder:
            return tempfile.mkdtemp(prefix=self.TEMP_PREFIX), True
        if os.path.exists(folder) and not os.path.isdir(folder):
            raise RSLabError(f"the output folder {folder} is a file")
        return folder, False

    def start_job(self, request: Any, description: str) -> None:
        """Run `request.job` as a JobTask; `_finished` gets its result on the GUI thread."""
        self._request = request
        self.task = tasks.JobTask(description, request.job, on_finished=self._finished)
        self.task.progressChanged.connect(self._progress)
        self.task.message.connect(self._set_status)
        self.task.cancelling.connect(self._show_cancelling)  # The dock's Cancel, or QGIS's task manager.
        self.project_closed = False
        QgsProject.instance().cleared.connect(self._note_project_closed)
        self._run_task(self.task)  # cancelled when the dock goes away (plugin unloaded)

    def _note_project_closed(self) -> None:
        self.project_closed = True

    def is_running(self) -> bool:
        return self.task is not None and getattr(self, "_request", None) is not None

    def cancel(self) -> None:
        if self.is_running():
            self.task.cancel()

    def _show_cancelling(self) -> None:
        if not sip.isdeleted(self):  # The dock deleted (the plugin unloaded) cancels its run.
            self._set_status("Cancelling…")

    def _project_cleared(self) -> None:
        """The project closed or replaced: between runs, what the dock shows of the last one (its status line,
        and in subclasses its readouts) described that project's layers, and stayed over the next project."""
        if sip.isdeleted(self) or self.is_running():
            return
        self._set_status("")
        self.progress_bar.setValue(0)
        self._forget_results()

    def _forget_results(self) -> None:
        """Subclasses drop the readouts of the closed project's runs."""

    def _end_job(self) -> Optional[Any]:
        """First step of `_finished`: the finished request, or None when the dock is already deleted (the
        plugin unloaded mid-run; the run's own temporary folder, left empty by the cancel, goes then too)."""
        if sip.isdeleted(self):
            request = getattr(self, "_request", None)
            if request is not None:
                self._remove_empty_folder(request)
            return None
        request, self._request = self._request, None
        QgsProject.instance().cleared.disconnect(self._note_project_closed)
        self._task_ended()
        return request

    def _add_result_layers(self, request: Any, result: Any) -> str:
        """Add a finished run's layers (the subclass's `_add_layers`) unless its project was closed meanwhile;
        the error text when QGIS could not open them, else ''. `self.group` is the new group or None."""
        self.group = None
        if self.project_closed:  # the layers would land in an unrelated project
            return ""
        try:
            self.group = self._add_layers(request, result)
        except RSLabError as exc:
            return str(exc)
        return ""

    @staticmethod
    def add_result_group(name: str, layer_id: str, layers: List[QgsMapLayer],
                         other_inputs: Sequence[Optional[str]] = ()) -> QgsLayerTreeGroup:
        """A group of `layers` above the input layer `layer_id`, above the run's `other_inputs` in the same
        group of the layer tree (the before layer, the reference: a reference loaded last, so on top, hid the
        results of every run), and above earlier result groups of that input, so the latest run is drawn on top
        (a change run inserted at the after layer went under earlier runs, whose opaque masks then hid it)."""
        project = QgsProject.instance()
        root = project.layerTreeRoot()
        parent, index = root, 0
        node = root.findLayer(layer_id)
        if node is not None and isinstance(node.parent(), QgsLayerTreeGroup):
            parent = node.parent()
            siblings = parent.children()
            inputs = [root.findLayer(i) for i in (layer_id, *other_inputs) if i]
            earlier = [n for n in siblings if n.customProperty(RESULT_OF) == layer_id]
            index = min(siblings.index(n) for n in inputs + earlier if n is not None and n.parent() is parent)
        group = parent.insertGroup(index, numbered_group_name(parent, name))
        group.setCustomProperty(RESULT_OF, layer_id)
        for layer in layers:
            project.addMapLayer(layer, False)
            group.addLayer(layer)
        return group

    def _done_text(self, folder: str) -> str:
        """The status line of a finished run, saying why no layers were added when its project was closed."""
        if self.project_closed:
            return f"Done; the project was closed meanwhile, outputs are in {folder}"
        return f"Done. Outputs in {folder}"

    def _progress(self, percent: float) -> None:
        self.progress_bar.show_percent(percent)

    def _set_running(self, running: bool) -> None:
        self.run_button.setEnabled(not running)
        self.cancel_button.setEnabled(running)

    @staticmethod
    def _remove_empty_folder(request: Any) -> None:
        # a compression request has no folder of its own (created_dir): nothing to remove
        if getattr(request, "created_dir", False) and os.path.isdir(request.output_dir) \
                and not os.listdir(request.output_dir):
            os.rmdir(request.output_dir)

    def _report_failure(self, error: str, context: str = "") -> None:
        """Say why a run (or, with `context`, a side job such as the mean spectrum) failed or was cancelled."""
        cancelled = tasks.was_cancelled(error)
        first = tasks.failure_text(error)
        if context:
            first = f"{context}: {first}"
        self.status_label.setStyleSheet("" if cancelled else tasks.ERROR_STYLE)
        self.status_label.setText(tasks.stopped_text(first, cancelled))
        self.progress_bar.setValue(0)
        if self.iface is not None and not cancelled:
            self.iface.messageBar().pushMessage(self.MESSAGE_TITLE, first, Qgis.Critical, 0)

    def _refuse(self, error: str) -> None:
        """Say why a run was not started (the form's input was refused): in the status line only, until the form
        changes (`_watch_form`). It also raised a red bar across the map that stayed until closed by hand, and a
        'Failed: choose the hyperspectral layer' line stayed after the layer was chosen."""
        self.status_label.setStyleSheet(tasks.ERROR_STYLE)
        self.status_label.setText(tasks.stopped_text(error, False))
        self.progress_bar.setValue(0)
        self._refusal = self.status_label.text()
        self.runFinished.emit(None, error)

    def _watch_form(self, *signals: Any) -> None:
        """Clear a refusal's status line when any of `signals` (the form's changes) fires."""
        for signal in signals:
            signal.connect(self._clear_refusal)

    def _clear_refusal(self, *_: Any) -> None:
        if self._refusal and self.status_label.text() == self._refusal:
            self._set_status("")
        self._refusal = ""

    def _fail(self, error: str) -> None:
        """Say why a run failed or was cancelled, and tell `runFinished` (the subclass's signal)."""
        self._report_failure(error)
        self.runFinished.emit(None, error)

    def _set_status(self, text: str) -> None:
        self._refusal = ""
        self.status_label.setStyleSheet("")
        self.status_label.setText(text)
