"""Dock and dialog choices outlast the dock (ui/settings.py), in real QGIS settings, set through the widgets."""
from __future__ import annotations

import pytest
from qgis.core import QgsSettings
from qgis.PyQt.QtCore import Qt

from rslab.ui.anomaly_dock import AnomalyDock
from rslab.ui.change_dock import ChangeDetectionDock
from rslab.ui.compression_dock import CompressionDock
from rslab.ui.settings import remember
from rslab.ui.train_change_dialog import TrainChangeDialog


def _select(combo, data) -> None:
    combo.setCurrentIndex(combo.findData(data))


def _type(qtbot, spin, text: str) -> None:
    """Replace a spin box's text by typing, as a user does."""
    spin.selectAll()
    qtbot.keyClicks(spin, text)
    spin.interpretText()


def test_the_anomaly_dock_opens_on_the_last_choices(qtbot, iface, tmp_path):
    first = AnomalyDock(iface)
    qtbot.addWidget(first)
    _type(qtbot, first.iterations_spin, "40")  # while BSDM is chosen: lrx disables it
    _select(first.method_combo, "lrx")
    _type(qtbot, first.outer_spin, "21")
    qtbot.mouseClick(first.far_check, Qt.LeftButton, pos=first.far_check.rect().center())
    first.far_spin.setValue(0.02)
    first.output_dir.setFilePath(str(tmp_path))
    assert QgsSettings().value("rslab/anomaly/method") == "lrx"

    second = AnomalyDock(iface)
    qtbot.addWidget(second)
    assert second.method_combo.currentData() == "lrx"
    assert second.iterations_spin.value() == 40 and second.outer_spin.value() == 21
    assert second.far_check.isChecked() and second.far_spin.value() == pytest.approx(0.02)
    assert second.far_spin.isEnabled()  # the restored check enables its rate, as a click does
    assert second.output_dir.filePath() == str(tmp_path)
    assert second.params().outer_window == 21 and second.params().false_alarm_rate == pytest.approx(0.02)
    assert not second.iterations_spin.isEnabled()  # the restored method's widgets: lrx has no iterations


def test_values_a_widget_cannot_take_are_dropped(qtbot, iface):
    settings = QgsSettings()
    settings.setValue("rslab/anomaly/method", "a method that no longer exists")
    settings.setValue("rslab/anomaly/iterations", "many")
    settings.setValue("rslab/anomaly/outer_window", 10_000)  # above the spin box's maximum
    settings.setValue("rslab/anomaly/inner_window", 4)  # even: local RX refuses it
    settings.setValue("rslab/anomaly/mask", "perhaps")
    settings.setValue("rslab/anomaly/seed", 7)
    dock = AnomalyDock(iface)
    qtbot.addWidget(dock)
    assert dock.method_combo.currentData() == "bsdm_rx" and dock.iterations_spin.value() == 500
    assert dock.outer_spin.value() == 11 and dock.inner_spin.value() == 3 and not dock.far_check.isChecked()
    assert dock.seed_spin.value() == 7  # the good one is kept
    for key in ("method", "iterations", "outer_window", "inner_window", "mask"):
        assert QgsSettings().value(f"rslab/anomaly/{key}") is None, key


@pytest.mark.parametrize("make, changes, follows", [
    (lambda iface: ChangeDetectionDock(iface), {"method_combo": "cva", "threshold_spin": 0.35},
     lambda dock: not dock.model_combo.isEnabled()),  # CVA uses no model
    (lambda iface: CompressionDock(iface), {"method_combo": "ghost", "epochs_spin": 2.5, "bits_edit": "8,4,4",
                                            "generations_spin": 7, "ghost_bits_spin": 4},
     lambda dock: dock.ghost_box.isVisibleTo(dock) and not dock.pic_pq_box.isVisibleTo(dock)),
    (lambda iface: TrainChangeDialog(), {"iterations_spin": 300, "lr_spin": 0.001, "crop_spin": 128},
     lambda dialog: dialog.params().iterations == 300 and dialog.params().crop == 128),
])
def test_the_other_docks_and_the_train_dialog_remember_their_settings(qtbot, iface, make, changes, follows):
    first = make(iface)
    qtbot.addWidget(first)
    for name, value in changes.items():
        widget = getattr(first, name)
        if name.endswith("combo"):
            _select(widget, value)
        elif name.endswith("edit"):
            widget.clear()
            qtbot.keyClicks(widget, value)
        else:
            widget.setValue(value)
    second = make(iface)
    qtbot.addWidget(second)
    for name, value in changes.items():
        widget = getattr(second, name)
        got = widget.currentData() if name.endswith("combo") else widget.text() if name.endswith("edit") else widget.value()
        assert got == pytest.approx(value) if isinstance(value, float) else got == value, name
    assert follows(second)  # the widgets that depend on a restored choice follow it


def test_layer_choosers_are_not_remembered(qtbot):
    from qgis.gui import QgsMapLayerComboBox

    with pytest.raises(TypeError, match="QgsMapLayerComboBox"):
        remember("test", {"layer": QgsMapLayerComboBox()})


def test_the_train_dialog_remembers_its_width_preset_and_custom_widths(qtbot):
    first = TrainChangeDialog()
    qtbot.addWidget(first)
    _select(first.width_combo, "full")
    assert (first.base_spin.value(), first.channels_spin.value()) == (64, 64)
    second = TrainChangeDialog()
    qtbot.addWidget(second)
    assert second.width_combo.currentData() == "full" and not second.base_spin.isEnabled()
    assert (second.params().base, second.params().channels) == (64, 64)

    _select(second.width_combo, "custom")
    _type(qtbot, second.base_spin, "48")
    _type(qtbot, second.channels_spin, "16")
    third = TrainChangeDialog()
    qtbot.addWidget(third)
    assert third.width_combo.currentData() == "custom" and third.base_spin.isEnabled()
    assert (third.params().base, third.params().channels) == (48, 16)
