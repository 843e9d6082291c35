"""The compression dock on real QGIS: before readouts, a tiny real GHOST run, cancel, bad input, the plugin menu."""
from __future__ import annotations

import os

import numpy as np
import pytest
from qgis.gui import QgsFileWidget
from qgis.PyQt.QtCore import Qt

import rslab
from rslab.core.checkpoint import build_model, load_checkpoint
from rslab.core.weights import SHIPPED, shipped_checkpoints
from rslab.ui.compression_dock import CUSTOM_CHECKPOINT, CompressionDock
from rslab.ui.compression_figures import DASH, TABLE_HEADERS, si
from rslab.ui.export_dialog import ExportDialog
from resnet_cards import untrained_resnet

TIMEOUT_MS = 240_000  # two busy CPU cores


@pytest.fixture(scope="module")
def resnet(tmp_path_factory) -> str:
    """An untrained CIFAR ResNet-20 as an RS Lab checkpoint (the machinery, not accuracy, is under test)."""
    return untrained_resnet(tmp_path_factory.mktemp("resnet") / "resnet20.pt")


@pytest.fixture()
def dock(qtbot, iface):
    widget = CompressionDock(iface)
    qtbot.addWidget(widget)
    return widget


def choose(qtbot, dock, path):
    """Choose a checkpoint and wait until its card and BOPs are read; returns (summary, error)."""
    with qtbot.waitSignal(dock.summaryReady, timeout=TIMEOUT_MS) as read:
        dock.set_checkpoint(path)
    return read.args


def configure(dock, data, output, method="ghost", epochs=0.02):
    dock.method_combo.setCurrentIndex(dock.method_combo.findData(method))
    dock.epochs_spin.setValue(epochs)
    dock.generations_spin.setValue(1)
    dock.data_file.setFilePath(str(data) if data else "")
    dock.output_file.setFilePath(str(output))


def click_run(qtbot, dock):
    with qtbot.waitSignal(dock.runFinished, timeout=TIMEOUT_MS) as done:
        qtbot.mouseClick(dock.run_button, Qt.LeftButton)
    return done.args


def readout(dock, key, column):
    return dock.readout.values[(key, column)].text()


def test_shown_panel_lists_the_shipped_checkpoints_and_reads_the_default(qtbot, dock):
    expected = [label for task in SHIPPED for label, _ in shipped_checkpoints(task)]
    assert [dock.model_combo.itemText(i) for i in range(dock.model_combo.count())] == expected + [CUSTOM_CHECKPOINT]
    assert expected, "the default change-detection weights ship with the plugin"
    assert dock.summary is None  # nothing is read before the panel is shown
    with qtbot.waitSignal(dock.summaryReady, timeout=TIMEOUT_MS) as read:
        dock.show()
    summary, error = read.args
    assert error == "" and summary.path == dock.model_combo.itemData(0) and not summary.compressed
    assert summary.report["total_bops"] > 0 and summary.report["params"] > 0
    assert readout(dock, "bops", "before") != DASH and readout(dock, "bops", "after") == DASH
    assert readout(dock, "size", "before")[-3:] in (" MB", " kB") and readout(dock, "params", "before") != DASH
    assert dock.layer_table.rowCount() == len(summary.report["layers"])
    assert len(dock.chart.bars["before"].opts["height"]) == len(summary.report["layers"])
    assert summary.architecture in dock.model_info.text()
    folder = summary.task == "change_detection"
    assert (dock.data_file.storageMode() == QgsFileWidget.GetDirectory) == folder
    assert not dock.export_button.isEnabled()  # a full-precision model: nothing compressed to export yet


def test_method_settings_follow_the_method(dock):
    dock.method_combo.setCurrentIndex(dock.method_combo.findData("ghost"))
    assert dock.ghost_box.isVisibleTo(dock) and not dock.pic_pq_box.isVisibleTo(dock)
    assert dock.params().max_bits == (8,)
    dock.method_combo.setCurrentIndex(dock.method_combo.findData("pic_pq"))
    assert dock.pic_pq_box.isVisibleTo(dock) and not dock.ghost_box.isVisibleTo(dock)
    dock.bits_edit.setText("8, 6,4")
    assert dock.params().max_bits == (8, 6, 4)
    from rslab.core.pic_pq import MAX_PENALTY, MAX_REDUCTION
    assert (dock.penalty_spin.maximum(), dock.flops_spin.maximum()) == (MAX_PENALTY, MAX_REDUCTION)


def test_a_tiny_ghost_run_fills_the_after_readouts_table_chart_and_curves(qtbot, dock, resnet, samples, tmp_path):
    dock.resize(300, 900)  # narrow: the readouts of a run must widen it, not be cut ('25.5x s', '-6')
    dock.show()
    summary, error = choose(qtbot, dock, resnet)
    assert error == "" and summary.task == "classification"
    assert dock.data_file.storageMode() == QgsFileWidget.GetFile
    output = tmp_path / "resnet20_ghost.pt"
    configure(dock, samples / "cifar10_sample.npz", output)
    result, error = click_run(qtbot, dock)

    assert error == "" and result is dock.result and result.method == "ghost"
    assert result.checkpoint == str(output) and output.is_file()
    checkpoint = load_checkpoint(str(output))
    assert checkpoint.card.bit_widths and checkpoint.card.training["compression"]["method"] == "ghost"
    build_model(checkpoint)  # rebuilds with its bit widths

    assert readout(dock, "bops", "before") != DASH and readout(dock, "bops", "after") != DASH
    assert readout(dock, "bops", "change") == f"{result.bops_ratio:.1f}× fewer" and result.bops_ratio > 1
    qtbot.wait(100)
    assert all(label.width() >= label.sizeHint().width() for label in dock.readout.values.values())
    assert readout(dock, "size", "change").endswith("× smaller")
    assert dock.readout.names["metric"].text() == "Accuracy (%)"
    assert readout(dock, "metric", "before") == f"{result.scores_before['accuracy']:.2f}"
    assert readout(dock, "metric", "after") == f"{result.scores_after['accuracy']:.2f}"

    layers = [name for name, module in build_model(load_checkpoint(resnet)).named_modules()
              if type(module).__name__ in ("Conv2d", "Linear")]
    table = dock.layer_table
    assert table.rowCount() == len(layers) == 20
    qtbot.wait(50)
    assert table.columnWidth(0) >= 100  # the names are readable (36 px, '…0', at a usual dock width)
    assert [table.item(row, 0).text() for row in range(table.rowCount())] == layers
    after = {layer["name"]: layer for layer in result.after["layers"]}
    for row, name in enumerate(layers):
        kept = f"{after[name]['out_channels']} / {result.before['layers'][row]['out_channels']}"
        assert table.item(row, 1).text() == kept
        assert table.item(row, 2).text() == str(after[name]["weight_bits"])
        assert table.item(row, 3).text() == str(after[name]["activation_bits"])
        assert "→" in table.item(row, 4).text()
    for name in ("before", "after"):
        heights = dock.chart.bars[name].opts["height"]
        assert len(heights) == 20 and all(h > 0 for h in heights)
    assert list(dock.chart.bars["before"].opts["height"]) > list(dock.chart.bars["after"].opts["height"])  # fewer bits

    _, losses = dock.loss_curve.getData()
    _, scores = dock.metric_curve.getData()
    assert len(losses) >= 1 and len(scores) >= 2 and dock.history
    assert dock.progress_bar.value() == 100 and dock.status_label.text().startswith("Done:")
    assert dock.run_button.isEnabled() and not dock.cancel_button.isEnabled()

    assert dock.export_button.isEnabled()
    qtbot.mouseClick(dock.export_button, Qt.LeftButton)
    dialog = dock.export_dialog
    assert isinstance(dialog, ExportDialog) and dialog.isVisible()
    assert dialog.checkpoint_file.filePath() == str(output) and dialog.model is not None
    assert dialog.report["bops_ratio"] == round(result.bops_ratio, 3)
    dialog.close()

    # another checkpoint: none of this run stays, its 'Done: 16.0x fewer BOPs' status line included
    summary, error = choose(qtbot, dock, shipped_checkpoints("change_detection")[0][1])
    assert error == "" and dock.status_label.text() == "" and dock.progress_bar.value() == 0
    assert readout(dock, "bops", "after") == DASH and not dock.export_button.isEnabled()


def test_cancel_leaves_no_output(qtbot, dock, resnet, samples, tmp_path):
    choose(qtbot, dock, resnet)
    out = tmp_path / "out"
    configure(dock, samples / "cifar10_sample.npz", out / "never.pt", epochs=50)
    with qtbot.waitSignal(dock.runFinished, timeout=TIMEOUT_MS) as done:
        qtbot.mouseClick(dock.run_button, Qt.LeftButton)
        assert dock.cancel_button.isEnabled() and not dock.run_button.isEnabled()
        assert not dock.export_button.isEnabled() and not dock.data_file.isEnabled()
        qtbot.waitUntil(lambda: dock.progress_bar.value() >= 4, timeout=TIMEOUT_MS)
        qtbot.mouseClick(dock.cancel_button, Qt.LeftButton)
    result, error = done.args
    assert result is None and error.startswith("cancelled")
    assert dock.status_label.text() == "Cancelled; no output was written"
    assert not (out / "never.pt").exists() and (not out.exists() or os.listdir(out) == [])
    assert dock.run_button.isEnabled() and dock.data_file.isEnabled() and not dock.export_button.isEnabled()


def test_bad_input_is_refused_before_any_task(qtbot, dock, resnet, samples, tmp_path, iface):
    choose(qtbot, dock, resnet)
    output = tmp_path / "out.pt"
    np.savez(tmp_path / "images_only.npz", x_train=np.zeros((2, 32, 32, 3), np.uint8))
    cases = [
        ("", "choose the evaluation data: a .npz with x_train"),
        (samples / "abu-beach-2.mat", "abu-beach-2.mat is not a .npz file; a classification checkpoint needs a .npz"),
        (tmp_path, "is a folder; a classification checkpoint needs a .npz"),
        (tmp_path / "images_only.npz", "images_only.npz has no y_train, x_test, y_test"),
        (tmp_path / "missing.npz", "does not exist"),
    ]
    for data, message in cases:
        configure(dock, data, output)
        with qtbot.assertNotEmitted(dock.summaryReady):
            result, error = click_run(qtbot, dock)
        assert result is None and message in error, (data, error)
        assert dock.task is None and dock.status_label.text() == "Failed: " + error
        assert not any(message in item.text() for item in iface.messageBar().items())  # said in the dock alone
    configure(dock, samples / "cifar10_sample.npz", output)
    dock.bits_edit.setText("8,six")
    dock.method_combo.setCurrentIndex(dock.method_combo.findData("pic_pq"))
    _, error = click_run(qtbot, dock)
    assert "whole numbers separated by commas" in error and dock.task is None
    assert os.listdir(tmp_path) == ["images_only.npz"]


def test_full_precision_max_bits_are_refused_before_any_task(qtbot, dock, resnet, samples, tmp_path):
    """32 is no stage ceiling (PIC-PQ keeps the first conv and classifier at 32 itself): refused at once."""
    assert "32" not in dock.bits_edit.toolTip() and "2..8" in dock.bits_edit.toolTip()
    choose(qtbot, dock, resnet)
    configure(dock, samples / "cifar10_sample.npz", tmp_path / "out.pt", method="pic_pq")
    dock.bits_edit.setText("8,6,32")
    with qtbot.assertNotEmitted(dock.summaryReady):
        result, error = click_run(qtbot, dock)
    assert result is None and "2..8" in error and "[8, 6, 32]" in error, error
    assert dock.task is None and os.listdir(tmp_path) == []


def test_a_file_that_is_not_a_checkpoint_is_refused(qtbot, dock, resnet, samples, tmp_path):
    corrupt = tmp_path / "corrupt.pt"
    data = open(resnet, "rb").read()
    corrupt.write_bytes(data[:len(data) // 2])  # a checkpoint cut short (an interrupted copy)
    summary, error = choose(qtbot, dock, str(corrupt))
    assert summary is None and "corrupt.pt is not a readable checkpoint" in error
    assert dock.model_info.text().startswith("Cannot use this checkpoint: corrupt.pt is not a readable checkpoint")
    assert dock.model_combo.currentText() == CUSTOM_CHECKPOINT and dock.model_file.isEnabled()
    configure(dock, samples / "cifar10_sample.npz", tmp_path / "out.pt")
    _, error = click_run(qtbot, dock)
    assert error.startswith("cannot use corrupt.pt: corrupt.pt is not a readable checkpoint") and dock.task is None
    assert readout(dock, "bops", "before") == DASH and not dock.export_button.isEnabled()


def test_a_compressed_checkpoint_shows_its_record_and_can_be_exported_not_recompressed(qtbot, dock, resnet, samples,
                                                                                        tmp_path):
    from rslab.core.compression import model_bops_report
    from rslab.core.export import export_checkpoint
    from rslab.core.quantization import apply_bit_plan

    checkpoint = load_checkpoint(resnet)
    model = build_model(checkpoint)
    apply_bit_plan(model, {name: {"weight": 4, "activation": 8}
                           for name, module in model.named_modules() if type(module).__name__ == "Conv2d"})
    card = checkpoint.card
    card.training = {"compression": {"method": "pic_pq", "gbops_before": 40.0, "size_mb_before": 1.1,
                                     "params_before": 2 * model_bops_report(resnet)["params"], "bops_ratio": 7.5,
                                     "scores_before": {"accuracy": 91.0},
                                     "scores_after": {"accuracy": 90.2}}}
    path = export_checkpoint(model, card, str(tmp_path / "resnet20_4bit.pt"))
    summary, error = choose(qtbot, dock, path)
    assert error == "" and summary.compressed
    assert "compressed with PIC-PQ" in dock.model_info.text()
    assert readout(dock, "bops", "before") == si(40e9) == "40\u2009G"
    assert readout(dock, "bops", "change") == "7.5× fewer"
    assert readout(dock, "params", "change") == "-50 %"  # its card records the parameters before ('—' before)
    legend = dock.chart.plot.getPlotItem().titleLabel.text  # no per-layer figures before: 'before' is not listed
    assert "after" in legend and "before" not in legend
    assert readout(dock, "bops", "after") != DASH and readout(dock, "metric", "change") == "-0.80 pt"
    assert dock.layer_table.item(1, 2).text() == "4" and dock.layer_table.item(1, 3).text() == "8"
    assert dock.export_button.isEnabled()
    qtbot.mouseClick(dock.export_button, Qt.LeftButton)
    dialog = dock.export_dialog
    dialog.folder.setFilePath(str(tmp_path / "export"))
    with qtbot.waitSignal(dialog.exported, timeout=TIMEOUT_MS) as saved:
        qtbot.mouseClick(dialog.save_button, Qt.LeftButton)
        qtbot.mouseClick(dock.export_button, Qt.LeftButton)  # to bring it forward: it cancelled the save unsaid
        assert dock.export_dialog is dialog and dialog.isVisible()
    written, error = saved.args
    assert error == "" and all(os.path.isfile(path) for path in written.values()) and written
    configure(dock, samples / "cifar10_sample.npz", tmp_path / "again.pt")
    _, error = click_run(qtbot, dock)
    assert "already compressed" in error and dock.task is None and not (tmp_path / "again.pt").exists()


def test_the_plugin_menu_opens_the_panel_and_unloading_stops_its_run(qtbot, iface, resnet, samples, tmp_path):
    plugin = rslab.classFactory(iface)
    plugin.initGui()
    try:
        action = next(a for a in plugin.actions if a.text() == "Compress a model…")
        assert action not in plugin.toolbar.actions()
        action.trigger()
        dock = plugin.docks["compression"].widget()
        assert isinstance(dock, CompressionDock) and dock.iface is iface
        choose(qtbot, dock, resnet)
        out = tmp_path / "out"
        configure(dock, samples / "cifar10_sample.npz", out / "never.pt", epochs=50)
        qtbot.mouseClick(dock.run_button, Qt.LeftButton)
        task = dock.task
        with qtbot.waitSignal(task.jobFinished, timeout=TIMEOUT_MS) as done:
            qtbot.waitUntil(lambda: dock.progress_bar.value() >= 4, timeout=TIMEOUT_MS)
            plugin.unload()  # deletes the dock: its run is cancelled
            plugin = None
        assert done.args[0] is None and done.args[1].startswith("cancelled")
        assert not out.exists() or os.listdir(out) == []
    finally:
        if plugin is not None:
            plugin.unload()


def test_the_empty_layer_table_shows_its_name_header_whole(qtbot, dock):
    """Before any checkpoint is read the name column took what the figures left: its header read '.aye'."""
    dock.resize(300, 1000)
    dock.show()
    qtbot.wait(300)
    header = dock.layer_table.horizontalHeader()
    assert dock.layer_table.columnWidth(0) >= header.fontMetrics().horizontalAdvance(TABLE_HEADERS[0]) + 10
