"""The compression dock's figures of a model before and after: the totals grid, the per-layer table, the BOPs chart.

The dock decides what to show (a checkpoint's own figures, what its card
records of its compression, or a run's before and after); these widgets lay
them out. Reports are core/bops.count_bops(...).to_dict() dicts.
"""
from __future__ import annotations

import math
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import pyqtgraph as pg
from qgis.PyQt.QtCore import Qt
from qgis.PyQt.QtWidgets import (
    QAbstractItemView,
    QGridLayout,
    QGroupBox,
    QHeaderView,
    QLabel,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from .widgets import SQUARE, decade_label, legend_mark, result_plot

BEFORE_PEN = (120, 130, 150)
AFTER_PEN = (230, 120, 20)
CHART_PENS = {"before": BEFORE_PEN, "after": AFTER_PEN}  # the per-layer chart's series
DASH = "—"
# readout rows: key -> label (the metric row's label follows the checkpoint's task)
READOUT_ROWS = (("bops", "BOPs"), ("params", "Parameters"), ("size", "Size at its bits"), ("metric", "Score"))
READOUT_TIPS = {
    "bops": "Bit operations of one inference: MACs x weight bits x activation bits, summed over the layers",
    "size": "The weights at their assigned bits (and what pruning removed): what a runtime that packs bits would "
            "store. The RS Lab checkpoint and ONNX files Export writes keep each quantised weight in a byte "
            "(int8), so they are larger: about 4x smaller than full precision, more where pruning removed weights, "
            "less where layers stay float. The TorchScript file keeps float32 weights behind fake quantisers",
}
READOUT_COLUMNS = ("Before", "After", "Change")
NAME_COLUMN_MIN = 110  # px of the per-layer table's name column ('layer.8.conv2', 'encoder.stem.0.0')
TABLE_HEADERS = ("Layer", "Channels\nkept", "W\nbits", "A\nbits", "BOPs\nbefore→after")
TABLE_TIPS = ("Conv or linear layer (hover a name for its shape and MACs)",
              "Output channels kept by pruning / before (one number before a run)",
              "Weight bits of the layer (32 = full precision)",
              "Activation bits: bits of the layer's input (32 = full precision)",
              "Bit operations of the layer, MACs x weight bits x activation bits, before → after")


def si(value: float, unit: str = "") -> str:
    """1234567 -> '1.23 M'; three significant digits with k, M, G, T (a thin space before the prefix)."""
    value = float(value)
    for factor, prefix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= factor:
            return f"{value / factor:.3g}\u2009{prefix}{unit}"
    return f"{value:.3g}\u2009{unit}".rstrip("\u2009")


def size_text(mb: float) -> str:
    """Model storage: '14.4 MB', or '44.7 kB' below one megabyte."""
    return f"{mb:.3g} MB" if mb >= 1 else f"{mb * 1000:.3g} kB"


class ReadoutGrid(QGroupBox):
    """'Before and after': BOPs, parameters, size and score in three columns, before, after and the change."""

    def __init__(self, parent: Optional[QWidget] = None) -> None:
        super().__init__("Before and after", parent)
        grid = QGridLayout(self)
        grid.setHorizontalSpacing(12)
        self.values: Dict[Tuple[str, str], QLabel] = {}  # (row key, column) -> its label
        self.names: Dict[str, QLabel] = {}  # row key -> the row's name
        for col, title in enumerate(READOUT_COLUMNS, start=1):
            header = QLabel(f"<b>{title}</b>", self)
            header.setAlignment(Qt.AlignRight | Qt.AlignVCenter)
            grid.addWidget(header, 0, col)
        for row, (key, label) in enumerate(READOUT_ROWS, start=1):
            name = QLabel(label, self)
            name.setToolTip(READOUT_TIPS.get(key, ""))
            self.names[key] = name
            grid.addWidget(name, row, 0)
            for col, column in enumerate(READOUT_COLUMNS, start=1):
                value = QLabel(DASH, self)
                value.setAlignment(Qt.AlignRight | Qt.AlignVCenter)
                value.setTextInteractionFlags(Qt.TextSelectableByMouse)
                self.values[(key, column.lower())] = value
                grid.addWidget(value, row, col)
        grid.setColumnStretch(0, 1)

    def set(self, key: str, column: str, text: str) -> None:
        label = self.values[(key, column)]
        label.setText(text)
        label.setMinimumWidth(label.sizeHint().width())  # a narrow dock widens to it, not cut it ('25.5x s')

    def set_metric_name(self, text: str) -> None:
        self.names["metric"].setText(text)

    def fill_totals(self, column: str, report: Mapping[str, Any]) -> None:
        """BOPs, parameters and size of a report into `column` ('before' or 'after')."""
        self.set("bops", column, si(report["total_bops"]))
        self.set("params", column, si(report["params"]))
        self.set("size", column, size_text(report["size_mb"]))

    def clear(self) -> None:
        for label in self.values.values():
            label.setText(DASH)
        self.set_metric_name("Score")

    def clear_after(self) -> None:
        """The after and change columns only (a run started: the before column stands)."""
        for (_, column), label in self.values.items():
            if column != "before":
                label.setText(DASH)


class LayerTable(QTableWidget):
    """One row per conv/linear layer: its name, channels kept, weight and activation bits, BOPs before → after."""

    def __init__(self, parent: Optional[QWidget] = None) -> None:
        super().__init__(0, len(TABLE_HEADERS), parent)
        self.setHorizontalHeaderLabels(TABLE_HEADERS)
        for col, tip in enumerate(TABLE_TIPS):
            self.horizontalHeaderItem(col).setToolTip(tip)
        self.setTextElideMode(Qt.ElideLeft)  # the end of a module path names the layer best
        self.setWordWrap(False)
        self.setEditTriggers(QAbstractItemView.NoEditTriggers)
        self.setSelectionBehavior(QAbstractItemView.SelectRows)
        self.verticalHeader().setDefaultSectionSize(22)
        self.verticalHeader().setToolTip("Row number: the layer's position in the BOPs chart")
        header = self.horizontalHeader()
        header.setSectionResizeMode(0, QHeaderView.Stretch)  # the names take what the figures leave (elided)
        for col in range(1, len(TABLE_HEADERS)):
            header.setSectionResizeMode(col, QHeaderView.ResizeToContents)
        self.keep_names_readable()  # also while empty: its 'Layer' header read '.aye' until a checkpoint was read

    def fill(self, before: Optional[Mapping[str, Any]], after: Optional[Mapping[str, Any]]) -> List[Dict[str, Any]]:
        """The rows of `before` (else `after`); with both reports, kept channels, bits and BOPs before → after.
        Returns the layers the rows show, in order."""
        main = before or after or {"layers": []}
        after_by_name = {layer["name"]: layer for layer in (after or {}).get("layers", [])}
        rows = main["layers"]
        self.setRowCount(len(rows))
        for row, layer in enumerate(rows):
            done = after_by_name.get(layer["name"]) if before is not None and after is not None else None
            shown = done or layer
            if done is not None:
                channels = f"{done['out_channels']} / {layer['out_channels']}"
                bops = f"{si(layer['bops'])}→{si(done['bops'])}"
            elif before is not None and after is not None:  # the layer is gone from the compressed model
                channels, bops = f"0 / {layer['out_channels']}", f"{si(layer['bops'])}→0"
            else:
                channels, bops = str(layer["out_channels"]), si(layer["bops"])
            cells = (layer["name"], channels, str(shown["weight_bits"]), str(shown["activation_bits"]), bops)
            for col, text in enumerate(cells):
                item = QTableWidgetItem(text)
                if col:
                    item.setTextAlignment(Qt.AlignRight | Qt.AlignVCenter)
                if col == 0:
                    item.setToolTip(f"{layer['name']}: {layer['kind']}, {layer['in_channels']} → "
                                    f"{layer['out_channels']} channels, "
                                    f"{si(layer['macs'])} MACs")
                self.setItem(row, col, item)
        self.keep_names_readable()
        return rows

    def keep_names_readable(self) -> None:
        """The table asks for room for NAME_COLUMN_MIN px of layer names beside its figures: the names took what
        the figures left, 36 px at a usual dock width ('…0', '…1')."""
        figures = sum(max(self.sizeHintForColumn(col), self.horizontalHeader().sectionSizeHint(col))
                      for col in range(1, self.columnCount()))
        chrome = self.verticalHeader().sizeHint().width() + self.frameWidth() * 2 + \
            self.verticalScrollBar().sizeHint().width()
        self.setMinimumWidth(figures + NAME_COLUMN_MIN + chrome)


class BopsChart(QWidget):
    """The per-layer BOPs bars (before and after side by side, log scale), made once and updated."""

    def __init__(self, parent: Optional[QWidget] = None) -> None:
        super().__init__(parent)
        self.plot = result_plot(self, "layer (row of the Layers table)", "BOPs (log scale)", 180, grid_x=False)
        self.plot.hideButtons()
        self._set_legend(("before", "after"))
        self.bars: Dict[str, pg.BarGraphItem] = {}
        for name, colour in CHART_PENS.items():
            bars = pg.BarGraphItem(x=[], height=[], width=0.4, brush=pg.mkBrush(*colour),
                                   pen=pg.mkPen(*colour), name=name)
            self.plot.addItem(bars)
            self.bars[name] = bars
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.plot)

    def _set_legend(self, shown: Sequence[str]) -> None:
        """The legend is the title (a legend inside the plot would hide the tallest bars), naming the series drawn
        (a compressed checkpoint has no per-layer figures before: 'before' was listed and never drawn)."""
        self.plot.setTitle(" &nbsp; ".join(f"{legend_mark(CHART_PENS[name], SQUARE)} {name}" for name in shown),
                           size="9pt", color="#333")

    def clear(self) -> None:
        for bars in self.bars.values():
            bars.setOpts(x=[], height=[], y0=0)

    def show_bops(self, before: Optional[Sequence[float]], after: Optional[Sequence[float]]) -> None:
        """log10 BOPs per layer, before (left) and after (right) of each row's position."""
        self._set_legend([name for name, series in (("before", before), ("after", after)) if series is not None]
                         or ("before", "after"))
        values = [v for series in (before, after) if series for v in series if v > 0]
        if not values:
            self.clear()
            return
        low = math.floor(math.log10(min(values))) - 0.5
        high = math.log10(max(values))
        both = before is not None and after is not None
        for name, series, shift in (("before", before, -0.2 if both else 0.0), ("after", after, 0.2 if both else 0.0)):
            if series is None:
                self.bars[name].setOpts(x=[], height=[], y0=low)
                continue
            x = np.arange(1, len(series) + 1) + shift
            heights = np.array([math.log10(v) - low if v > 0 else 0.0 for v in series])
            self.bars[name].setOpts(x=x, height=heights, y0=low, width=0.4 if both else 0.6)
        count = len(before if before is not None else after)
        axis = self.plot.getAxis("left")
        axis.setTicks([[(k, decade_label(k)) for k in range(math.ceil(low), math.floor(high) + 1)]])
        step = max(1, math.ceil(count / 12))
        self.plot.getAxis("bottom").setTicks([[(i, str(i)) for i in range(1, count + 1, step)]])
        self.plot.setXRange(0.4, count + 0.6, padding=0)
        self.plot.setYRange(low, high + 0.1, padding=0)
