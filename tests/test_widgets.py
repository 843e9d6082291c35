"""The small widget factories every dock and dialog shares (ui/widgets.py)."""
from __future__ import annotations

import pytest
from qgis.gui import QgsFileWidget

from rslab.ui.widgets import (
    SQUARE,
    TimedProgressBar,
    checkpoint_widget,
    decade_label,
    double_spin_box,
    folder_widget,
    legend_mark,
    result_plot,
    spin_box,
    time_left_text,
)


def test_decade_labels_read_as_powers_of_ten():
    assert decade_label(0) == "1"
    assert decade_label(9) == "10⁹"
    assert decade_label(-3) == "10⁻³"
    assert decade_label(-12) == "10⁻¹²"


def test_the_time_left_carries_on_the_rate_so_far():
    assert time_left_text(5.0, 50.0) == ""  # too early to say
    assert time_left_text(60.0, 1.0) == ""  # too little done to say
    assert time_left_text(30.0, 50.0) == "about 30 s left"
    assert time_left_text(12.0, 90.0) == "about 10 s left"
    assert time_left_text(60.0, 5.0) == "about 19 min left"
    assert time_left_text(600.0, 10.0) == "about 1 h 30 min left"
    assert time_left_text(600.0, 100.0) == ""


@pytest.fixture()
def timed_bar(qtbot, monkeypatch):
    """A TimedProgressBar on a clock the test moves: (bar, clock), clock[0] in seconds."""
    import rslab.ui.widgets as widgets

    clock = [1000.0]
    monkeypatch.setattr(widgets.time, "monotonic", lambda: clock[0])
    bar = TimedProgressBar(None)
    qtbot.addWidget(bar)
    return bar, clock


def test_a_long_run_shows_the_time_left_in_its_bar_until_it_ends(timed_bar):
    """A BSDM run on a large scene takes 20 minutes: the bar says about how long is left."""
    bar, clock = timed_bar
    bar.start()
    clock[0] += 120.0
    bar.show_percent(25.0)
    assert bar.value() == 25 and bar.text() == "25% · about 6 min left"
    bar.stop()
    bar.setValue(100)
    assert bar.text() == "100%"


def test_a_queued_run_says_so_and_its_wait_is_not_counted_in_the_time_left(timed_bar):
    bar, clock = timed_bar
    bar.start()
    bar.wait("Waiting for a free thread", "QGIS runs 2 background tasks at a time")
    assert bar.value() == 0 and bar.text() == "Waiting for a free thread"
    assert bar.toolTip() == "QGIS runs 2 background tasks at a time"
    clock[0] += 600.0  # queued for ten minutes
    bar.start()  # the task began
    clock[0] += 120.0
    bar.show_percent(25.0)
    assert bar.text() == "25% · about 6 min left"  # 18 min had the wait counted
    assert bar.toolTip() == ""
    bar.wait("Waiting for a free thread", "QGIS runs 2 background tasks at a time")
    bar.stop()  # cancelled while it waited
    assert bar.text() == "0%" and bar.toolTip() == ""


def test_legend_marks_carry_the_colour():
    assert legend_mark((214, 39, 40)) == "<span style='color:#d62728'>&#9644;</span>"
    assert legend_mark((0, 150, 200), SQUARE) == "<span style='color:#0096c8'>&#9632;</span>"


def test_a_double_spin_box_keeps_a_value_finer_than_qts_default_two_decimals(qtbot):
    spin = double_spin_box(None, 0.000001, 0.5, 5e-4, 6, 0.0001, "learning rate")
    qtbot.addWidget(spin)
    assert spin.value() == 5e-4  # Qt's default 2 decimals would round it to 0
    assert (spin.minimum(), spin.maximum(), spin.singleStep(), spin.toolTip()) == (0.000001, 0.5, 0.0001,
                                                                                   "learning rate")


def test_a_spin_box_clamps_to_its_range(qtbot):
    spin = spin_box(None, 1, 99, 3, 2, "inner window")
    qtbot.addWidget(spin)
    assert (spin.value(), spin.singleStep(), spin.toolTip()) == (3, 2, "inner window")
    spin.setValue(500)
    assert spin.value() == 99


def test_a_result_plot_ignores_the_mouse_and_grows(qtbot):
    plot = result_plot(None, "band", "value", 150)
    qtbot.addWidget(plot)
    assert plot.minimumHeight() == 150
    assert not any(plot.getViewBox().state["mouseEnabled"])
    assert plot.getAxis("bottom").labelText == "band"


def test_checkpoint_choosers_open_or_save_pt_files_and_folders_choose_folders(qtbot):
    opener, saver = checkpoint_widget(None), checkpoint_widget(None, save=True, placeholder="a new file")
    folder = folder_widget(None, "a new temporary folder per run")
    for widget in (opener, saver, folder):
        qtbot.addWidget(widget)
    assert (opener.storageMode(), opener.filter(), opener.confirmOverwrite()) == (
        QgsFileWidget.GetFile, "RS Lab checkpoints (*.pt)", False)
    assert (saver.storageMode(), saver.filter(), saver.confirmOverwrite()) == (
        QgsFileWidget.SaveFile, "RS Lab checkpoints (*.pt)", True)
    assert saver.lineEdit().placeholderText() == "a new file"
    assert folder.storageMode() == QgsFileWidget.GetDirectory
    assert folder.lineEdit().placeholderText() == "a new temporary folder per run"


def test_band_chooser_reads_bands_in_the_order_clicked_and_shows_it(qtbot, tmp_path):
    """Clicks in the popup list, as a person makes them: the order is kept, and the box shows it (QGIS writes
    its own text, in band order, after each click; the order showed only in the tooltip)."""
    import numpy as np
    import rasterio
    from qgis.core import QgsRasterLayer
    from qgis.PyQt.QtCore import Qt
    from qgis.PyQt.QtTest import QTest

    from rslab.ui.widgets import BandChooser

    path = str(tmp_path / "four.tif")
    with rasterio.open(path, "w", driver="GTiff", width=8, height=8, count=4, dtype="uint8") as dst:
        dst.write(np.zeros((4, 8, 8), np.uint8))
        dst.descriptions = ("Blue", "Green", "Red", "NIR")
    box = BandChooser(None, "tip")
    qtbot.addWidget(box)
    box.resize(600, 30)
    box.show()
    box.list_layer(QgsRasterLayer(path, "four"))
    names = [box.itemText(i) for i in range(4)]

    def click(row):
        box.showPopup()
        qtbot.waitUntil(box.view().isVisible)
        rect = box.view().visualRect(box.model().index(row, 0))
        QTest.mouseClick(box.view().viewport(), Qt.LeftButton, Qt.NoModifier, rect.center())
        qtbot.wait(20)

    for row in (2, 1, 0):  # red, green, blue
        click(row)
    box.hidePopup()
    qtbot.wait(20)
    assert box.chosen() == (3, 2, 1) and box.lineEdit().text() == ", ".join(names[2::-1])
    click(1)  # green off, and on again: it goes last
    click(1)
    box.hidePopup()
    qtbot.wait(20)
    assert box.chosen() == (3, 1, 2) and box.lineEdit().text() == ", ".join(names[b - 1] for b in (3, 1, 2))
    assert box.toolTip().startswith("Read in this order: " + names[2])
    box.deselectAllOptions()
    assert box.chosen() is None and box.lineEdit().text() == "all bands" and box.toolTip() == "tip"


def test_tab_moves_down_each_dock_as_its_widgets_are_laid_out(qtbot, iface):
    """Tab went After -> Reference -> Reference values -> Method in the change dock, and from the compression
    dock's output file back up to its PIC-PQ settings: Qt follows the order widgets are made in."""
    from qgis.PyQt.QtCore import Qt
    from qgis.PyQt.QtWidgets import QApplication

    from rslab.ui.anomaly_dock import AnomalyDock
    from rslab.ui.change_dock import ChangeDetectionDock
    from rslab.ui.compression_dock import CompressionDock

    for dock_class, first in ((ChangeDetectionDock, "before_combo"), (CompressionDock, "model_combo"),
                              (AnomalyDock, "layer_combo")):
        dock = dock_class(iface)
        qtbot.addWidget(dock)
        dock.resize(500, 1200)
        dock.show()
        dock.activateWindow()
        start = getattr(dock, first)
        start.setFocus()
        qtbot.waitUntil(lambda: QApplication.focusWidget() is not None)
        tops, seen = [], set()
        widget = QApplication.focusWidget()
        while widget is not None and dock.isAncestorOf(widget) and widget not in seen and len(seen) < 40:
            seen.add(widget)
            if widget.isVisible() and widget.isEnabled():
                tops.append(widget.mapTo(dock, widget.rect().topLeft()).y())
            qtbot.keyClick(widget, Qt.Key_Tab)
            widget = QApplication.focusWidget()
        dock.close()
        assert len(tops) > 5
        assert tops[:len(tops) - 3] == sorted(tops[:len(tops) - 3]), (dock_class.__name__, tops)
