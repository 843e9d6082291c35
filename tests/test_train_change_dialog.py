"""The training dialog on real QGIS: a short real training run with live plots, bad input, cancel."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from levir import LEVIR
from qgis.core import QgsApplication
from qgis.PyQt import sip
from qgis.PyQt.QtCore import Qt

from project_layers import add_raster
from rslab.core.change_data import pairs_from_folder
from rslab.core.checkpoint import read_card
from rslab.ui.train_change_dialog import TrainChangeDialog

PAIRS = ("test_2_0000_0000", "test_77_0512_0256")
TIMEOUT_MS = 120_000


@pytest.fixture()
def two_pairs(shared_data, tmp_path) -> Path:
    """A training folder (A/, B/, label/) with two LEVIR pairs."""
    source = shared_data / LEVIR
    root = tmp_path / "data"
    for folder in ("A", "B", "label"):
        (root / folder).mkdir(parents=True)
        for name in PAIRS:
            shutil.copy(source / folder / f"{name}.png", root / folder / f"{name}.png")
    return root


@pytest.fixture()
def dialog(qtbot, qgis_app):
    widget = TrainChangeDialog()
    qtbot.addWidget(widget)
    widget.show()
    return widget


def configure(dialog, data, output, iterations=3) -> None:
    """Tiny settings for a run of seconds; `output` None leaves 'Save checkpoint as' as it is."""
    dialog.data_dir.setFilePath(str(data))
    if output is not None:
        dialog.output_file.setFilePath(str(output))
    dialog.iterations_spin.setValue(iterations)
    dialog.eval_spin.setValue(1)
    dialog.batch_spin.setValue(2)
    dialog.crop_spin.setValue(64)
    dialog.width_combo.setCurrentIndex(dialog.width_combo.findText("custom"))
    dialog.base_spin.setValue(8)
    dialog.channels_spin.setValue(8)


def test_short_training_plots_every_epoch_and_emits_the_checkpoint(qtbot, dialog, two_pairs, tmp_path):
    output = tmp_path / "models" / "tiny"
    configure(dialog, two_pairs, output)
    with qtbot.waitSignal(dialog.trained, timeout=TIMEOUT_MS) as done:
        qtbot.mouseClick(dialog.start_button, Qt.LeftButton)
        assert dialog.cancel_button.isEnabled() and not dialog.start_button.isEnabled()
    path = done.args[0]
    assert path == str(output) + ".pt" and os.path.isfile(path)
    card = read_card(path)
    assert card.arguments == {"bands": 3, "base": 8, "channels": 8}
    from rslab.core.change_data import training_split

    train, val, _ = training_split(pairs_from_folder(str(two_pairs)))  # the split Processing makes too
    assert card.training["validation_pairs"] == [val[0].name] and card.training["train_pairs"] == [train[0].name]

    epochs, losses = dialog.loss_curve.getData()
    _, f1 = dialog.f1_curve.getData()
    assert list(epochs) == [1, 2, 3] and len(losses) == 3 and len(f1) == 3
    assert all(loss > 0 for loss in losses) and all(0 <= v <= 1 for v in f1)
    assert [r["iteration"] for r in dialog.history] == [1, 2, 3]
    from qgis.PyQt.QtGui import QImage, QPainter

    painter = QPainter(QImage(10, 10, QImage.Format_ARGB32))
    for plot in (dialog.loss_plot, dialog.f1_plot):  # whole epochs only (it ticked 1.2, 1.4, ...)
        drawn = [text for _, _, text in plot.getAxis("bottom").generateDrawSpecs(painter)[2]]
        assert drawn and all(float(text).is_integer() for text in drawn), drawn
    assert {"0", "1"} <= {text for _, _, text in dialog.f1_plot.getAxis("left").generateDrawSpecs(painter)[2]}
    painter.end()
    best_x, best_y = dialog.best_marker.getData()
    assert list(best_x) == [dialog.result.best_iteration] and list(best_y) == [dialog.result.best_f1]
    assert dialog.status_label.text().startswith(  # the device in one pair of brackets: "on cpu (2 threads)"
        f"Best validation F1 {dialog.result.best_f1:.3f} at iteration {dialog.result.best_iteration} on cpu (")
    name = os.path.basename(dialog.result.checkpoint)  # the file's name, its folder in the log and tooltip
    assert f"Saved as {name}" in dialog.status_label.text() and dialog.status_label.toolTip() == dialog.result.checkpoint
    assert f"Saved to {dialog.result.checkpoint}" in dialog.log.toPlainText()
    log = dialog.log.toPlainText()
    assert f"Validation pairs (1, held out): {val[0].name}" in log and "epoch 3 (iteration 3)" in log
    assert dialog.progress_bar.value() == 100 and dialog.start_button.isEnabled()


def test_without_a_file_name_each_training_saves_a_new_checkpoint(qtbot, dialog, two_pairs):
    """The change dock keeps one dialog: a name filled in when it was built made a second training overwrite the
    first model. Left empty, each run takes a new file under the profile, also two runs in one second."""
    configure(dialog, two_pairs, None, iterations=1)
    paths = []
    try:
        for _ in range(2):
            with qtbot.waitSignal(dialog.trained, timeout=TIMEOUT_MS) as done:
                qtbot.mouseClick(dialog.start_button, Qt.LeftButton)
            paths.append(done.args[0])
        assert paths[0] != paths[1] and all(os.path.isfile(path) for path in paths)
        folder = os.path.join(QgsApplication.qgisSettingsDirPath(), "rslab", "checkpoints")
        assert {os.path.dirname(path) for path in paths} == {os.path.normpath(folder)}
        assert all(os.path.basename(path).startswith("arcdnet_") for path in paths)
        assert dialog.output_file.filePath() == ""  # the next run gets a new name again
        assert "QGIS profile" in dialog.output_file.lineEdit().placeholderText()
    finally:
        for path in set(paths):
            os.remove(path)


def test_partial_labels_chosen_in_the_dialog(qtbot, dialog, shared_data, tmp_path):
    source = shared_data / "change" / "landsat_nanjing"
    root = tmp_path / "nanjing"
    for folder, name in (("A", "Nanjing_t1_TM6b.tif"), ("B", "Nanjing_t2_TM6b.tif"),
                         ("label", "Nanjing_reference_0unl_1unch_2ch.tif")):
        (root / folder).mkdir(parents=True)
        shutil.copy(source / name, root / folder / "nanjing.tif")
    for coding in ("binary", "partial"):
        configure(dialog, root, tmp_path / f"{coding}.pt", 1)
        dialog.val_dir.setFilePath(str(root))  # one pair: it validates on itself
        qtbot.keyClicks(dialog.coding_combo, coding)  # chosen by its text, as a person would
        assert dialog.params().label_coding == coding
        with qtbot.waitSignal(dialog.trained, timeout=TIMEOUT_MS):
            qtbot.mouseClick(dialog.start_button, Qt.LeftButton)
        assert read_card(str(tmp_path / f"{coding}.pt")).training["params"]["label_coding"] == coding
        noted = "choose the partial coding" in dialog.status_label.text()
        assert noted == (coding == "binary")
    assert read_card(str(tmp_path / "partial.pt")).metrics["validation"]["pixels"] == 14756


def test_bands_chosen_in_the_dialog(qtbot, dialog, shared_data, tmp_path):
    """The folder's first before image lists its bands; the checked ones are trained on and named in the card."""
    source = shared_data / "change" / "oscd_s2"
    root = tmp_path / "rennes"
    for folder, name in (("A", "rennes_t1_S2_13b_10m.tif"), ("B", "rennes_t2_S2_13b_10m.tif"), ("label", "rennes_cm.tif")):
        (root / folder).mkdir(parents=True)
        shutil.copy(source / name, root / folder / "rennes.tif")
    assert dialog.bands_combo.count() == 0
    configure(dialog, root, tmp_path / "s2.pt", 1)
    dialog.val_dir.setFilePath(str(root))
    assert dialog.bands_combo.count() == 13 and "B08" in dialog.bands_combo.itemText(7)
    assert dialog.params().bands is None
    for band in (2, 3, 4, 8):
        dialog.bands_combo.setItemCheckState(band - 1, Qt.Checked)
    assert dialog.params().bands == (2, 3, 4, 8)
    with qtbot.waitSignal(dialog.trained, timeout=TIMEOUT_MS):
        qtbot.mouseClick(dialog.start_button, Qt.LeftButton)
    card = read_card(str(tmp_path / "s2.pt"))
    assert card.bands == ["B02", "B03", "B04", "B08"] and card.training["params"]["bands"] == [2, 3, 4, 8]
    assert "Bands: 2, 3, 4, 8" in dialog.log.toPlainText()
    dialog.data_dir.setFilePath(str(tmp_path / "nowhere"))
    assert dialog.bands_combo.count() == 0


def test_training_on_layers_of_the_project(qtbot, dialog, project, shared_data, tmp_path):
    """One before / after / label triple of loaded layers (Nanjing, partial labels): it trains and validates on
    itself; its bands are listed from the before layer; missing or repeated layers are refused before a task."""
    source = shared_data / "change" / "landsat_nanjing"
    layers = [add_raster(project, shutil.copy(source / name, tmp_path / name), role) for name, role in (
        ("Nanjing_t1_TM6b.tif", "t1"), ("Nanjing_t2_TM6b.tif", "t2"), ("Nanjing_reference_0unl_1unch_2ch.tif", "ref"))]
    configure(dialog, "", tmp_path / "layers.pt", 1)
    assert dialog.data_pages.currentIndex() == 0
    dialog.use_layers(*layers, coding="partial")
    assert dialog.from_layers() and dialog.data_pages.currentIndex() == 1
    assert dialog.val_dir.lineEdit().placeholderText() == "optional: if empty, the pair validates on itself"
    assert dialog.bands_combo.count() == 6 and dialog.coding_combo.currentData() == "partial"
    train, val, _ = dialog.split()
    assert train == val and train[0].label == str(tmp_path / "Nanjing_reference_0unl_1unch_2ch.tif")
    with qtbot.waitSignal(dialog.trained, timeout=TIMEOUT_MS):
        qtbot.mouseClick(dialog.start_button, Qt.LeftButton)
    card = read_card(str(tmp_path / "layers.pt"))
    assert card.training["train_pairs"] == card.training["validation_pairs"] == ["Nanjing_t1_TM6b"]
    assert card.metrics["validation"]["pixels"] == 14756 and card.training["data"].startswith("layers t1, t2, ref")
    assert "the training pair itself" in dialog.log.toPlainText()

    dialog.label_layer.setLayer(None)
    qtbot.mouseClick(dialog.start_button, Qt.LeftButton)
    assert dialog.task is None and "choose the label layer" in dialog.status_label.text()
    dialog.label_layer.setLayer(layers[2])
    dialog.after_layer.setLayer(layers[0])
    qtbot.mouseClick(dialog.start_button, Qt.LeftButton)
    assert dialog.task is None and "same layer" in dialog.status_label.text()


def test_training_on_label_polygons(qtbot, dialog, project, shared_data, tmp_path):
    """Nanjing's reference drawn as polygons: the field and the partial coding are set, the polygons are burnt
    onto the before grid and validate on the reference's 14,756 labelled pixels; a memory layer is refused."""
    from qgis.core import QgsFeatureRequest, QgsVectorLayer
    from test_change_labels import polygonise

    source = shared_data / "change" / "landsat_nanjing"
    dates = [add_raster(project, shutil.copy(source / name, tmp_path / name), role)
             for name, role in (("Nanjing_t1_TM6b.tif", "t1"), ("Nanjing_t2_TM6b.tif", "t2"))]
    polygons = QgsVectorLayer(polygonise(str(source / "Nanjing_reference_0unl_1unch_2ch.tif"),
                                         str(tmp_path / "drawn.gpkg")), "drawn", "ogr")
    project.addMapLayer(polygons)
    configure(dialog, "", tmp_path / "polygons.pt", 1)
    dialog.use_layers(*dates, polygons, coding="binary")
    assert dialog.label_field.isEnabled() and dialog.label_field.currentField() == "label"
    assert dialog.coding_combo.currentData() == "partial" and not dialog.coding_combo.isEnabled()
    with qtbot.waitSignal(dialog.trained, timeout=TIMEOUT_MS):
        qtbot.mouseClick(dialog.start_button, Qt.LeftButton)
    assert read_card(str(tmp_path / "polygons.pt")).metrics["validation"]["pixels"] == 14756
    assert "573 polygons of 'drawn' burnt onto the before layer's grid: 12,393 no-change and 2,363 change" in dialog.log.toPlainText()

    memory = polygons.materialize(QgsFeatureRequest())
    project.addMapLayer(memory)
    dialog.label_layer.setLayer(memory)
    qtbot.mouseClick(dialog.start_button, Qt.LeftButton)
    assert dialog.task is None and "is not a file on disk" in dialog.status_label.text()
    dialog.label_layer.setLayer(dates[0])  # a raster again: the coding is the user's to choose
    assert dialog.coding_combo.isEnabled() and not dialog.label_field.isEnabled()


def test_a_folder_without_the_layout_is_refused_clearly(qtbot, dialog, tmp_path):
    (tmp_path / "A").mkdir()
    configure(dialog, tmp_path, tmp_path / "model.pt")
    with qtbot.assertNotEmitted(dialog.trained):
        qtbot.mouseClick(dialog.start_button, Qt.LeftButton)
    assert "needs sub-folders A/, B/ and label/; missing: B, label" in dialog.status_label.text()
    assert dialog.status_label.text().startswith("Training failed:") and dialog.task is None
    dialog.data_dir.setFilePath("")
    qtbot.mouseClick(dialog.start_button, Qt.LeftButton)
    assert "choose the training data folder" in dialog.status_label.text()


def test_a_validation_folder_replaces_the_hold_out(qtbot, dialog, two_pairs, shared_data, tmp_path):
    configure(dialog, two_pairs, tmp_path / "model.pt")
    dialog.val_dir.setFilePath(str(shared_data / LEVIR))
    train, val, _ = dialog.split()
    assert [p.name for p in train] == list(PAIRS) and len(val) == 11


def test_cancel_stops_training_without_a_checkpoint(qtbot, dialog, two_pairs, tmp_path):
    output = tmp_path / "never.pt"
    configure(dialog, two_pairs, output, iterations=1000)
    qtbot.mouseClick(dialog.start_button, Qt.LeftButton)
    task = dialog.task
    with qtbot.waitSignal(task.jobFinished, timeout=TIMEOUT_MS) as done:
        qtbot.waitUntil(lambda: len(dialog.history) >= 1 and dialog.progress_bar.value() > 0, timeout=TIMEOUT_MS)
        qtbot.mouseClick(dialog.cancel_button, Qt.LeftButton)
    assert done.args[0] is None and "cancelled" in done.args[1]
    assert dialog.status_label.text() == "Cancelled; no output was written" and dialog.task is None
    assert dialog.progress_bar.value() == 0  # the bar does not stay part-filled after a cancel
    assert not output.exists() and os.listdir(tmp_path) == ["data"]


def test_closing_keeps_training_and_deleting_the_dialog_cancels_it(qtbot, two_pairs, tmp_path):
    dialog = TrainChangeDialog()  # not handed to qtbot: this test deletes it
    dialog.show()
    output = tmp_path / "never.pt"
    configure(dialog, two_pairs, output, iterations=5000)
    qtbot.mouseClick(dialog.start_button, Qt.LeftButton)
    task = dialog.task
    with qtbot.waitSignal(task.jobFinished, timeout=TIMEOUT_MS) as done:
        qtbot.waitUntil(lambda: len(dialog.history) >= 1, timeout=TIMEOUT_MS)
        dialog.close()
        qtbot.waitUntil(lambda: len(dialog.history) >= 2, timeout=TIMEOUT_MS)  # still training, hidden
        sip.delete(dialog)  # what unloading the plugin does
    assert done.args[0] is None and "cancelled" in done.args[1]
    assert not output.exists()


def test_width_presets_fill_and_lock_the_spin_boxes(dialog):
    dialog.width_combo.setCurrentIndex(dialog.width_combo.findText("full 64/64 (paper, 14.3 M parameters)"))
    assert (dialog.base_spin.value(), dialog.channels_spin.value()) == (64, 64)
    assert not dialog.base_spin.isEnabled()
    dialog.width_combo.setCurrentIndex(dialog.width_combo.findText("custom"))
    assert dialog.base_spin.isEnabled() and dialog.channels_spin.isEnabled()
    assert dialog.width_combo.itemText(0) == "narrow 32/32 (default)"


def test_the_dialog_holds_out_what_processing_holds_out(dialog, shared_data, tmp_path):
    """One split for both front ends (core/change_data.training_split): the dialog held out every k-th pair and
    Processing a seeded 20 %, so their validation F1s on one folder were not comparable, and the dialog
    refused a folder of one pair that Processing trained on (validating on the pair itself, with a warning)."""
    from rslab.core.change_data import training_split

    folder = tmp_path / "levir"  # a copy: the dialog opens the first before image with QGIS (it writes .aux.xml)
    shutil.copytree(shared_data / LEVIR, folder)
    dialog.data_dir.setFilePath(str(folder))
    train, val, note = dialog.split()
    assert (train, val, note) == training_split(pairs_from_folder(str(folder)))
    assert len(val) == 2 and len(train) == 9 and not set(train) & set(val) and note is None
    one = tmp_path / "one"
    for sub in ("A", "B", "label"):
        (one / sub).mkdir(parents=True)
        shutil.copy(folder / sub / f"{train[0].name}.png", one / sub)
    dialog.data_dir.setFilePath(str(one))
    train, val, note = dialog.split()
    assert train == val and len(train) == 1 and note.startswith("only one training pair: it is also the validation")
    dialog.val_dir.setFilePath(str(one))  # validating on the training pairs: said so
    train, val, note = dialog.split()
    assert train == val and note.startswith(f"the validation pairs {train[0].name} are training pairs too")


def test_folders_typed_with_a_tilde_are_in_the_home_folder(dialog, two_pairs, tmp_path, monkeypatch):
    """The dialog read '~/pairs' as a folder named '~' (no pairs found); the home folder is meant."""
    home = tmp_path / "home"
    home.mkdir()
    (home / "pairs").symlink_to(two_pairs)
    monkeypatch.setenv("HOME", str(home))
    dialog.data_dir.setFilePath("~/pairs")
    dialog.val_dir.setFilePath("~/pairs")
    train, val, _ = dialog.split()
    assert [p.name for p in train] == [p.name for p in val] == list(PAIRS)


def test_two_runs_started_in_one_second_get_two_checkpoint_names(monkeypatch):
    """The name is given when a run starts and the file written when it ends: two dialogs started in the same
    second were both given arcdnet_<time>.pt, and the second model replaced the first."""
    import datetime

    from rslab.ui import job_dock

    class Frozen(datetime.datetime):
        @classmethod
        def now(cls, tz=None):
            return cls(2026, 12, 3, 9, 0, 0)

    monkeypatch.setattr(job_dock._dt, "datetime", Frozen)
    first, second = job_dock.new_checkpoint_path("arcdnet"), job_dock.new_checkpoint_path("arcdnet")
    assert first.endswith("arcdnet_20261203-090000.pt") and second.endswith("arcdnet_20261203-090000_2.pt")
    assert not os.path.exists(first) and not os.path.exists(second)


def test_the_dialog_fits_a_laptop_screen(qtbot, dialog, project):
    """Its least size was 645 x 887: on a 1366 x 768 screen Start and Close lay below the screen's edge. Both
    pages of training data (a folder, layers of the project) fit in 1366 x 700 (the rest: title bar, panel)."""
    for page in range(dialog.source_combo.count()):
        dialog.source_combo.setCurrentIndex(page)
        qtbot.wait(50)
        least = dialog.minimumSizeHint()
        assert least.width() <= 1366 and least.height() <= 700, (page, least)


def test_the_data_area_is_as_tall_as_the_page_shown(qtbot, dialog):
    """The folder page (one row) stood in the height of the layers page (four rows), with empty bands above and
    below the folder field."""
    folder = dialog.source_combo.findData("folder")
    layers = dialog.source_combo.findData("layers")
    dialog.source_combo.setCurrentIndex(layers)
    tall = dialog.data_pages.sizeHint().height()
    dialog.source_combo.setCurrentIndex(folder)
    row = dialog.data_dir.sizeHint().height()
    assert dialog.data_pages.sizeHint().height() <= row + 2 < tall / 2
