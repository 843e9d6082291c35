"""The anomaly dock on real QGIS and a real ABU scene: runs, styled groups, metrics, ROC comparison, spectra, cancel."""
from __future__ import annotations

import html
import os
import re
import threading
import time
import shutil

import numpy as np
import pytest
from project_layers import RUN_TIMEOUT_MS, add_raster, click_run, group_names
import rasterio
import scipy.io
from qgis.core import (
    QgsCoordinateReferenceSystem,
    QgsCoordinateTransform,
    QgsPalettedRasterRenderer,
    QgsPointXY,
    QgsRasterLayer,
    QgsRectangle,
    QgsSingleBandPseudoColorRenderer,
)
from qgis.gui import QgsMapToolPan
from qgis.PyQt import sip
from qgis.PyQt.QtCore import Qt
from rasterio.transform import Affine, from_origin
from rasterio.windows import Window

import rslab
from rslab.core.anomaly import AnomalyOutputs, detect_anomalies
from rslab.core.anomaly_params import LRX_MAX_OUTER, METHOD_LABELS, AnomalyParams
from rslab.core.anomaly_peaks import PEAK_COUNT
from rslab.core.import_cube import ImportCubeParams, import_cube
from rslab.ui.anomaly_dock import NO_PEAKS_TEXT, ZOOM_PIXELS, AnomalyDock, output_paths
from rslab.ui.map_pixels import pixel_at

BANDS = 193  # ABU beach-2: 100 x 100 x 193


@pytest.fixture()
def scene(project, beach2):
    cube, gt = beach2
    return add_raster(project, cube, "beach-2"), add_raster(project, gt, "reference")


@pytest.fixture()
def dock(qtbot, iface):
    widget = AnomalyDock(iface)
    qtbot.addWidget(widget)
    return widget


def choose(dock, layer, method="rx", reference=None, rate=None, output=None, iterations=None) -> None:
    dock.layer_combo.setLayer(layer)
    dock.method_combo.setCurrentIndex(dock.method_combo.findData(method))
    dock.reference_combo.setLayer(reference)
    dock.far_check.setChecked(rate is not None)
    if rate is not None:
        dock.far_spin.setValue(rate)
    if iterations is not None:
        dock.iterations_spin.setValue(iterations)
    if output is not None:
        dock.output_dir.setFilePath(str(output))


def map_point(layer: QgsRasterLayer, row: int, col: int) -> QgsPointXY:
    """The centre of pixel (row, col) in the layer's map coordinates."""
    extent = layer.extent()
    return QgsPointXY(extent.xMinimum() + (col + 0.5) * extent.width() / layer.width(),
                      extent.yMaximum() - (row + 0.5) * extent.height() / layer.height())


def legend_texts(dock):
    """The ROC legend's entries as plain text."""
    text = re.sub(r"<[^>]+>", "", dock.roc.legend.text()).replace("&nbsp;", " ").replace("&#9644;", "")
    text = html.unescape(text)  # the mask's ring, ○
    return [entry.strip() for entry in text.split("    ") if entry.strip()]


def roc_ticks(dock):
    """The labels under the ROC plot's logarithmic false-alarm axis."""
    return [label for _, label in dock.roc.plot.getAxis("bottom")._tickLevels[0]]


DECADES = ["10⁻⁴", "10⁻³", "10⁻²", "10⁻¹", "1"]


def test_a_new_dock_labels_its_empty_roc_axis_in_decades(dock):
    assert dock.layer_combo.currentLayer() is None
    assert roc_ticks(dock) == DECADES  # not pyqtgraph's bare 2 3 4 ... 9 of a log axis with no data


def test_rx_then_lrx_are_compared_on_one_roc_and_spectra_show(qtbot, dock, scene, project, beach2, tmp_path):
    cube, reference = scene
    choose(dock, cube, "rx", reference, rate=0.01, output=tmp_path)
    rx, error = click_run(qtbot, dock)
    assert error == "" and rx is dock.result and rx.method == "rx"

    assert group_names(project) == ["Anomalies: beach-2 (RX)"]
    root = project.layerTreeRoot()
    assert [n.name() for n in root.children()] == ["Anomalies: beach-2 (RX)", "reference", "beach-2"]  # above the reference too: on top, it hid the scores
    peaks, mask, scores = [node.layer() for node in dock.group.findLayers()]
    assert peaks.name() == "RX strongest anomalies" and peaks.featureCount() == 20 and peaks.labelsEnabled()
    for feature in peaks.getFeatures():  # each point sits on its pixel as QGIS draws this unplaced image
        point = feature.geometry().asPoint()
        assert pixel_at(cube, point) == (feature["row"], feature["col"]), feature.attributes()
    assert [f["rank"] for f in peaks.getFeatures()] == list(range(1, 21))
    assert scores.source() == rx.outputs.scores and os.path.dirname(scores.source()) == str(tmp_path)
    assert mask.name() == "RX mask (false-alarm rate 0.01)"
    assert f"Mask: {rx.mask_pixels} pixels score above" in dock.metrics_label.text() and rx.mask_pixels == 100
    assert isinstance(mask.renderer(), QgsPalettedRasterRenderer)
    assert {c.value: c.color.alpha() for c in mask.renderer().classes()} == {0: 0, 1: 255, 255: 0}
    renderer = scores.renderer()
    assert isinstance(renderer, QgsSingleBandPseudoColorRenderer)
    with rasterio.open(rx.outputs.scores) as ds:
        values = ds.read(1)
    low, high = np.percentile(values, [2, 99])  # the style's cumulative cut, fitted to these scores
    assert renderer.classificationMin() == pytest.approx(low, rel=0.005)
    assert renderer.classificationMax() == pytest.approx(high, rel=0.005)

    text = dock.metrics_label.text()
    assert f"AUC(D,F)&nbsp;<b>{rx.metrics['auc_df']:.4f}</b>" in text and rx.metrics["auc_df"] > 0.9
    assert f"AUC(F,τ)&nbsp;<b>{rx.metrics['auc_ftau']:.4f}</b>" in text
    assert f"AUC_BS&nbsp;<b>{rx.metrics['auc_bs']:.4f}</b>" in text
    assert "false-alarm rate 0.01" in text and str(tmp_path) in dock.status_label.text()
    assert list(dock.roc.visible_curves()) == ["rx"] and roc_ticks(dock) == DECADES  # 1 / 9,9xx background pixels
    assert dock.progress_bar.value() == 100 and dock.run_button.isEnabled() and not dock.cancel_button.isEnabled()

    choose(dock, cube, "lrx", reference)
    lrx, error = click_run(qtbot, dock)
    assert error == "" and lrx.method == "lrx" and lrx.outputs.mask is None
    assert group_names(project) == ["Anomalies: beach-2 (Local RX)", "Anomalies: beach-2 (RX)"]
    assert [node.layer().name() for node in dock.group.findLayers()] == ["Local RX strongest anomalies",
                                                                          "Local RX scores"]
    curves = dock.roc.visible_curves()
    assert set(curves) == {"rx", "lrx"}
    assert legend_texts(dock) == [f"RX AUC {rx.metrics['auc_df']:.4f}", f"Local RX AUC {lrx.metrics['auc_df']:.4f}"]
    for method, result in (("rx", rx), ("lrx", lrx)):
        roc = dock.roc_runs[cube.id()][method]
        assert roc.auc == pytest.approx(result.metrics["auc_df"], abs=1e-9)  # the ROC the metrics came from
        assert len(roc.false_alarm) > 50 and roc.false_alarm.min() > 0 and roc.false_alarm[-1] == pytest.approx(1.0)
        assert np.all(np.diff(roc.detection) >= 0) and roc.detection[-1] == pytest.approx(1.0)
        x, y = curves[method].getData()  # the plot's x axis is logarithmic
        assert np.allclose(x, np.log10(roc.false_alarm)) and np.array_equal(y, roc.detection)

    dock.layer_combo.setLayer(reference)  # another image: its own (empty) comparison
    assert dock.roc.visible_curves() == {} and legend_texts(dock) == [] and roc_ticks(dock) == DECADES
    dock.layer_combo.setLayer(cube)
    assert set(dock.roc.visible_curves()) == {"rx", "lrx"}

    with rasterio.open(beach2[1]) as ds:
        rows, cols = np.nonzero(ds.read(1))
    row, col = int(rows[0]), int(cols[0])
    spectrum = dock.show_spectrum_at(map_point(cube, row, col))
    with rasterio.open(beach2[0]) as ds:
        data = ds.read().astype(np.float64)
    assert np.array_equal(spectrum, data[:, row, col])
    pixel_x, pixel_y = dock.spectrum.pixel_curve.getData()
    mean_x, mean_y = dock.spectrum.mean_curve.getData()
    assert len(pixel_x) == len(mean_x) == BANDS and np.array_equal(pixel_y, data[:, row, col])
    assert np.array_equal(pixel_x, np.arange(1, BANDS + 1))  # beach-2 has no wavelengths: band numbers
    assert dock.spectrum.plot.getAxis("bottom").labelText == "band"
    assert np.allclose(mean_y, data.reshape(BANDS, -1).mean(axis=1))
    with rasterio.open(dock.result.outputs.scores) as ds:
        score = ds.read(1)[row, col]
    method = METHOD_LABELS[dock.result.method]  # the latest run's, named: the methods' score ranges differ
    assert f"pixel (row {row}, col {col}) of beach-2 · {method} score {score:.4g}" in dock.spectrum.legend.text()


def test_bsdm_reports_progress_and_only_its_widgets_are_enabled(qtbot, dock, scene, project, tmp_path):
    cube, _ = scene
    choose(dock, cube, "bsdm_rx", iterations=20, output=tmp_path)
    assert dock.iterations_spin.isEnabled() and dock.seed_spin.isEnabled()
    assert not dock.inner_spin.isEnabled() and not dock.outer_spin.isEnabled()
    progress, messages = [], []
    with qtbot.waitSignal(dock.runFinished, timeout=RUN_TIMEOUT_MS) as done:
        qtbot.mouseClick(dock.run_button, Qt.LeftButton)
        dock.task.progressChanged.connect(progress.append)
        dock.task.message.connect(messages.append)
    result, error = done.args
    assert error == "" and result.method == "bsdm_rx" and len(result.training_loss) == 20
    assert "BSDM iteration 11 of 20" in messages
    assert progress == sorted(progress) and 0 < progress[0] < 50 and progress[-1] == pytest.approx(100)
    assert "Accuracy not computed" in dock.metrics_label.text() and dock.roc.visible_curves() == {}
    assert result.notes[0].startswith("BSDM trained in ")
    assert result.notes[0] in dock.metrics_label.text()  # the run's notes are shown under its readouts
    assert group_names(project) == ["Anomalies: beach-2 (BSDM + RX)"]
    dock.method_combo.setCurrentIndex(dock.method_combo.findData("lrx"))
    assert dock.inner_spin.isEnabled() and not dock.iterations_spin.isEnabled()
    dock.far_check.setChecked(False)
    assert not dock.far_spin.isEnabled()


def test_one_band_layers_are_not_offered_as_the_image(qtbot, dock, project, beach2, iface, tmp_path):
    """A reopened project whose first raster is a result's one-band mask: the image chooser picked that mask, which
    detection then refused ('has 1 band'). One-band layers are left out of it, as they are added, removed or
    repaired (a layer that could not be read reported one band, and stayed left out once repaired)."""
    cube, gt = beach2
    reference = add_raster(project, gt, "a one-band layer")
    qtbot.waitUntil(lambda: dock.layer_combo.count() == 0)
    assert dock.layer_combo.currentLayer() is None
    image = add_raster(project, cube, "beach-2")
    qtbot.waitUntil(lambda: dock.layer_combo.currentLayer() is image)
    assert dock.layer_combo.count() == 1
    fresh = AnomalyDock(iface)  # a dock opened on the reopened project: the mask comes first in it
    qtbot.addWidget(fresh)
    assert fresh.layer_combo.currentLayer() is image and fresh.layer_combo.count() == 1
    assert fresh.reference_combo.count() == 3  # the reference chooser lists both (and its empty entry)
    moved = QgsRasterLayer(str(tmp_path / "moved.tif"), "moved", "gdal")
    project.addMapLayer(moved)
    qtbot.waitUntil(lambda: dock.layer_combo.count() == 2)  # Unreadable: listed, it may be a cube.
    moved.setDataSource(str(cube), "moved", "gdal")  # Repaired (Handle Unavailable Layers): a cube.
    qtbot.wait(50)
    assert moved.isValid() and dock.layer_combo.count() == 2
    moved.setDataSource(str(gt), "moved", "gdal")  # Pointed at a mask instead.
    qtbot.waitUntil(lambda: dock.layer_combo.count() == 1)
    project.removeMapLayer(image.id())
    qtbot.waitUntil(lambda: dock.layer_combo.count() == 0)
    assert dock.layer_combo.currentLayer() is None and reference.isValid()


def test_a_project_opening_on_a_mask_tells_the_dock_of_the_cube_chosen_instead(
        qtbot, dock, project, beach2, shared_data, tmp_path):
    """A project reopened with a one-band mask first: the chooser showed the mask, and leaving it out moved the
    choice to the cube on the same row without a signal, so the true colour button still described the mask."""
    _, gt = beach2
    path = tmp_path / "muufl.tif"
    import_cube(str(shared_data / "classification" / "muufl_hsi_subimages" / "a_hsi_img_for_VI_demo.mat"), str(path),
                params=ImportCubeParams("hsi_img"))
    heard = []
    dock.layer_combo.layerChanged.connect(lambda layer: heard.append(layer.name() if layer else None))
    project.addMapLayers([QgsRasterLayer(str(gt), "mask"), QgsRasterLayer(str(path), "muufl"),
                          QgsRasterLayer(str(path), "muufl again")])
    assert project.write(str(tmp_path / "saved.qgz"))
    project.clear()
    assert project.read(str(tmp_path / "saved.qgz"))
    qtbot.waitUntil(lambda: dock.layer_combo.count() == 2)
    assert dock.layer_combo.currentLayer().name() == "muufl" and heard[-1] == "muufl"
    assert dock.true_colour_button.isEnabled()


def test_a_refused_run_says_why_in_the_dock_until_the_form_changes(qtbot, dock, scene, project, iface):
    """A refusal (a form mistake) is said in the status line, not also by a red bar across the map that stayed
    until closed by hand; the line went only with the next run, though the mistake was fixed."""
    cube, _ = scene
    bar = len(iface.messageBar().items())
    dock.layer_combo.setLayer(None)
    _, error = click_run(qtbot, dock)
    assert error == "choose the hyperspectral layer" and dock.status_label.text() == "Failed: " + error
    assert len(iface.messageBar().items()) == bar
    dock.layer_combo.setLayer(cube)
    assert dock.status_label.text() == ""
    choose(dock, cube, "rx", reference=cube)
    _, error = click_run(qtbot, dock)
    assert "the reference is the image itself" in error
    dock.method_combo.setCurrentIndex(dock.method_combo.findData("lrx"))
    assert dock.status_label.text() == ""


def test_missing_layer_and_reference_equal_to_the_image_are_refused_before_any_task(qtbot, dock, scene, project):
    cube, _ = scene
    dock.layer_combo.setLayer(None)
    _, error = click_run(qtbot, dock)
    assert error == "choose the hyperspectral layer" and dock.task is None
    choose(dock, cube, "rx", reference=cube)
    _, error = click_run(qtbot, dock)
    assert "the reference is the image itself" in error and dock.task is None and group_names(project) == []


def test_window_settings_are_checked_only_for_local_rx(qtbot, dock, scene, project):
    cube, _ = scene
    choose(dock, cube, "lrx")
    dock.inner_spin.setValue(4)  # only code can: a typed even size becomes odd (see the test below)
    _, error = click_run(qtbot, dock)
    assert error == "the inner window must be an odd number of pixels, got 4" and dock.task is None
    assert dock.status_label.text() == "Failed: " + error
    dock.method_combo.setCurrentIndex(dock.method_combo.findData("rx"))
    assert dock.params().inner_window == 3 and dock.params().method == "rx"  # the disabled setting is not used


def _type(qtbot, spin, text: str) -> None:
    """Replace a spin box's text by typing, then press Return, as a user does."""
    spin.selectAll()
    qtbot.keyClicks(spin, text)
    with qtbot.waitSignal(spin.editingFinished, timeout=1000):
        qtbot.keyClick(spin, Qt.Key_Return)


def test_window_spin_boxes_take_odd_sizes_up_to_the_engines_widest(qtbot, dock, scene):
    """The outer window reaches the engine's LRX_MAX_OUTER (it stopped at 199), and a typed even size ends odd
    (it was taken, and refused only at Run)."""
    choose(dock, scene[0], "lrx")
    assert dock.outer_spin.maximum() == LRX_MAX_OUTER == 255
    dock.outer_spin.setValue(LRX_MAX_OUTER)
    assert dock.outer_spin.value() == LRX_MAX_OUTER
    dock.outer_spin.stepUp()
    assert dock.outer_spin.value() == LRX_MAX_OUTER
    for spin, typed, odd in ((dock.inner_spin, "4", 5), (dock.outer_spin, "20", 21), (dock.outer_spin, "254", 255)):
        _type(qtbot, spin, typed)
        assert spin.value() == odd and spin.text() == str(odd), typed
    dock.inner_spin.stepDown()
    assert dock.inner_spin.value() == 3
    params = dock.params()
    assert (params.inner_window, params.outer_window) == (3, 255)


def test_an_output_folder_typed_with_a_tilde_is_the_home_folder(qtbot, dock, scene, project, tmp_path, monkeypatch):
    """'~/out' is the folder under the home folder, for the layers and the no-overwrite names too (the UI used it
    as typed: QGIS could not open the outputs the core wrote under home, and a second run overwrote the first)."""
    monkeypatch.setenv("HOME", str(tmp_path))
    choose(dock, scene[0], "rx", output="~/out")
    for _ in range(2):
        result, error = click_run(qtbot, dock)
        assert error == "", error
    out = tmp_path / "out"
    assert sorted(name for name in os.listdir(out) if not name.endswith(".aux.xml")) == [
        "beach-2_rx_2_peaks.gpkg", "beach-2_rx_2_report.json", "beach-2_rx_2_scores.tif", "beach-2_rx_peaks.gpkg",
        "beach-2_rx_report.json", "beach-2_rx_scores.tif"]
    assert group_names(project) == ["Anomalies: beach-2 (RX), run 2", "Anomalies: beach-2 (RX)"]  # told apart
    assert [node.layer().source().split("|")[0] for node in dock.group.findLayers()] == [
        str(out / "beach-2_rx_2_peaks.gpkg"), str(out / "beach-2_rx_2_scores.tif")]
    assert dock.status_label.text() == f"Done. Outputs in {out}"


def test_a_run_ending_after_its_project_was_closed_adds_nothing_to_the_next(qtbot, dock, scene, project, beach2,
                                                                             tmp_path):
    """File > New Project (or opening another one) during a run: its outputs stay in their folder, and its layers
    are not added to the unrelated project now open; the next run there adds its own."""
    choose(dock, scene[0], "rx", output=tmp_path)
    with qtbot.waitSignal(dock.runFinished, timeout=RUN_TIMEOUT_MS) as done:
        qtbot.mouseClick(dock.run_button, Qt.LeftButton)
        project.clear()
        add_raster(project, beach2[1], "a layer of the new project")
    result, error = done.args
    assert error == "" and os.path.isfile(result.outputs.scores) and os.path.isfile(result.outputs.report)
    assert [layer.name() for layer in project.mapLayers().values()] == ["a layer of the new project"]
    assert group_names(project) == [] and dock.group is None
    assert dock.status_label.text() == f"Done; the project was closed meanwhile, outputs are in {tmp_path}"
    assert "RX" in dock.metrics_label.text() and dock.progress_bar.value() == 100

    choose(dock, add_raster(project, beach2[0], "beach-2"), "rx", output=tmp_path)
    _, error = click_run(qtbot, dock)
    assert error == "" and group_names(project) == ["Anomalies: beach-2 (RX)"]
    assert dock.status_label.text() == f"Done. Outputs in {tmp_path}"


def test_cancel_stops_the_run_and_leaves_nothing(qtbot, dock, scene, project, tmp_path):
    cube, reference = scene
    choose(dock, cube, "rx", reference=reference, output=tmp_path / "first")
    assert click_run(qtbot, dock)[1] == ""
    readout = dock.metrics_label.text()
    assert "AUC(D,F)" in readout
    project.layerTreeRoot().removeChildNode(dock.group)  # the groups this test checks are the cancelled run's
    out = tmp_path / "out"
    choose(dock, cube, "bsdm_rx", reference=reference, iterations=5000, output=out)  # long enough to cancel
    with qtbot.waitSignal(dock.runFinished, timeout=RUN_TIMEOUT_MS) as done:
        qtbot.mouseClick(dock.run_button, Qt.LeftButton)
        assert dock.cancel_button.isEnabled() and not dock.run_button.isEnabled()
        qtbot.waitUntil(lambda: "BSDM iteration" in dock.status_label.text(), timeout=RUN_TIMEOUT_MS)
        qtbot.mouseClick(dock.cancel_button, Qt.LeftButton)
    result, error = done.args
    assert result is None and error.startswith("cancelled")
    assert dock.status_label.text() == "Cancelled; no output was written"
    assert dock.metrics_label.text() == readout  # the RX run's readout is back beside its ROC curve (it was blank)
    assert list(dock.roc.visible_curves()) == ["rx"]
    assert not out.exists() or os.listdir(out) == []
    assert group_names(project) == [] and dock.run_button.isEnabled() and not dock.cancel_button.isEnabled()


def test_a_cancel_from_qgis_task_manager_shows_in_the_dock(qtbot, dock, scene, project, tmp_path):
    """Cancel in QGIS's task manager (the status bar's list) left the dock saying 'BSDM iteration …' until the run
    had stopped; it says 'Cancelling…' as its own Cancel does."""
    choose(dock, scene[0], "bsdm_rx", iterations=5000, output=tmp_path)
    with qtbot.waitSignal(dock.runFinished, timeout=RUN_TIMEOUT_MS) as done:
        qtbot.mouseClick(dock.run_button, Qt.LeftButton)
        qtbot.waitUntil(lambda: "BSDM iteration" in dock.status_label.text(), timeout=RUN_TIMEOUT_MS)
        dock.task.cancel()  # What the task manager's cancel calls.
        assert dock.status_label.text() == "Cancelling…"
    assert done.args[0] is None and dock.status_label.text() == "Cancelled; no output was written"


def test_closing_the_project_between_runs_empties_the_dock(qtbot, dock, scene, project, tmp_path):
    """New Project or another project opened: the status, readout and ROC curves of the closed project's runs
    stayed, and a reopened project (its layers keep their ids) showed them beside its images again."""
    cube, reference = scene
    choose(dock, cube, "rx", reference=reference, rate=0.01, output=tmp_path)
    assert click_run(qtbot, dock)[1] == ""
    assert "AUC(D,F)" in dock.metrics_label.text() and list(dock.roc.visible_curves()) == ["rx"]
    assert dock.mask_button.isEnabled() and dock.roc.mask_point.isVisible()
    project.clear()
    assert dock.status_label.text() == "" and dock.progress_bar.value() == 0
    assert dock.metrics_label.text() == "" and dock.roc.visible_curves() == {} and dock.roc_runs == {}
    assert not dock.mask_button.isEnabled() and not dock.roc.mask_point.isVisible()  # no run of this project to cut


def test_a_dock_deleted_mid_run_leaves_no_temporary_folder(qtbot, iface, scene, project):
    """Unloading the plugin during a run into 'a new temporary folder per run' cancelled the job but left the
    empty folder behind (the finished callback returned early for a deleted dock)."""
    from qgis.core import QgsApplication

    dock = AnomalyDock(iface)
    choose(dock, scene[0], "bsdm_rx", iterations=5000)
    dock.output_dir.setFilePath("")
    qtbot.mouseClick(dock.run_button, Qt.LeftButton)
    folder = dock._request.output_dir
    assert dock._request.created_dir and os.path.isdir(folder)
    qtbot.waitUntil(lambda: "BSDM iteration" in dock.status_label.text(), timeout=RUN_TIMEOUT_MS)
    sip.delete(dock)  # as unloading the plugin deletes its docks (their jobs are cancelled)
    qtbot.waitUntil(lambda: QgsApplication.taskManager().countActiveTasks() == 0, timeout=RUN_TIMEOUT_MS)
    qtbot.wait(100)
    assert not os.path.exists(folder)


def test_pick_tool_and_a_canvas_in_another_crs(qtbot, dock, iface, project, beach2, tmp_path):
    """A georeferenced cube (UTM 33N) picked on a WGS 84 canvas: the point is transformed, the mean computed lazily."""
    with rasterio.open(beach2[0]) as src:
        data, profile = src.read(), src.profile
    path = tmp_path / "utm.tif"
    utm = dict(profile, crs="EPSG:32633", transform=from_origin(500000, 4650000, 2, 2))
    with rasterio.open(path, "w", **utm) as dst:
        dst.write(data)
    cube = add_raster(project, path, "utm cube")
    dock.layer_combo.setLayer(cube)
    canvas = iface.mapCanvas()
    wgs84 = QgsCoordinateReferenceSystem("EPSG:4326")
    canvas.setDestinationCrs(wgs84)
    to_canvas = QgsCoordinateTransform(cube.crs(), wgs84, project)
    row, col = 40, 60

    qtbot.mouseClick(dock.pick_button, Qt.LeftButton)
    assert dock.pick_button.isChecked() and canvas.mapTool() is dock.map_tool
    with qtbot.waitSignal(dock.meanReady, timeout=RUN_TIMEOUT_MS):
        dock.map_tool.canvasClicked.emit(to_canvas.transform(map_point(cube, row, col)), Qt.LeftButton)
    pixel_x, pixel_y = dock.spectrum.pixel_curve.getData()
    assert np.array_equal(pixel_y, data[:, row, col].astype(np.float64)) and len(pixel_x) == BANDS
    assert np.allclose(dock.spectrum.mean_curve.getData()[1], data.reshape(BANDS, -1).mean(axis=1))

    assert dock.show_spectrum_at(to_canvas.transform(QgsPointXY(400000, 4650000))) is None
    assert "outside utm cube" in dock.status_label.text()
    dock.show_spectrum_at(to_canvas.transform(map_point(cube, row, col)))
    assert dock.status_label.text() == ""  # the miss's message stood under the next pixel's spectrum
    canvas.setMapTool(QgsMapToolPan(canvas))  # another tool: the toggle pops up
    assert not dock.pick_button.isChecked()


@pytest.mark.parametrize("transform", [Affine(2, 0, 500000, 0, 2, 4650000), Affine(0, 2, 500000, -2, 0, 4650000)],
                         ids=["south-up", "rotated"])
def test_a_pick_on_a_south_up_or_rotated_image_reads_the_pixel_under_the_click(qtbot, dock, iface, project, beach2,
                                                                              tmp_path, transform):
    """QGIS shows such images through a north-up view of another size: the pick read that view's row and column
    from the file, the mirrored pixel of a south-up image, and on a rotated one past the file's edge (an
    IndexError nothing caught)."""
    with rasterio.open(beach2[0]) as src:
        data, profile = src.read(), src.profile
    with rasterio.open(tmp_path / "placed.tif", "w", **dict(profile, crs="EPSG:32633", transform=transform)) as dst:
        dst.write(data)
    cube = add_raster(project, tmp_path / "placed.tif", "placed")
    dock.layer_combo.setLayer(cube)
    iface.mapCanvas().setDestinationCrs(cube.crs())
    qtbot.mouseClick(dock.pick_button, Qt.LeftButton)
    for index, (row, col) in enumerate(((10, 80), (95, 3))):
        click = QgsPointXY(*(transform * (col + 0.5, row + 0.5)))
        if index == 0:  # the scene mean is computed once, in the background (waiting again sat out the timeout)
            with qtbot.waitSignal(dock.meanReady, timeout=RUN_TIMEOUT_MS):
                dock.map_tool.canvasClicked.emit(click, Qt.LeftButton)
        else:
            dock.map_tool.canvasClicked.emit(click, Qt.LeftButton)
        assert np.array_equal(dock.spectrum.pixel_curve.getData()[1], data[:, row, col].astype(np.float64))
        assert f"pixel (row {row}, col {col}) of placed" in dock.spectrum.legend.text()
    assert dock.show_spectrum_at(QgsPointXY(*(transform * (-0.5, 50)))) is None
    assert "outside placed" in dock.status_label.text()


def test_a_band_all_nodata_is_a_gap_in_the_spectra(qtbot, dock, project, beach2, tmp_path):
    """A band at its nodata value everywhere (-9999 in an int16 cube) pressed both spectra flat at -9999, and an
    all-NaN band made every pixel 'nodata'."""
    with rasterio.open(beach2[0]) as src:
        data, profile = src.read().astype(np.float32), src.profile
    data[50] = np.nan
    with rasterio.open(tmp_path / "nan_band.tif", "w", **dict(profile, dtype="float32", nodata=float("nan"))) as dst:
        dst.write(data)
    cube = add_raster(project, tmp_path / "nan_band.tif", "nan band")
    dock.layer_combo.setLayer(cube)
    row, col = 40, 60
    with qtbot.waitSignal(dock.meanReady, timeout=RUN_TIMEOUT_MS):
        spectrum = dock.show_spectrum_at(map_point(cube, row, col))
    assert spectrum is not None and np.isnan(spectrum[50])
    assert np.array_equal(np.delete(spectrum, 50), np.delete(data[:, row, col], 50))
    mean = dock.spectrum.mean_curve.getData()[1]
    assert np.isnan(mean[50]) and np.allclose(np.delete(mean, 50), np.delete(data, 50, axis=0).reshape(BANDS - 1, -1).mean(axis=1))


def test_a_reference_on_a_finer_grid_scores_and_plots_as_on_the_image_grid(qtbot, dock, project, beach2, tmp_path):
    """The ROC comes from the reference resampled onto the image (it was once read on its own grid: wrong pixels)."""
    with rasterio.open(beach2[0]) as src:
        data, profile = src.read(), src.profile
    with rasterio.open(beach2[1]) as src:
        truth, truth_profile = src.read(1), src.profile
    utm = dict(crs="EPSG:32633", transform=from_origin(500000, 4650000, 2, 2))
    with rasterio.open(tmp_path / "utm.tif", "w", **dict(profile, **utm)) as dst:
        dst.write(data)
    fine = np.kron(truth, np.ones((2, 2), truth.dtype))  # the same mask at 1 m
    with rasterio.open(tmp_path / "fine.tif", "w", **dict(truth_profile, width=200, height=200, crs="EPSG:32633",
                                                          transform=from_origin(500000, 4650000, 1, 1))) as dst:
        dst.write(fine, 1)
    cube = add_raster(project, tmp_path / "utm.tif", "utm cube")
    choose(dock, cube, "rx", add_raster(project, tmp_path / "fine.tif", "fine reference"), output=tmp_path / "out")
    result, error = click_run(qtbot, dock)
    assert error == "" and any("reference" in note for note in result.notes)  # resampled, and it says so
    same_grid = detect_anomalies(str(beach2[0]), AnomalyOutputs(str(tmp_path / "s.tif")), AnomalyParams(method="rx"),
                                 reference=str(beach2[1]))
    assert result.metrics["auc_df"] == pytest.approx(same_grid.metrics["auc_df"], abs=1e-12)
    assert result.metrics["anomaly_pixels"] == np.count_nonzero(truth)
    assert legend_texts(dock) == [f"RX AUC {same_grid.metrics['auc_df']:.4f}"]
    assert dock.roc_runs[cube.id()]["rx"].auc == result.metrics["auc_df"]


def test_spectra_plot_against_the_wavelengths_a_cube_carries(qtbot, dock, iface, project, shared_data, tmp_path):
    """MUUFL Gulfport (72 bands, 367.7-1043.4 nm) imported with its wavelengths: the spectrum's x axis is in nm."""
    source = shared_data / "classification" / "muufl_hsi_subimages" / "an_hsi_image_sub_for_demo.mat"
    mat = scipy.io.loadmat(str(source))
    import_cube(str(source), str(tmp_path / "muufl.tif"), params=ImportCubeParams("hsi_img_sub"))
    cube = add_raster(project, tmp_path / "muufl.tif", "muufl")
    dock.layer_combo.setLayer(cube)
    row, col = 20, 30
    with qtbot.waitSignal(dock.meanReady, timeout=RUN_TIMEOUT_MS):
        spectrum = dock.show_spectrum_at(map_point(cube, row, col))
    assert np.allclose(spectrum, mat["hsi_img_sub"][row, col])
    pixel_x, _ = dock.spectrum.pixel_curve.getData()
    assert np.allclose(pixel_x, mat["wavelengths"].ravel(), atol=1e-3)  # written as %g: 6 significant digits
    assert np.array_equal(dock.spectrum.mean_curve.getData()[0], pixel_x)
    assert dock.spectrum.plot.getAxis("bottom").labelText == "wavelength (nm)"
    if os.environ.get("RSLAB_SCREENSHOTS"):  # for looking at the plot under Xvfb
        dock.resize(420, 1200)
        dock.grab().save(os.path.join(os.environ["RSLAB_SCREENSHOTS"], "anomaly_dock_wavelengths.png"))


def test_the_mean_spectrum_of_a_crop_with_fewer_pixels_than_bands(qtbot, dock, project, shared_data, tmp_path):
    """A 10 x 10 crop of MUUFL's 224-band cube: too few pixels for RX's covariance, but its mean spectrum shows."""
    source = shared_data / "classification" / "muufl_hsi_subimages" / "a_hsi_img_for_VI_demo.mat"
    import_cube(str(source), str(tmp_path / "muufl.tif"), params=ImportCubeParams("hsi_img"))
    with rasterio.open(tmp_path / "muufl.tif") as src:
        crop, profile = src.read(window=Window(30, 20, 10, 10)), src.profile
    with rasterio.open(tmp_path / "crop.tif", "w", **dict(profile, width=10, height=10)) as dst:
        dst.write(crop)
    cube = add_raster(project, tmp_path / "crop.tif", "crop")
    dock.layer_combo.setLayer(cube)
    with qtbot.waitSignal(dock.meanReady, timeout=RUN_TIMEOUT_MS):
        dock.show_spectrum_at(map_point(cube, 4, 5))
    assert np.allclose(dock.spectrum.mean_curve.getData()[1], crop.reshape(224, -1).mean(axis=1))
    assert dock.status_label.text() == ""


def test_bands_flagged_bad_are_gaps_in_the_spectra_and_left_out_of_a_run(qtbot, dock, project, beach2, tmp_path):
    """beach-2 as ENVI with an ENVI bad band list: the plots leave gaps there, a run says it left them out."""
    from osgeo import gdal

    bad = [1, 2, 3, 50]
    gdal.Translate(str(tmp_path / "beach2.img"), str(beach2[0]), format="ENVI")
    with open(tmp_path / "beach2.hdr", "a") as header:
        header.write("bbl = {" + ", ".join("0" if b in bad else "1" for b in range(1, BANDS + 1)) + "}\n")
    with rasterio.open(beach2[0]) as src:
        data = src.read().astype(np.float64)
    cube = add_raster(project, tmp_path / "beach2.img", "beach-2 (ENVI)")
    dock.layer_combo.setLayer(cube)
    row, col = 40, 60
    with qtbot.waitSignal(dock.meanReady, timeout=RUN_TIMEOUT_MS):
        dock.show_spectrum_at(map_point(cube, row, col))
    flagged = np.isin(np.arange(1, BANDS + 1), bad)
    _, pixel = dock.spectrum.pixel_curve.getData()
    _, mean = dock.spectrum.mean_curve.getData()
    assert np.isnan(pixel[flagged]).all() and np.array_equal(pixel[~flagged], data[~flagged, row, col])
    assert np.isnan(mean[flagged]).all() and np.allclose(mean[~flagged], data[~flagged].reshape(-1, 100 * 100).mean(1))
    choose(dock, cube, "rx", output=tmp_path / "out")
    result, error = click_run(qtbot, dock)
    assert error == "" and result.bands == BANDS - len(bad)
    assert "bands 1-3, 50" in dock.metrics_label.text()  # the run's notes are listed with its figures


def test_the_plugin_opens_the_dock_and_unloading_stops_its_run_and_pick_tool(qtbot, iface, scene, project, tmp_path):
    plugin = rslab.classFactory(iface)
    plugin.initGui()
    try:
        next(a for a in plugin.actions if a.text() == "Detect anomalies…").trigger()
        dock = plugin.docks["anomaly"].widget()
        assert isinstance(dock, AnomalyDock) and dock.iface is iface
        qtbot.mouseClick(dock.pick_button, Qt.LeftButton)
        assert iface.mapCanvas().mapTool() is dock.map_tool
        choose(dock, scene[0], "bsdm_rx", iterations=5000, output=tmp_path / "out")
        qtbot.mouseClick(dock.run_button, Qt.LeftButton)
        task = dock.task
        with qtbot.waitSignal(task.jobFinished, timeout=RUN_TIMEOUT_MS) as done:
            qtbot.waitUntil(lambda: "BSDM iteration" in dock.status_label.text(), timeout=RUN_TIMEOUT_MS)
            plugin.unload()  # deletes the dock: its run is cancelled, its map tool taken off the canvas
            plugin = None
    finally:
        if plugin is not None:
            plugin.unload()
    assert done.args[0] is None and done.args[1].startswith("cancelled")
    qtbot.wait(10)
    assert iface.mapCanvas().mapTool() is None
    assert group_names(project) == []
    assert not (tmp_path / "out").exists() or os.listdir(tmp_path / "out") == []


def test_output_names_never_overwrite(tmp_path):
    first = output_paths(str(tmp_path), "beach 2/cube", "rx", with_mask=True)
    assert os.path.basename(first.scores) == "beach_2_cube_rx_scores.tif" and first.mask.endswith("_rx_mask.tif")
    assert first.peaks.endswith("beach_2_cube_rx_peaks.gpkg")
    open(first.report, "w").close()
    second = output_paths(str(tmp_path), "beach 2/cube", "rx", with_mask=False)
    assert os.path.basename(second.scores) == "beach_2_cube_rx_2_scores.tif" and second.mask is None


def test_true_colour_button_draws_an_image_with_wavelengths_from_its_red_green_blue_bands(
        qtbot, dock, scene, project, shared_data, tmp_path):
    """MUUFL Gulfport (224 bands, 366-2496 nm): QGIS draws bands 1, 2, 3 (near-ultraviolet); the button switches to
    the bands nearest 640, 550, 470 nm. ABU beach-2 has no wavelengths: the button is disabled."""
    from qgis.core import QgsMultiBandColorRenderer

    cube, _ = scene
    dock.layer_combo.setLayer(cube)
    assert not dock.true_colour_button.isEnabled() and "carry no wavelengths" in dock.true_colour_button.toolTip()
    path = tmp_path / "muufl.tif"
    import_cube(str(shared_data / "classification" / "muufl_hsi_subimages" / "a_hsi_img_for_VI_demo.mat"), str(path),
                params=ImportCubeParams("hsi_img"))
    muufl = add_raster(project, path, "muufl")
    dock.layer_combo.setLayer(muufl)
    assert dock.true_colour_button.isEnabled()
    assert (muufl.renderer().redBand(), muufl.renderer().greenBand(), muufl.renderer().blueBand()) == (1, 2, 3)
    qtbot.mouseClick(dock.true_colour_button, Qt.LeftButton)
    renderer = muufl.renderer()
    assert isinstance(renderer, QgsMultiBandColorRenderer)
    assert (renderer.redBand(), renderer.greenBand(), renderer.blueBand()) == (29, 20, 12)
    assert dock.status_label.text() == "muufl drawn in true colour from bands 29, 20, 12."


def test_a_cancel_once_the_outputs_are_written_does_not_fail_the_run(qtbot, dock, scene, project, tmp_path):
    """The dock's job takes the scene mean first: a cancel after the detector has written its outputs cannot
    undo them, so the run finishes (before, the mean came last and a cancel there said nothing was written)."""
    layer, _ = scene
    choose(dock, layer, "rx", output=tmp_path)
    request = dock.build_request()
    assert request.need_mean
    written = lambda: any(name.endswith(".json") for name in os.listdir(tmp_path))  # noqa: E731
    run = request.job(lambda fraction, text: None, written)
    assert written() and run.mean_spectrum.shape == (BANDS,) and os.path.exists(run.result.outputs.scores)


def test_a_failed_mean_spectrum_says_so_in_one_line(dock, scene):
    """A bug in the mean's job: one line naming it and the log (JobTask logged the traceback), not the traceback."""
    dock._mean_finished("cube.tif", None, "unexpected error:\nTraceback (most recent call last):\nZeroDivisionError")
    assert dock.status_label.text() == ("Failed: mean spectrum: unexpected error; the traceback is in the Log "
                                        "Messages panel, tab RS Lab")
    dock._mean_finished("cube.tif", None, "the image is empty")
    assert dock.status_label.text() == "Failed: mean spectrum: the image is empty"


def drawn_labels(axis):
    """The tick labels pyqtgraph actually draws on `axis` (it leaves out those that would stick out of it)."""
    from qgis.PyQt.QtGui import QImage, QPainter

    image = QImage(10, 10, QImage.Format_ARGB32)
    painter = QPainter(image)
    specs = axis.generateDrawSpecs(painter)
    painter.end()
    return [text for _, _, text in specs[2]]


def test_readouts_and_curves_belong_to_the_image_and_reference_picked(qtbot, dock, scene, project, beach2, tmp_path):
    """Switching image left the other image's AUCs on screen; picking another reference, or none, left the curves
    of the earlier one up (under 'Accuracy not computed'); a nodata click left the spectrum picked before; the
    ROC axes did not draw their first decade, nor 0 and 1 on a short plot."""
    cube, reference = scene
    choose(dock, cube, "rx", reference, output=tmp_path)
    dock.resize(420, 900)
    dock.show()
    rx, error = click_run(qtbot, dock)
    assert error == "" and "beach-2" in dock.metrics_label.text() and "AUC(D,F)" in dock.metrics_label.text()
    qtbot.wait(100)
    assert drawn_labels(dock.roc.plot.getAxis("bottom")) == DECADES
    assert {"0", "1"} <= set(drawn_labels(dock.roc.plot.getAxis("left")))

    other = add_raster(project, beach2[0], "beach-2 again")
    dock.layer_combo.setLayer(other)
    assert dock.metrics_label.text() == "" and not dock.roc.visible_curves()
    dock.layer_combo.setLayer(cube)  # back: its readout and curve again
    assert "AUC(D,F)" in dock.metrics_label.text() and list(dock.roc.visible_curves()) == ["rx"]
    dock.reference_combo.setLayer(None)
    assert not dock.roc.visible_curves()
    _, error = click_run(qtbot, dock)
    assert error == "" and "Accuracy not computed" in dock.metrics_label.text() and not dock.roc.visible_curves()

    assert dock.show_spectrum_at(map_point(cube, 10, 10)) is not None
    assert len(dock.spectrum.pixel_curve.getData()[0]) > 0
    with rasterio.open(beach2[0]) as src:
        profile, data = src.profile, src.read()
    data[:, 0, :3] = -9999
    holed = tmp_path / "holed.tif"
    with rasterio.open(holed, "w", **dict(profile, nodata=-9999)) as dst:
        dst.write(data)
    holed_layer = add_raster(project, holed, "holed")
    dock.layer_combo.setLayer(holed_layer)
    assert dock.show_spectrum_at(map_point(holed_layer, 0, 1)) is None and "nodata" in dock.status_label.text()
    assert dock.spectrum.pixel_curve.getData()[0] is None or len(dock.spectrum.pixel_curve.getData()[0]) == 0
    assert dock.spectrum.legend.text() == ""
    assert dock.spectrum.mean_curve.getData()[0] is None or len(dock.spectrum.mean_curve.getData()[0]) == 0  # not beach-2's mean


def test_pick_pixel_after_the_canvas_is_gone_does_nothing(dock, iface, monkeypatch):
    """QGIS closing deletes the canvas, which deactivates the tool, which unchecks Pick pixel: it raised
    'wrapped C/C++ object of type QgsMapCanvas has been deleted'."""
    from rslab.ui import anomaly_dock

    monkeypatch.setattr(anomaly_dock.sip, "isdeleted", lambda obj: obj is iface.mapCanvas())
    dock._toggle_pick(False)
    dock._toggle_pick(True)
    assert dock.map_tool is None


def test_another_image_picked_during_a_run_keeps_its_own_readout(qtbot, dock, scene, project, tmp_path):
    """A run that ended while another image was picked put its readout above the other image's ROC curves."""
    cube, reference = scene
    choose(dock, cube, "rx", reference, output=tmp_path / "first")
    click_run(qtbot, dock)
    first = dock.metrics_label.text()
    other = add_raster(project, shutil.copy(cube.source(), tmp_path / "other.tif"), "other")
    choose(dock, other, "lrx", reference, output=tmp_path / "second")
    with qtbot.waitSignal(dock.runFinished, timeout=RUN_TIMEOUT_MS):
        qtbot.mouseClick(dock.run_button, Qt.LeftButton)
        dock.layer_combo.setLayer(cube)  # picked while local RX runs on 'other'
    assert dock.metrics_label.text() == first and list(dock.roc.visible_curves()) == ["rx"]
    assert "a run on other: pick it to see its readout" in dock.status_label.text()
    dock.layer_combo.setLayer(other)
    assert "other" in dock.metrics_label.text() and list(dock.roc.visible_curves()) == ["lrx"]


def test_a_run_queued_behind_busy_threads_says_so_until_it_begins(qtbot, dock, scene, project, tmp_path):
    """QGIS runs tasks in Qt's global thread pool, one per core: a run started while other jobs hold every
    thread waited at 0 % with nothing said, and the wait then counted in its estimate of the time left. Cancel
    works while it waits."""
    from qgis.PyQt.QtCore import QThreadPool

    from rslab.ui import task as tasks

    release, running = threading.Event(), []

    def hold(progress, cancelled):
        running.append(1)
        release.wait(RUN_TIMEOUT_MS / 1000)

    threads = QThreadPool.globalInstance().maxThreadCount()
    blockers = [tasks.start(tasks.JobTask(f"busy {i}", hold)) for i in range(threads)]
    try:
        qtbot.waitUntil(lambda: len(running) == len(blockers), timeout=RUN_TIMEOUT_MS)
        choose(dock, scene[0], "rx", reference=scene[1], output=tmp_path / "cancelled")
        with qtbot.waitSignal(dock.runFinished, timeout=RUN_TIMEOUT_MS) as done:  # a wait the user gives up on
            qtbot.mouseClick(dock.run_button, Qt.LeftButton)
            qtbot.waitUntil(lambda: dock.progress_bar.text() == tasks.WAITING, timeout=10_000)
            qtbot.mouseClick(dock.cancel_button, Qt.LeftButton)
        assert done.args[0] is None and dock.status_label.text() == "Cancelled; no output was written"
        assert dock.progress_bar.text() == "0%" and dock.progress_bar.toolTip() == "" and dock.run_button.isEnabled()
        assert not (tmp_path / "cancelled").exists() or os.listdir(tmp_path / "cancelled") == []
        choose(dock, scene[0], "rx", reference=scene[1], output=tmp_path)
        with qtbot.waitSignal(dock.runFinished, timeout=RUN_TIMEOUT_MS) as done:
            qtbot.mouseClick(dock.run_button, Qt.LeftButton)
            qtbot.waitUntil(lambda: dock.progress_bar.text() == tasks.WAITING, timeout=10_000)
            assert dock.progress_bar.value() == 0 and dock.cancel_button.isEnabled()
            assert dock.progress_bar.toolTip() == tasks.waiting_reason()  # why, and where to see the busy tasks
            clock_at_begin = []
            dock.task.progressChanged.connect(lambda _: clock_at_begin.append(dock.progress_bar._started))
            released = time.monotonic()
            release.set()
        assert done.args[1] == "" and "AUC(D,F)" in dock.metrics_label.text()
        assert clock_at_begin and clock_at_begin[0] >= released  # the time left is timed from the job's start
        assert dock.progress_bar.text() != tasks.WAITING and dock.progress_bar.toolTip() == ""
    finally:
        release.set()
    qtbot.waitUntil(lambda: not tasks._RUNNING, timeout=RUN_TIMEOUT_MS)


def click_peak(qtbot, table, row: int) -> None:
    """Click the anomaly listed in `row` of the dock's table (scrolled into view first)."""
    item = table.item(row, 0)
    table.scrollToItem(item)
    qtbot.mouseClick(table.viewport(), Qt.LeftButton, pos=table.visualItemRect(item).center())


def test_the_strongest_anomalies_are_listed_and_each_takes_the_map_to_its_pixel(qtbot, dock, iface, scene, project,
                                                                                beach2, tmp_path):
    cube, reference = scene
    table = dock.peak_table
    assert table.rowCount() == 0 and dock.peak_caption.text() == NO_PEAKS_TEXT
    choose(dock, cube, "rx", output=tmp_path)
    rx, error = click_run(qtbot, dock)
    assert error == ""
    with rasterio.open(rx.outputs.scores) as ds:
        scores = ds.read(1)
    with rasterio.open(beach2[0]) as ds:
        data = ds.read().astype(np.float64)
    assert table.rowCount() == PEAK_COUNT == len(rx.peaks)
    assert [(int(table.item(r, 1).text()), int(table.item(r, 2).text())) for r in range(PEAK_COUNT)] == \
        [(p.row, p.col) for p in rx.peaks]
    assert (rx.peaks[0].row, rx.peaks[0].col) == np.unravel_index(np.argmax(scores), scores.shape)
    assert table.item(0, 0).text() == f"{scores.max():.4g}"
    assert dock.peak_caption.text().startswith(f"The {PEAK_COUNT} highest peaks of the RX scores")

    canvas = iface.mapCanvas()
    canvas.setExtent(QgsRectangle(-5000, -5000, 5000, 5000))  # far more than the image: going there zooms in
    pixel = cube.rasterUnitsPerPixelX()
    click_peak(qtbot, table, 7)
    peak = rx.peaks[7]
    centre = map_point(cube, peak.row, peak.col)
    assert canvas.center().distance(centre) < 0.01 * pixel
    assert ZOOM_PIXELS * pixel <= canvas.extent().width() < 4 * ZOOM_PIXELS * pixel
    assert np.array_equal(dock.spectrum.pixel_curve.getData()[1], data[:, peak.row, peak.col])
    assert np.allclose(dock.spectrum.mean_curve.getData()[1], data.reshape(BANDS, -1).mean(axis=1))  # the run computed it
    assert f"pixel (row {peak.row}, col {peak.col}) of beach-2 · RX score {peak.score:.4g}" in \
        dock.spectrum.legend.text()
    width = canvas.extent().width()

    canvas.setCenter(QgsPointXY(centre.x() + 30 * pixel, centre.y()))  # panned away, then the same row again
    click_peak(qtbot, table, 7)
    assert canvas.center().distance(centre) < 0.01 * pixel
    assert canvas.extent().width() == pytest.approx(width)  # close enough already: the map only pans
    qtbot.keyClick(table, Qt.Key_Down)  # the next anomaly
    following = rx.peaks[8]
    assert canvas.center().distance(map_point(cube, following.row, following.col)) < 0.01 * pixel
    assert np.array_equal(dock.spectrum.pixel_curve.getData()[1], data[:, following.row, following.col])

    dock.layer_combo.setLayer(reference)  # another image: not this one's anomalies
    assert table.rowCount() == 0 and dock.peak_caption.text() == NO_PEAKS_TEXT
    dock.layer_combo.setLayer(cube)
    assert table.rowCount() == PEAK_COUNT and not table.selectedItems()
    dock._forget_results()  # a project reopened: its layer ids are the closed session's
    assert table.rowCount() == 0


def test_going_to_an_anomaly_of_a_utm_image_on_a_wgs84_map(qtbot, dock, iface, project, beach2, tmp_path):
    with rasterio.open(beach2[0]) as src:
        data, profile = src.read(), src.profile
    path = tmp_path / "utm.tif"
    with rasterio.open(path, "w", **dict(profile, crs="EPSG:32633", transform=from_origin(500000, 4650000, 2, 2))) as dst:
        dst.write(data)
    cube = add_raster(project, path, "utm cube")
    choose(dock, cube, "rx", output=tmp_path)
    rx, error = click_run(qtbot, dock)
    assert error == ""
    peak = rx.peaks[0]
    assert (peak.x, peak.y) == (500000 + 2 * (peak.col + 0.5), 4650000 - 2 * (peak.row + 0.5))

    canvas = iface.mapCanvas()
    wgs84 = QgsCoordinateReferenceSystem("EPSG:4326")
    canvas.setDestinationCrs(wgs84)
    canvas.setExtent(QgsRectangle(10, 40, 20, 45))
    spectrum = dock.go_to_peak(peak)
    expected = QgsCoordinateTransform(cube.crs(), wgs84, project).transform(QgsPointXY(peak.x, peak.y))
    assert canvas.center().distance(expected) < 1e-7  # degrees: about 1 cm
    assert np.array_equal(spectrum, data[:, peak.row, peak.col].astype(np.float64))
    assert f"pixel (row {peak.row}, col {peak.col}) of utm cube" in dock.spectrum.legend.text()
    points = dock.group.findLayers()[0].layer()  # the strongest anomalies as points in the image's CRS
    assert points.crs().authid() == "EPSG:32633"
    assert next(points.getFeatures()).geometry().asPoint() == QgsPointXY(peak.x, peak.y)


def click_new_mask(qtbot, dock):
    """Click 'New mask' and wait for its job; runFinished's (result, error)."""
    with qtbot.waitSignal(dock.runFinished, timeout=RUN_TIMEOUT_MS) as done:
        qtbot.mouseClick(dock.mask_button, Qt.LeftButton)
    return done.args


def test_a_new_mask_cuts_the_latest_scores_at_another_rate(qtbot, dock, scene, project, beach2, tmp_path):
    """'New mask' after a run: the run's scores cut at the form's rate, added above them in the run's group (the
    run's own mask hidden), the readout giving the new cut and what it finds of the reference."""
    from rslab.core.anomaly_mask import MaskResult

    cube, reference = scene
    choose(dock, cube, "rx", reference, rate=0.01, output=tmp_path)
    assert not dock.mask_button.isEnabled()  # nothing to cut yet
    rx, error = click_run(qtbot, dock)
    assert error == "" and dock.mask_button.isEnabled()

    def ring():  # the mask's operating point on the ROC: (false-alarm rate, detection rate), the x axis logarithmic
        x, y = dock.roc.mask_point.getData()
        return (10 ** x[0], y[0]) if dock.roc.mask_point.isVisible() else None

    found = rx.mask_detection  # the run's own mask at 1 %, on its curve
    assert ring() == pytest.approx((found["false_alarm_rate"], found["detection_rate"]))
    assert legend_texts(dock) == [f"RX AUC {rx.metrics['auc_df']:.4f}", "○ mask at 0.01"]
    dock.far_check.setChecked(False)
    assert not dock.mask_button.isEnabled()
    dock.far_check.setChecked(True)
    dock.far_spin.setValue(0.005)
    mask, error = click_new_mask(qtbot, dock)
    assert error == "" and isinstance(mask, MaskResult)
    assert mask.outputs.mask == str(tmp_path / "beach-2_rx_0.005_mask.tif") and mask.false_alarm_rate == 0.005
    with rasterio.open(rx.outputs.scores) as ds:
        scores = ds.read(1)
    with rasterio.open(mask.outputs.mask) as ds:
        flagged = ds.read(1) == 1
    assert np.array_equal(flagged, scores > mask.threshold) and flagged.sum() == mask.mask_pixels
    assert 45 <= mask.mask_pixels <= 50 < rx.mask_pixels  # 50 asked; fewer only where scores tie at the cut
    nodes = dock.group.findLayers()
    assert [node.name() for node in nodes] == ["RX strongest anomalies", "RX mask (false-alarm rate 0.005)",
                                               "RX mask (false-alarm rate 0.01)", "RX scores"]
    assert [node.itemVisibilityChecked() for node in nodes] == [True, True, False, True]
    assert isinstance(nodes[1].layer().renderer(), QgsPalettedRasterRenderer)
    with rasterio.open(beach2[1]) as ds:
        truth = ds.read(1) != 0
    hits = int((flagged & truth).sum())
    assert mask.mask_detection["anomalies_flagged"] == hits and mask.mask_detection["anomaly_pixels"] == truth.sum()
    text = dock.metrics_label.text()
    assert f"Mask: {mask.mask_pixels} pixels score above {mask.threshold:.4g} (false-alarm rate 0.005)" in text
    assert f"The mask flags {hits} of the reference&#x27;s {truth.sum()} anomaly pixels" in text
    assert f"AUC(D,F)&nbsp;<b>{rx.metrics['auc_df']:.4f}</b>" in text  # the run's figures stay
    assert "false-alarm rate 0.01" not in text
    found = mask.mask_detection
    assert ring() == pytest.approx((found["false_alarm_rate"], found["detection_rate"]))
    assert legend_texts(dock)[-1] == "○ mask at 0.005"
    dock.reference_combo.setLayer(None)  # the curves and the ring belong to that reference
    assert ring() is None and legend_texts(dock) == []
    dock.reference_combo.setLayer(reference)
    assert str(tmp_path) in dock.status_label.text() and dock.progress_bar.value() == 100

    # the same rate again: a file of its own; the group gone: the mask in a group of its own above the image
    project.layerTreeRoot().removeChildNode(dock.group)
    again, error = click_new_mask(qtbot, dock)
    assert error == "" and again.outputs.mask == str(tmp_path / "beach-2_rx_0.005_2_mask.tif")
    assert again.threshold == mask.threshold
    assert [node.name() for node in dock.group.findLayers()] == ["RX mask (false-alarm rate 0.005)"]
    assert project.layerTreeRoot().children()[0] is dock.group

    # scores deleted behind the dock's back: said, nothing started
    os.remove(rx.outputs.scores)
    qtbot.mouseClick(dock.mask_button, Qt.LeftButton)
    assert "scores" in dock.status_label.text() and "are gone" in dock.status_label.text()
    assert not dock.is_running()
