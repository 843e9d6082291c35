"""The change-detection dock on real QGIS: clicks, background runs, the styled result group, errors, cancel."""
from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from levir import LEVIR
from project_layers import RUN_TIMEOUT_MS, add_raster, click_run, group_names
import rasterio
from osgeo import gdal
from qgis.core import (
    QgsLayerTreeGroup,
    QgsPalettedRasterRenderer,
    QgsSingleBandPseudoColorRenderer,
)
from qgis.PyQt import sip
from qgis.PyQt.QtCore import Qt

from rslab.core.change_data import ChangePair, pairs_from_folder
from rslab.core.change_training import TrainChangeParams, train_change_detector
from rslab.core.outputs import check_output_paths
from rslab.ui.change_dock import CUSTOM_CHECKPOINT, ChangeDetectionDock, output_paths, uncertainty_histogram

PAIR = "test_2_0000_0000"


@pytest.fixture(scope="session")
def checkpoint(shared_data, tmp_path_factory) -> str:
    """A tiny AR-CDNet checkpoint trained for two iterations on two LEVIR pairs (the shipped one may not exist)."""
    pairs = pairs_from_folder(str(shared_data / LEVIR))[:2]
    path = str(tmp_path_factory.mktemp("checkpoint") / "tiny.pt")
    train_change_detector(pairs[:1], pairs[1:], path,
                          TrainChangeParams(iterations=2, eval_every=1, crop=64, batch_size=2, base=8, channels=8))
    return path


def copy_to(folder, path):
    """A copy in the test's folder: QGIS writes .aux.xml statistics beside the rasters it opens."""
    folder.mkdir(exist_ok=True)
    return shutil.copy(path, folder / f"{path.parent.name}_{path.name}")


@pytest.fixture()
def levir(project, shared_data, tmp_path):
    """One LEVIR pair and its label as project layers; the after layer at the bottom of the layer tree."""
    root = shared_data / LEVIR
    layers = {role: add_raster(project, copy_to(tmp_path / "inputs", root / folder / f"{PAIR}.png"), role)
              for role, folder in (("after", "B"), ("before", "A"), ("reference", "label"))}
    assert [n.name() for n in project.layerTreeRoot().children()] == ["reference", "before", "after"]
    return layers


@pytest.fixture()
def dock(qtbot, iface):
    widget = ChangeDetectionDock(iface)
    qtbot.addWidget(widget)
    return widget


def choose(dock, before, after, method="cva", reference=None, checkpoint=None, output=None) -> None:
    dock.before_combo.setLayer(before)
    dock.after_combo.setLayer(after)
    dock.reference_combo.setLayer(reference)
    dock.method_combo.setCurrentIndex(dock.method_combo.findData(method))
    if checkpoint:
        dock.model_combo.setCurrentIndex(dock.model_combo.findText(CUSTOM_CHECKPOINT))
        dock.model_file.setFilePath(checkpoint)
    if output is not None:
        dock.output_dir.setFilePath(str(output))


def message_texts(iface):
    return [item.text() for item in iface.messageBar().items()]


@pytest.mark.parametrize("method", ["cva", "arcdnet"])
def test_run_adds_one_styled_group_above_its_layers(method, qtbot, dock, levir, project, checkpoint, tmp_path):
    choose(dock, levir["before"], levir["after"], method, levir["reference"],
           checkpoint if method == "arcdnet" else None, tmp_path)
    result, error = click_run(qtbot, dock)

    assert error == "" and result is dock.result and result.method == method
    root = project.layerTreeRoot()
    name = "Changes: before → after " + ("(CVA)" if method == "cva" else f"(AR-CDNet, {os.path.basename(checkpoint)})")
    assert group_names(project) == [name]  # the method named: runs of two methods can be told apart
    group = dock.group
    # above the reference and the before layer too: a reference loaded last (on top) hid every run's results
    assert [n.name() for n in root.children()] == [name, "reference", "before", "after"]
    uncertainty, change = [node.layer() for node in group.findLayers()]
    assert isinstance(change.renderer(), QgsPalettedRasterRenderer)
    assert {c.value: c.color.alpha() for c in change.renderer().classes()} == {0.0: 0, 1.0: 255}
    assert isinstance(uncertainty.renderer(), QgsSingleBandPseudoColorRenderer)
    assert uncertainty.renderer().opacity() == pytest.approx(0.6)
    assert (uncertainty.renderer().classificationMin(), uncertainty.renderer().classificationMax()) == (0.0, 1.0)
    assert change.source() == result.outputs.change and os.path.dirname(change.source()) == str(tmp_path)
    assert os.path.isfile(result.outputs.probability) and os.path.isfile(result.outputs.report)
    if method == "arcdnet":
        assert result.model["path"] == os.path.abspath(checkpoint)

    text = dock.metrics_label.text()
    assert "F1" in text and f"{result.metrics['f1']:.3f}" in text and "Kappa" in text and "Uncertainty&nbsp;AUC" in text
    assert result.device.replace(" ", "&nbsp;") in text
    assert dock.histogram_data.sampled == 256 * 256 and dock.histogram_data.step == 1
    legend = re.sub(r"<[^>]+>", "", dock.histogram_legend.text()).replace("&nbsp;", " ")
    counts = {name: int(number.replace(",", "")) for name, number in re.findall(r"(unchanged|changed) \(([\d,]+) px\)",
                                                                                  legend)}
    assert set(counts) == {"unchanged", "changed"}
    assert sum(counts.values()) == 256 * 256 and counts["unchanged"] > 0
    assert counts["changed"] > 0 or method == "arcdnet"  # the two-iteration model may call nothing changed
    for name, curve in dock.histogram_curves.items():
        x, y = curve.getData()
        assert len(x) == len(y) + 1 and y.sum() == pytest.approx(1.0 if counts[name] else 0.0)
    assert dock.progress_bar.value() == 100 and not dock.cancel_button.isEnabled() and dock.run_button.isEnabled()


def test_without_reference_no_accuracy_and_a_temporary_folder(qtbot, dock, levir, project):
    choose(dock, levir["before"], levir["after"], "cva")
    folders = []
    try:
        for _ in range(2):
            result, error = click_run(qtbot, dock)
            assert error == ""
            folders.append(os.path.dirname(result.outputs.change))
        assert result.metrics == {}
        text = dock.metrics_label.text()
        assert "not computed" in text and "F1" not in text and text.startswith("<p>CVA · cpu&nbsp;(numpy)")
        assert all(os.path.basename(f).startswith("rslab-changes-") for f in folders)
        assert folders[0] != folders[1]  # a new folder per run
        assert folders[1] in dock.status_label.text()
        assert group_names(project) == ["Changes: before → after (CVA), run 2", "Changes: before → after (CVA)"]
    finally:
        project.clear()
        for folder in folders:
            shutil.rmtree(folder)


def test_a_run_ending_after_its_project_was_closed_adds_no_layers(qtbot, dock, levir, project, tmp_path):
    """File > New Project (or opening another one) during a run: the outputs stay in their folder, and the layers
    are not added to the unrelated project now open."""
    choose(dock, levir["before"], levir["after"], "cva", output=tmp_path / "out")
    with qtbot.waitSignal(dock.runFinished, timeout=RUN_TIMEOUT_MS) as done:
        qtbot.mouseClick(dock.run_button, Qt.LeftButton)
        project.clear()
    result, error = done.args
    assert error == "" and os.path.isfile(result.outputs.change) and os.path.isfile(result.outputs.uncertainty)
    assert project.mapLayers() == {} and group_names(project) == [] and dock.group is None
    status = dock.status_label.text().splitlines()[0]  # notes follow it
    assert status == f"Done; the project was closed meanwhile, outputs are in {tmp_path / 'out'}"
    assert "CVA" in dock.metrics_label.text() and dock.run_button.isEnabled()


def test_a_partial_reference_is_read_as_the_coding_chosen_in_the_dock(qtbot, dock, project, shared_data, tmp_path,
                                                                       iface):
    root = shared_data / "change" / "landsat_nanjing"
    layers = [add_raster(project, copy_to(tmp_path / "inputs", root / name), role) for name, role in (
        ("Nanjing_t2_TM6b.tif", "2002"), ("Nanjing_t1_TM6b.tif", "2000"),
        ("Nanjing_reference_0unl_1unch_2ch.tif", "reference"))]
    assert not dock.coding_combo.isEnabled()  # no reference chosen yet
    choose(dock, layers[1], layers[0], "cva", layers[2], output=tmp_path / "binary")
    assert dock.coding_combo.isEnabled() and dock.coding_combo.currentData() == "binary"
    result, error = click_run(qtbot, dock)
    assert error == "" and result.metrics["f1"] < 0.1
    assert "choose the partial coding" in dock.status_label.text()
    assert any("partial coding" in t for t in message_texts(iface))

    qtbot.keyClicks(dock.coding_combo, "partial")  # pick the partial coding by its text, as a person would
    assert dock.coding_combo.currentData() == "partial"
    dock.output_dir.setFilePath(str(tmp_path / "partial"))
    result, error = click_run(qtbot, dock)
    assert error == "" and result.reference_coding == "partial" and result.metrics["pixels"] == 14756
    assert f"{result.metrics['f1']:.3f}" in dock.metrics_label.text() and result.metrics["f1"] > 0.7
    assert "reference's 14,756 labelled pixels" in dock.metrics_label.text()
    assert "Note" not in dock.status_label.text()
    dock.reference_combo.setLayer(None)
    assert not dock.coding_combo.isEnabled()


def test_reference_polygons_score_as_the_reference_raster(qtbot, dock, project, shared_data, tmp_path):
    """Nanjing's reference drawn as polygons: its field is offered, the partial coding imposed, and the run
    scores the same pixels and the same F1 as the raster reference read as partial."""
    from qgis.core import QgsVectorLayer
    from test_change_labels import polygonise

    source = shared_data / "change" / "landsat_nanjing"
    layers = [add_raster(project, copy_to(tmp_path / "inputs", source / name), role) for name, role in (
        ("Nanjing_t1_TM6b.tif", "t1"), ("Nanjing_t2_TM6b.tif", "t2"), ("Nanjing_reference_0unl_1unch_2ch.tif", "ref"))]
    polygons = QgsVectorLayer(polygonise(str(source / "Nanjing_reference_0unl_1unch_2ch.tif"),
                                         str(tmp_path / "drawn.gpkg")), "drawn", "ogr")
    project.addMapLayer(polygons)
    assert not dock.reference_field.isEnabled()
    choose(dock, layers[0], layers[1], "cva", polygons, output=tmp_path / "out")
    assert dock.reference_field.isEnabled() and dock.reference_field.currentField() == "label"
    assert dock.coding_combo.currentData() == "partial" and not dock.coding_combo.isEnabled()
    result, error = click_run(qtbot, dock)
    assert error == "" and result.metrics["pixels"] == 14756
    assert "polygons of 'drawn' burnt onto the before layer's grid" in dock.status_label.text()  # it went unseen
    qtbot.mouseClick(dock.train_button, Qt.LeftButton)  # training opens on the polygons and their field
    dialog = dock.train_dialog
    assert dialog.label_layer.currentLayer() is polygons and dialog.label_field.currentField() == "label"
    assert dialog.coding_combo.currentData() == "partial"
    dialog.close()
    choose(dock, layers[0], layers[1], "cva", layers[2], output=tmp_path / "out2")
    assert dock.coding_combo.isEnabled() and not dock.reference_field.isEnabled()
    assert dock.coding_combo.currentData() == "binary"  # the choice made before the polygons, given back
    qtbot.keyClicks(dock.coding_combo, "partial")
    raster_result, error = click_run(qtbot, dock)
    assert error == "" and raster_result.metrics == result.metrics


def test_burnt_reference_polygons_reuse_one_temporary_folder_removed_with_its_owner(qtbot, dock, project,
                                                                                    shared_data, tmp_path):
    from qgis.core import QgsVectorLayer
    from qgis.PyQt import sip
    from qgis.PyQt.QtCore import QObject
    from test_change_labels import polygonise

    from rslab.ui.job_dock import scratch_folder

    source = shared_data / "change" / "landsat_nanjing"
    layers = [add_raster(project, copy_to(tmp_path / "inputs", source / name), role)
              for name, role in (("Nanjing_t1_TM6b.tif", "t1"), ("Nanjing_t2_TM6b.tif", "t2"))]
    polygons = QgsVectorLayer(polygonise(str(source / "Nanjing_reference_0unl_1unch_2ch.tif"),
                                         str(tmp_path / "drawn.gpkg")), "drawn", "ogr")
    project.addMapLayer(polygons)
    scores = []
    for run in range(2):
        choose(dock, layers[0], layers[1], "cva", polygons, output=tmp_path / f"out{run}")
        result, error = click_run(qtbot, dock)
        assert error == ""
        scores.append(result.metrics)
    assert scores[0] == scores[1] and os.listdir(dock._burnt_dir) == ["drawn_reference.tif"]  # one folder, one file
    owner = QObject()  # the folder goes with its owner (the dock's is a scratch_folder too)
    folder = scratch_folder(owner, "rslab-test-")
    open(os.path.join(folder, "burnt.tif"), "w").close()
    sip.delete(owner)
    assert not os.path.exists(folder)


def test_bands_chosen_in_the_dock(qtbot, dock, project, shared_data, tmp_path, levir):
    root = shared_data / "change" / "oscd_s2"
    layers = [add_raster(project, copy_to(tmp_path / "inputs", root / name), role) for name, role in (
        ("rennes_t2_S2_13b_10m.tif", "2018"), ("rennes_t1_S2_13b_10m.tif", "2015"), ("rennes_cm.tif", "cm"))]
    dock.before_combo.setLayer(layers[1])  # with the shipped RGB model: its red, green, blue (B04, B03, B02)
    assert dock.chosen_bands() == (4, 3, 2)
    choose(dock, layers[1], layers[0], "cva", layers[2], output=tmp_path / "out")
    assert dock.bands_combo.count() == 13 and "B08" in dock.bands_combo.itemText(7)
    # CVA reads all bands unless told: the model's bands went with the model
    assert dock.chosen_bands() is None and dock.bands_combo.lineEdit().text() == "all bands"
    for band in (2, 3, 4, 8):  # Sentinel-2's 10 m bands
        dock.bands_combo.setItemCheckState(band - 1, Qt.Checked)
    result, error = click_run(qtbot, dock)
    assert error == "" and result.bands == [2, 3, 4, 8] and result.metrics["f1"] > 0.4  # all 13 bands: 0.001
    assert "bands&nbsp;2-4,&nbsp;8" in dock.metrics_label.text()
    # runs on other bands of the pair are told apart in the layer tree (both were named '... (CVA)')
    assert group_names(project)[0] == "Changes: 2015 → 2018 (CVA, bands 2-4, 8)"
    dock.before_combo.setLayer(levir["before"])  # another image: its own bands, none chosen
    assert dock.bands_combo.count() == 3 and dock.chosen_bands() is None


def test_a_model_trained_on_chosen_bands_checks_them(qtbot, dock, project, shared_data, tmp_path):
    """A model trained on bands 4, 3, 2, 8 of Rennes' 13: selecting it checks them, the run keeps its order."""
    root = shared_data / "change" / "oscd_s2"
    full = [str(root / f"rennes_{date}_S2_13b_10m.tif") for date in ("t1", "t2")]
    model = str(tmp_path / "s2.pt")
    train_change_detector([ChangePair(*full, str(root / "rennes_cm.tif"))], [ChangePair(*full, str(root / "rennes_cm.tif"))],
                          model, TrainChangeParams(iterations=1, eval_every=1, crop=64, batch_size=1, base=8,
                                                   channels=8, bands=(4, 3, 2, 8)))
    layers = [add_raster(project, copy_to(tmp_path / "inputs", Path(path)), role) for path, role in zip(full, ("t1", "t2"))]
    choose(dock, layers[0], layers[1], "arcdnet", output=tmp_path / "out")
    assert dock.chosen_bands() == (4, 3, 2)  # the shipped RGB model: the images' red, green, blue (B04, B03, B02)
    dock.add_checkpoint(model)
    assert sorted(map(int, dock.bands_combo.checkedItemsData())) == [2, 3, 4, 8] and dock.chosen_bands() == (4, 3, 2, 8)
    trained = dock.model_combo.currentIndex()
    dock.model_combo.setCurrentIndex(0)  # back to the shipped RGB model: its bands, not the other model's
    assert dock.chosen_bands() == (4, 3, 2)
    dock.model_combo.setCurrentIndex(trained)
    assert dock.chosen_bands() == (4, 3, 2, 8)
    result, error = click_run(qtbot, dock)
    assert error == "" and result.bands == [4, 3, 2, 8]
    assert not [note for note in result.notes if "trained on bands" in note]
    dock.bands_combo.setItemCheckState(7, Qt.Unchecked)  # the others keep their order
    assert dock.chosen_bands() == (4, 3, 2)
    dock.model_combo.setCurrentIndex(0)  # the shipped model leaves the choice as it is
    assert dock.chosen_bands() == (4, 3, 2)


def test_choosing_a_checkpoint_file_reads_its_card_without_torch(checkpoint, tmp_path):
    """The dock checks a chosen file's bands from its card on QGIS's GUI thread: read through torch.load, the
    first choice imported torch and froze QGIS for 1.7 s. In a fresh QGIS (torch not yet loaded by anything),
    choosing the file leaves torch unloaded and still checks the bands the model's card names."""
    import subprocess
    import sys

    from rslab.core.checkpoint import load_checkpoint, save_checkpoint

    tiny = load_checkpoint(checkpoint)
    tiny.card.training.setdefault("params", {})["bands"] = [4, 2]  # as if trained with BANDS 4, 2
    chosen = str(tmp_path / "bands_4_2.pt")
    save_checkpoint(chosen, tiny.state_dict, tiny.card)
    root = Path(__file__).resolve().parent.parent / "resources" / "samples"
    script = f"""
import sys
from qgis.core import QgsApplication, QgsProject, QgsRasterLayer
app = QgsApplication([], True); app.initQgis()
from rslab.ui.change_dock import ChangeDetectionDock
for name in ("t1", "t2"):
    QgsProject.instance().addMapLayer(QgsRasterLayer({str(root / "stars_L7_ETMs.tif")!r}, name))
dock = ChangeDetectionDock(None)
dock.method_combo.setCurrentIndex(dock.method_combo.findData("arcdnet"))
dock.model_combo.setCurrentIndex(dock.model_combo.count() - 1)
before = "torch" in sys.modules
dock.model_file.setFilePath({chosen!r})
print(before, "torch" in sys.modules, dock.chosen_bands())
"""
    shown = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert shown.stdout.split()[-4:] == ["False", "False", "(4,", "2)"], shown.stdout + shown.stderr


def test_group_lands_inside_the_after_layers_group(qtbot, dock, levir, project, tmp_path):
    root = project.layerTreeRoot()
    dates = root.addGroup("dates")
    node = root.findLayer(levir["after"].id())
    dates.addChildNode(node.clone())
    root.removeChildNode(node)
    choose(dock, levir["before"], levir["after"], "cva", output=tmp_path)
    _, error = click_run(qtbot, dock)
    assert error == ""
    first = dates.children()[0]
    assert isinstance(first, QgsLayerTreeGroup) and first.name() == "Changes: before → after (CVA)"
    assert dates.children()[1].layerId() == levir["after"].id()


def test_band_count_mismatch_gives_a_clear_message_and_no_layers(qtbot, dock, levir, project, iface, tmp_path):
    choose(dock, levir["before"], levir["reference"], "cva", output=tmp_path / "out")
    result, error = click_run(qtbot, dock)
    assert result is None and "3 bands" in error and "1" in error
    assert dock.status_label.text().startswith("Failed: the before image has 3 bands")
    assert any("3 bands" in t for t in message_texts(iface))
    assert group_names(project) == [] and len(project.mapLayers()) == 3
    assert not (tmp_path / "out").exists() or os.listdir(tmp_path / "out") == []
    assert dock.run_button.isEnabled()


def test_missing_selection_and_same_layer_are_refused_before_any_task(qtbot, dock, levir, project):
    dock.before_combo.setLayer(None)
    _, error = click_run(qtbot, dock)
    assert error == "choose the before layer" and dock.task is None
    assert "choose the before layer" in dock.status_label.text()
    choose(dock, levir["after"], levir["after"])
    _, error = click_run(qtbot, dock)
    assert "same layer" in error and dock.task is None and group_names(project) == []


def test_arcdnet_without_a_checkpoint_file_says_what_to_do(qtbot, dock, levir):
    choose(dock, levir["before"], levir["after"], "arcdnet")
    dock.model_combo.setCurrentIndex(dock.model_combo.findText(CUSTOM_CHECKPOINT))
    assert dock.model_file.isEnabled()
    _, error = click_run(qtbot, dock)
    assert "choose a checkpoint file" in error and dock.task is None


def test_layer_that_is_not_a_file_is_refused(qtbot, dock, levir, project):
    gdal.Translate("/vsimem/rslab_in_memory.tif", str(levir["after"].source()))
    try:
        memory = add_raster(project, "/vsimem/rslab_in_memory.tif", "in memory")
        choose(dock, levir["before"], memory)
        _, error = click_run(qtbot, dock)
    finally:
        gdal.Unlink("/vsimem/rslab_in_memory.tif")
    assert "'in memory' is not a raster file on disk" in error and "Save As" in error
    assert group_names(project) == []


def test_cva_disables_the_model_widgets(dock):
    dock.method_combo.setCurrentIndex(dock.method_combo.findData("cva"))
    assert not dock.model_combo.isEnabled() and not dock.model_file.isEnabled()
    dock.method_combo.setCurrentIndex(dock.method_combo.findData("arcdnet"))
    assert dock.model_combo.isEnabled()


def test_resampled_after_image_is_noted(qtbot, dock, project, shared_data, iface, tmp_path):
    oscd = shared_data / "change" / "oscd_s2"
    coarse = str(tmp_path / "t2_coarse.tif")
    source = gdal.Open(str(oscd / "bercy_t2_S2_13b_10m.tif"))
    gdal.Translate(coarse, source, width=source.RasterXSize // 2, height=source.RasterYSize // 2)
    before = add_raster(project, copy_to(tmp_path / "inputs", oscd / "bercy_t1_S2_13b_10m.tif"), "t1")
    after = add_raster(project, coarse, "t2 coarse")
    choose(dock, before, after, "cva", output=tmp_path)
    result, error = click_run(qtbot, dock)
    assert error == "" and result.notes and "resampled" in result.notes[0]
    assert "Note: the after image" in dock.status_label.text()
    assert any("resampled" in t for t in message_texts(iface))


def big_pair(project, folder):
    """Two 2048 x 2048 random RGB rasters: a run long enough (seconds) to cancel in the middle."""
    rng = np.random.default_rng(0)
    layers = []
    for name in ("big_before", "big_after"):
        path = folder / f"{name}.tif"
        with rasterio.open(path, "w", driver="GTiff", width=2048, height=2048, count=3, dtype="uint8") as ds:
            ds.write(rng.integers(0, 255, (3, 2048, 2048), dtype=np.uint8))
        layers.append(add_raster(project, path, name))
    return layers


def test_cancel_stops_the_run_and_leaves_nothing(qtbot, dock, project, checkpoint, tmp_path):
    before, after = big_pair(project, tmp_path)
    out = tmp_path / "out"
    choose(dock, before, after, "arcdnet", checkpoint=checkpoint, output=out)
    with qtbot.waitSignal(dock.runFinished, timeout=RUN_TIMEOUT_MS) as done:
        qtbot.mouseClick(dock.run_button, Qt.LeftButton)
        assert dock.cancel_button.isEnabled() and not dock.run_button.isEnabled()
        qtbot.waitUntil(lambda: dock.progress_bar.value() >= 3, timeout=RUN_TIMEOUT_MS)
        qtbot.mouseClick(dock.cancel_button, Qt.LeftButton)
    result, error = done.args
    assert result is None and error.startswith("cancelled")
    assert dock.status_label.text() == "Cancelled; no output was written"
    assert not out.exists() or os.listdir(out) == []
    assert group_names(project) == [] and len(project.mapLayers()) == 2
    assert dock.run_button.isEnabled() and not dock.cancel_button.isEnabled()


def test_deleting_the_dock_cancels_its_run(qtbot, project, checkpoint, tmp_path):
    dock = ChangeDetectionDock()  # not handed to qtbot: this test deletes it
    before, after = big_pair(project, tmp_path)
    out = tmp_path / "out"
    choose(dock, before, after, "arcdnet", checkpoint=checkpoint, output=out)
    qtbot.mouseClick(dock.run_button, Qt.LeftButton)
    task = dock.task
    with qtbot.waitSignal(task.jobFinished, timeout=RUN_TIMEOUT_MS) as done:
        qtbot.waitUntil(lambda: dock.progress_bar.value() >= 3, timeout=RUN_TIMEOUT_MS)
        sip.delete(dock)  # what the plugin's unload does to its docks
    assert done.args[0] is None and done.args[1].startswith("cancelled")
    assert not out.exists() or os.listdir(out) == []
    assert group_names(project) == []


def test_train_opens_on_the_docks_labelled_layers(qtbot, dock, project, shared_data, tmp_path):
    source = shared_data / "change" / "landsat_nanjing"
    layers = [add_raster(project, copy_to(tmp_path / "inputs", source / name), role) for name, role in (
        ("Nanjing_t1_TM6b.tif", "t1"), ("Nanjing_t2_TM6b.tif", "t2"), ("Nanjing_reference_0unl_1unch_2ch.tif", "ref"))]
    choose(dock, layers[0], layers[1], "cva", layers[2])
    qtbot.keyClicks(dock.coding_combo, "partial")
    qtbot.mouseClick(dock.train_button, Qt.LeftButton)
    dialog = dock.train_dialog
    assert dialog.isVisible() and dialog.from_layers() and dialog.coding_combo.currentData() == "partial"
    assert [c.currentLayer() for c in (dialog.before_layer, dialog.after_layer, dialog.label_layer)] == layers
    dialog.close()


def test_a_trained_model_is_added_and_selected(qtbot, dock, checkpoint):
    dock.method_combo.setCurrentIndex(dock.method_combo.findData("cva"))
    qtbot.mouseClick(dock.train_button, Qt.LeftButton)
    assert dock.train_dialog.isVisible()
    dock.train_dialog.trained.emit(checkpoint)
    assert dock.model_combo.currentData() == checkpoint
    assert dock.model_combo.currentText() == "Trained: tiny.pt"
    assert dock.method_combo.currentData() == "arcdnet" and not dock.model_file.isEnabled()
    assert dock.model_combo.itemText(dock.model_combo.count() - 1) == CUSTOM_CHECKPOINT
    dock.train_dialog.close()


def test_histogram_reads_decimated_strips(tmp_path):
    height, width = 700, 300
    mask = np.zeros((height, width), np.uint8)
    mask[:, :100] = 1
    mask[:10] = 255
    unc = np.where(mask == 1, 0.95, 0.15).astype(np.float32)
    paths = {}
    for name, data in (("mask", mask), ("unc", unc)):
        paths[name] = str(tmp_path / f"{name}.tif")
        with rasterio.open(paths[name], "w", driver="GTiff", width=width, height=height, count=1,
                           dtype=data.dtype, nodata=255 if name == "mask" else None) as ds:
            ds.write(data, 1)
    full = uncertainty_histogram(paths["mask"], paths["unc"], bins=10)
    assert full.step == 1 and full.changed[9] == 690 * 100 and full.unchanged[1] == 690 * 200
    assert full.sampled == 690 * 300 and full.changed_share == pytest.approx(1 / 3)
    sparse = uncertainty_histogram(paths["mask"], paths["unc"], bins=10, max_pixels=20_000, strip_rows=16)
    assert sparse.step == 4 and sparse.sampled <= 20_000
    assert sparse.changed_share == pytest.approx(1 / 3, abs=0.02)
    assert sparse.changed[:9].sum() == 0 and sparse.unchanged[2:].sum() == 0


def test_output_names_never_overwrite(tmp_path):
    first = output_paths(str(tmp_path), "before 2019", "after/2020")
    assert os.path.basename(first.change) == "before_2019_to_after_2020_change.tif"
    open(first.uncertainty, "w").close()
    second = output_paths(str(tmp_path), "before 2019", "after/2020")
    assert os.path.basename(second.change) == "before_2019_to_after_2020_2_change.tif"
    # two Sentinel-2 product names: a 260-byte name the run then refused ('choose a shorter name')
    product = "S2B_MSIL2A_20230615T103629_N0509_R008_T31UFQ_20230615T134716_B02_B03_B04_B08_10m_clipped_to_the_study_area"
    long = output_paths(str(tmp_path), product, product.replace("2023", "2024"))
    check_output_paths({"change": long.change, "uncertainty": long.uncertainty})
    assert os.path.basename(long.change).startswith(product[:60])


def test_the_shipped_compressed_detector_is_listed_and_runs(qtbot, dock, levir, project, tmp_path):
    """The compressed default (quantised AR-CDNet from bench/compression.py) runs in the dock like any model."""
    from rslab.core.checkpoint import read_card
    from rslab.core.weights import shipped_checkpoints

    shipped = dict(shipped_checkpoints("change_detection"))
    compressed = [path for label, path in shipped.items() if "compressed" in label]
    assert compressed, "resources/weights/arcdnet_levir_dsifn_compressed.pt is missing"
    assert read_card(compressed[0]).bit_widths
    choose(dock, levir["before"], levir["after"], "arcdnet", levir["reference"], output=tmp_path)
    dock.model_combo.setCurrentIndex(dock.model_combo.findData(compressed[0]))
    result, error = click_run(qtbot, dock)
    assert error == "" and result.model["path"] == os.path.abspath(compressed[0])
    assert result.metrics["f1"] > 0.3
    assert group_names(project) == [f"Changes: before → after (AR-CDNet, {os.path.basename(compressed[0])})"]


def test_bands_read_in_the_order_checked_and_an_rgb_model_checks_red_green_blue(qtbot, dock, project, bgr_pair,
                                                                                tmp_path):
    """Images stored blue-green-red that say so: the shipped model (red, green, blue) checks bands 3, 2, 1 and
    the box shows that order. A person's checks give the order they were made in; the dock read checked
    bands in file order only, so it could not feed this pair to the shipped model the right way round."""
    layers = [add_raster(project, copy_to(tmp_path / "inputs", Path(path)), role)
              for path, role in zip(bgr_pair, ("before", "after", "label"))]
    choose(dock, layers[0], layers[1], "arcdnet", layers[2], output=tmp_path / "out")
    assert dock.chosen_bands() == (3, 2, 1)
    names = [dock.bands_combo.itemText(i) for i in range(3)]
    assert dock.bands_combo.lineEdit().text() == ", ".join(names[::-1]) and "Red" in names[2]
    result, error = click_run(qtbot, dock)
    assert error == "" and result.bands == [3, 2, 1] and result.metrics["f1"] > 0.7
    assert not [note for note in result.notes if "choose bands" in note]
    for index in range(3):
        dock.bands_combo.setItemCheckState(index, Qt.Unchecked)
    assert dock.chosen_bands() is None and dock.bands_combo.lineEdit().text() == "all bands"
    for band in (1, 3, 2):
        dock.bands_combo.setItemCheckState(band - 1, Qt.Checked)
    assert dock.chosen_bands() == (1, 3, 2)
    assert dock.bands_combo.lineEdit().text() == ", ".join(names[b - 1] for b in (1, 3, 2))
    dock.bands_combo.resize(dock.bands_combo.width() + 40, dock.bands_combo.height())  # QGIS redraws its text
    qtbot.wait(50)
    assert dock.bands_combo.lineEdit().text() == ", ".join(names[b - 1] for b in (1, 3, 2))


def test_the_readout_the_field_the_training_pair_and_the_group_order_follow_the_dock(qtbot, dock, project,
                                                                                   shared_data, tmp_path):
    """Four faults a review found driving the dock: the last run's figures stayed on screen after another pair
    or reference was picked (and under a run refused before it started); a GeoPackage's polygons preselected
    'fid', which the run then refused; Train… opened a second time kept the first pair; a second run's group
    went under the first, whose opaque mask hid it."""
    from qgis.core import QgsVectorLayer
    from test_change_labels import polygonise

    source = shared_data / "change" / "landsat_nanjing"
    layers = [add_raster(project, copy_to(tmp_path / "inputs", source / name), role) for name, role in (
        ("Nanjing_t1_TM6b.tif", "t1"), ("Nanjing_t2_TM6b.tif", "t2"), ("Nanjing_reference_0unl_1unch_2ch.tif", "ref"))]
    polygons = QgsVectorLayer(polygonise(str(source / "Nanjing_reference_0unl_1unch_2ch.tif"),
                                         str(tmp_path / "drawn.gpkg"), field="cls"), "drawn", "ogr")
    project.addMapLayer(polygons)
    choose(dock, layers[0], layers[1], "cva", polygons, output=tmp_path / "out")
    assert dock.reference_field.currentField() == "cls"  # not the GeoPackage's key 'fid'
    first, error = click_run(qtbot, dock)
    assert error == "" and first.metrics["pixels"] == 14756 and "F1" in dock.metrics_label.text()

    dock.reference_combo.setLayer(layers[2])  # another reference: the figures were the polygons'
    assert dock.metrics_label.text() == "" and dock.status_label.text() == ""
    assert all(len(curve.getData()[0] or []) == 0 for curve in dock.histogram_curves.values())
    _, error = click_run(qtbot, dock)
    assert error == "" and dock.metrics_label.text()
    dock.model_combo.setCurrentIndex(dock.model_combo.findText(CUSTOM_CHECKPOINT))
    dock.method_combo.setCurrentIndex(dock.method_combo.findData("arcdnet"))
    dock.model_file.setFilePath(str(tmp_path / "no_such_model.pt"))
    _, error = click_run(qtbot, dock)  # refused before it starts: no figures of the run before under it
    assert error and dock.metrics_label.text() == ""

    groups = [n for n in project.layerTreeRoot().children() if n.name().startswith("Changes:")]
    assert len(groups) == 2 and groups[0] is dock.group  # the newest run on top

    dock.reference_combo.setLayer(polygons)
    dock.open_training()
    assert dock.train_dialog.label_layer.currentLayer() is polygons
    dock.train_dialog.close()
    dock.reference_combo.setLayer(layers[2])
    dock.open_training()  # opened again: on the dock's pair and reference now
    assert dock.train_dialog.label_layer.currentLayer() is layers[2]
    dock.train_dialog.close()


def test_closing_the_project_between_runs_empties_the_readout(qtbot, dock, project, shared_data, tmp_path):
    """New Project or another project opened: the last run's figures, histogram and status stayed over it."""
    source = shared_data / "change" / "landsat_nanjing"
    layers = [add_raster(project, copy_to(tmp_path / "inputs", source / name), role) for name, role in (
        ("Nanjing_t1_TM6b.tif", "t1"), ("Nanjing_t2_TM6b.tif", "t2"), ("Nanjing_reference_0unl_1unch_2ch.tif", "ref"))]
    choose(dock, layers[0], layers[1], "cva", layers[2], output=tmp_path / "out")
    _, error = click_run(qtbot, dock)
    assert error == "" and "F1" in dock.metrics_label.text() and dock.status_label.text().startswith("Done")
    project.clear()
    assert dock.metrics_label.text() == "" and dock.status_label.text() == "" and dock.result is None
    assert all(len(curve.getData()[0] or []) == 0 for curve in dock.histogram_curves.values())


def test_a_dock_at_its_least_width_shows_the_model_and_method_names(qtbot, dock, levir):
    """A 300 px dock showed 'AR' of the shipped model's name beside Train… and 'AR-CDNet (d' as the method."""
    dock.resize(300, 900)
    dock.show()
    qtbot.waitUntil(lambda: dock.width() == dock.minimumSizeHint().width())
    dock.method_combo.setCurrentIndex(dock.method_combo.findData("arcdnet"))
    assert dock.model_combo.currentText().startswith("AR-CDNet, LEVIR")
    for combo, shown in ((dock.model_combo, "AR-CDNet, LEVIR"), (dock.method_combo, "AR-CDNet (deep model)")):
        assert combo.width() >= combo.fontMetrics().horizontalAdvance(shown) + 20  # + the arrow
