"""The export dialog on real QGIS: all four formats of a compressed checkpoint, the ONNX check,
overwrite only after a Yes, and files it cannot load refused with a message."""
from __future__ import annotations

import json
import os

import pytest
from qgis.PyQt.QtCore import Qt, QTimer
from qgis.PyQt.QtWidgets import QApplication, QMessageBox

from rslab.core.checkpoint import ModelCard, build_model, load_checkpoint
from rslab.core.dependencies import PLUGIN_DIR
from rslab.ui.export_dialog import ExportDialog
from rslab.ui.job_dock import profile_folder

TIMEOUT_MS = 180_000
STEM = "resnet20_mixed"
NAMES = [f"{STEM}.pt", f"{STEM}.onnx", f"{STEM}.torchscript.pt", f"{STEM}.report.json"]


@pytest.fixture(scope="module")
def compressed(tmp_path_factory) -> str:
    """A CIFAR ResNet-20 with mixed bits (4/6/8-bit weights, 8-bit activations), calibrated on random
    images and written by core.export.export_checkpoint: a compressed checkpoint in seconds."""
    import torch

    from rslab.core.export import export_checkpoint
    from rslab.core.quantization import apply_bit_plan, calibrate_activations
    from rslab.models.resnet_cifar import ResNetCifar

    torch.manual_seed(0)
    model = ResNetCifar(20)
    plan = {name: {"weight": (4, 6, 8)[i % 3], "activation": 8}
            for i, (name, module) in enumerate(model.named_modules()) if isinstance(module, torch.nn.Conv2d)}
    apply_bit_plan(model, plan)
    calibrate_activations(model, [(torch.randn(8, 3, 32, 32),) for _ in range(2)])
    card = ModelCard(task="classification", architecture="resnet_cifar",
                     arguments={"depth": 20, "num_classes": 10, "bands": 3}, bands=["red", "green", "blue"],
                     normalisation={"mean": [125.3, 123.0, 113.9], "std": [63.0, 62.1, 66.7]},
                     class_names=[f"class {i}" for i in range(10)],
                     training={"compression": {"method": "ghost", "bops_ratio": 9.9}})
    return export_checkpoint(model, card, str(tmp_path_factory.mktemp("compressed") / "resnet20_mixed.pt"))


@pytest.fixture()
def dialog(qtbot, compressed, tmp_path):
    widget = ExportDialog(compressed)
    qtbot.addWidget(widget)
    widget.show()
    widget.folder.setFilePath(str(tmp_path / "export"))
    widget.name_edit.setText(STEM)
    return widget


def click_save(qtbot, dialog):
    with qtbot.waitSignal(dialog.exported, timeout=TIMEOUT_MS) as done:
        qtbot.mouseClick(dialog.save_button, Qt.LeftButton)
    return done.args


def snapshot(folder):
    return {name: (os.stat(folder / name).st_mtime_ns, (folder / name).read_bytes()) for name in os.listdir(folder)}


def test_all_four_formats_of_a_compressed_checkpoint(qtbot, dialog, compressed, tmp_path):
    import onnx
    import torch

    assert "compressed (4, 6, 8, 32 bits)" in dialog.model_info.text() and dialog.save_button.isEnabled()
    assert all(box.isChecked() for box in dialog.format_boxes.values())
    written, error = click_save(qtbot, dialog)
    folder = tmp_path / "export"
    assert error == "" and sorted(os.listdir(folder)) == sorted(NAMES)
    assert written == {fmt: str(folder / name) for fmt, name in zip(("checkpoint", "onnx", "torchscript", "report"),
                                                                      NAMES)}
    assert dialog.status_label.text().startswith("Written:") and dialog.progress_bar.value() == 100
    qtbot.wait(50)  # every written path shows (the dialog kept its first size: two of four were hidden)
    for label in (dialog.status_label, dialog.model_info):
        assert label.height() >= label.heightForWidth(label.width()), label.text()

    source, exported = load_checkpoint(compressed), load_checkpoint(written["checkpoint"])
    assert exported.card.bit_widths == source.card.bit_widths
    model, original = build_model(exported), build_model(source)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(model(x), original(x), atol=1e-5)
        traced = torch.jit.load(written["torchscript"])
        assert torch.allclose(traced(x)[0] if isinstance(traced(x), tuple) else traced(x), original(x), atol=1e-4)
    graph = onnx.load(written["onnx"]).graph
    assert any(node.op_type == "QuantizeLinear" for node in graph.node)
    assert any(node.op_type == "DequantizeLinear" for node in graph.node)
    report = json.loads(open(written["report"]).read())
    assert report["total_bops"] > 0 and len(report["layers"]) == 20
    assert report["compression"] == {"method": "ghost", "bops_ratio": 9.9}
    assert report["source_checkpoint"] == os.path.abspath(compressed) and "onnx_check" in report

    with qtbot.waitSignal(dialog.checked, timeout=TIMEOUT_MS) as done:
        qtbot.mouseClick(dialog.check_button, Qt.LeftButton)
    check, error = done.args
    assert error == "" and check["samples"] == 4
    assert dialog.check_label.text().startswith("Agrees layer by layer over 4 sample inputs")
    assert check["agrees_within_one_step"] == 1.0
    assert "quantisation steps" in dialog.check_label.text()
    assert sorted(os.listdir(folder)) == sorted(NAMES)  # the check writes to a temporary folder only
    if os.environ.get("RSLAB_SCREENSHOTS"):
        qtbot.wait(100)  # the layout takes the new label text on the next turn of the event loop
        dialog.grab().save(os.path.join(os.environ["RSLAB_SCREENSHOTS"], "export_dialog.png"))


def test_existing_files_are_replaced_only_after_a_yes(qtbot, dialog, tmp_path):
    folder = tmp_path / "export"
    folder.mkdir()
    for name in NAMES[:2]:
        (folder / name).write_text("an earlier export")
    before = snapshot(folder)
    asked = []
    dialog.confirm_overwrite = lambda paths: asked.append(sorted(os.path.basename(p) for p in paths)) or False
    written, error = click_save(qtbot, dialog)
    assert written == {} and "nothing written" in error and dialog.task is None
    assert asked == [sorted(NAMES[:2])]
    assert snapshot(folder) == before  # same files, same bytes, same modification times
    assert dialog.status_label.text().startswith("Nothing written")

    dialog.format_boxes["onnx"].setChecked(False)
    dialog.format_boxes["torchscript"].setChecked(False)
    dialog.confirm_overwrite = lambda paths: asked.append(sorted(os.path.basename(p) for p in paths)) or True
    written, error = click_save(qtbot, dialog)
    assert error == "" and sorted(written) == ["checkpoint", "report"] and asked[-1] == [NAMES[0]]
    assert load_checkpoint(written["checkpoint"]).card.bit_widths
    assert (folder / NAMES[1]).read_text() == "an earlier export"  # not chosen, not touched


def test_the_real_question_box_answered_no_writes_nothing(qtbot, dialog, tmp_path):
    folder = tmp_path / "export"
    folder.mkdir()
    (folder / NAMES[3]).write_text("{}")
    before = snapshot(folder)
    seen = []

    def answer_no():
        box = QApplication.activeModalWidget()
        if not isinstance(box, QMessageBox):
            QTimer.singleShot(50, answer_no)
            return
        seen.append(box.text())
        box.button(QMessageBox.No).click()

    QTimer.singleShot(50, answer_no)
    written, error = click_save(qtbot, dialog)
    assert written == {} and "nothing written" in error
    assert seen and NAMES[3] in seen[0] and "Replace them?" in seen[0]
    assert snapshot(folder) == before


@pytest.mark.parametrize("kind", ["truncated", "not_rslab"])
def test_a_checkpoint_it_cannot_load_is_refused_with_a_message(qtbot, kind, compressed, tmp_path):
    import torch

    path = tmp_path / f"{kind}.pt"
    if kind == "truncated":
        data = open(compressed, "rb").read()
        path.write_bytes(data[:len(data) // 3])
        message = "truncated.pt is not a readable checkpoint"
    else:
        torch.save({"weights": torch.zeros(3)}, path)
        message = "not_rslab.pt is not an RS Lab checkpoint"
    dialog = ExportDialog(str(path))
    qtbot.addWidget(dialog)
    dialog.folder.setFilePath(str(tmp_path / "export"))
    dialog.name_edit.setText("refused")
    assert dialog.model_info.text().startswith("Cannot export: " + message)
    assert not dialog.save_button.isEnabled() and not dialog.check_button.isEnabled()
    with qtbot.waitSignal(dialog.exported, timeout=1000) as done:
        dialog.save()  # even when called directly
    assert done.args[0] == {} and message in done.args[1]
    assert dialog.status_label.text().startswith("Not exported: " + message)
    assert not (tmp_path / "export").exists() and dialog.task is None

    dialog.checkpoint_file.setFilePath(compressed)  # a good file: the dialog recovers
    assert dialog.model is not None and dialog.save_button.isEnabled()


def test_a_compressed_bsdm_denoiser_exports_and_checks(qtbot, samples, tmp_path):
    """A BSDM denoiser (pixel tokens and a 0-dim diffusion step as inputs) through the dialog: every format and
    the ONNX check, its statistical-offset layer quantised in the graph."""
    import onnx
    import scipy.io
    import torch

    from rslab.core.export import export_checkpoint
    from rslab.core.quantization import apply_bit_plan, calibrate_activations, quantisable_layers
    from rslab.models.bsdm import BSDMDenoiser

    cube = scipy.io.loadmat(str(samples / "abu-beach-2.mat"))["data"].astype("float32")
    pixels = torch.from_numpy(cube.reshape(-1, cube.shape[2]))
    x = (pixels - pixels.min()) / (pixels.max() - pixels.min())
    bands = x.shape[1]
    torch.manual_seed(0)
    model = BSDMDenoiser(bands).eval()
    apply_bit_plan(model, {name: {"weight": 6, "activation": 8} for name, _ in quantisable_layers(model)})
    calibrate_activations(model, [(x[::9], torch.tensor(500))])
    card = ModelCard(task="anomaly_detection", architecture="bsdm", arguments={"bands": bands},
                     bands=[f"band {i + 1}" for i in range(bands)])
    source = export_checkpoint(model, card, str(tmp_path / "bsdm_6bit.pt"))

    widget = ExportDialog(source)
    qtbot.addWidget(widget)
    widget.show()
    widget.folder.setFilePath(str(tmp_path / "export"))
    widget.name_edit.setText("bsdm_6bit")
    assert f"input 1×{bands} + a scalar" in widget.model_info.text() and widget.save_button.isEnabled()
    written, error = click_save(qtbot, widget)
    assert error == "" and sorted(written) == ["checkpoint", "onnx", "report", "torchscript"]
    graph = onnx.load(written["onnx"]).graph
    assert any(n.op_type == "Clip" and n.name.startswith("offset.0/input_") for n in graph.node)
    report = json.loads(open(written["report"]).read())
    assert "offset.0" in [layer["name"] for layer in report["layers"]]
    with qtbot.waitSignal(widget.checked, timeout=TIMEOUT_MS) as done:
        qtbot.mouseClick(widget.check_button, Qt.LeftButton)
    check, error = done.args
    assert error == "" and check["agrees_within_one_step"] == 1.0
    assert widget.check_label.text().startswith("Agrees layer by layer")
    if os.environ.get("RSLAB_SCREENSHOTS"):
        qtbot.wait(100)  # the layout takes the new label text on the next turn of the event loop
        widget.grab().save(os.path.join(os.environ["RSLAB_SCREENSHOTS"], "export_dialog_bsdm.png"))


def test_another_checkpoint_brings_its_own_record_and_names(qtbot, compressed, tmp_path):
    """Opened after a compression run (its report given), then switched to the shipped ResNet: the report and
    file names used to stay the run's ('ghost', 'resnet20_mixed_export') on the other model's files."""
    from rslab.core.weights import default_checkpoint

    widget = ExportDialog(compressed, report={"method": "pic_pq", "bops_ratio": 7.7})
    qtbot.addWidget(widget)
    assert widget.name_edit.text() == "resnet20_mixed_export"
    assert widget._report_extra()["compression"] == {"method": "pic_pq", "bops_ratio": 7.7}
    other = default_checkpoint("classification")  # the shipped, full-precision CIFAR ResNet-20
    widget.checkpoint_file.setFilePath(other)
    assert widget.name_edit.text() == "resnet20_cifar_subset_export"
    # a shipped checkpoint lies in the plugin folder, which a plugin update replaces: not there
    assert widget.folder.filePath() == str(profile_folder("exports"))
    assert not widget.folder.filePath().startswith(str(PLUGIN_DIR))
    assert "compression" not in widget._report_extra()  # the float ResNet has no compression record
    widget.name_edit.setText("mine")  # a name the user typed stays
    widget.checkpoint_file.setFilePath(compressed)
    assert widget.name_edit.text() == "mine" and widget._report_extra()["compression"]["method"] == "pic_pq"
    assert widget.folder.filePath() == os.path.dirname(compressed)  # a user's checkpoint: its own folder


def test_closing_the_dialog_cancels_a_running_export(qtbot, dialog, tmp_path):
    with qtbot.waitSignal(dialog.exported, timeout=TIMEOUT_MS) as done:
        qtbot.mouseClick(dialog.save_button, Qt.LeftButton)
        dialog.close()
    written, error = done.args
    assert written == {} and error.startswith("cancelled") and not (tmp_path / "export").exists()


def test_a_full_precision_model_checks_by_its_difference_and_long_names_are_refused(qtbot, tmp_path):
    from rslab.core.weights import default_checkpoint

    float_model = default_checkpoint("classification")
    widget = ExportDialog(float_model)
    qtbot.addWidget(widget)
    with qtbot.waitSignal(widget.checked, timeout=TIMEOUT_MS) as done:
        qtbot.mouseClick(widget.check_button, Qt.LeftButton)
    check, error = done.args
    assert error == "" and check["agrees_within_one_step"] != check["agrees_within_one_step"]  # nan: no step
    assert widget.check_label.text().startswith("Full precision (no quantised layer) over 4 sample inputs:\n"
                                                "max |ONNX - PyTorch| = ")
    widget.folder.setFilePath(str(tmp_path / "out"))
    widget.name_edit.setText("遥" * 82)  # 246 bytes: the .pt fits 255, .torchscript.pt does not
    written, error = click_save(qtbot, widget)
    assert written == {} and "file names hold at most 255" in error and not (tmp_path / "out").exists()
