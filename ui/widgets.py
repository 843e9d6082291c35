"""Small widget factories the docks and dialogs share."""
from __future__ import annotations

from typing import Tuple

from qgis.PyQt.QtCore import Qt
from qgis.PyQt.QtWidgets import QFrame, QLabel, QScrollArea, QVBoxLayout, QWidget


def message_label(parent: QWidget) -> QLabel:
    """A wrapping, selectable plain-text label (error texts and paths may hold '<')."""
    label = QLabel(parent)
    label.setWordWrap(True)
    label.setTextFormat(Qt.PlainText)
    label.setTextInteractionFlags(Qt.TextSelectableByMouse)
    return label


def scroll_body(owner: QWidget, body: QWidget) -> None:
    """Make `body` the scrollable content of `owner`, so a tall dock stays usable on a short screen."""
    scroll = QScrollArea(owner)
    scroll.setWidgetResizable(True)
    scroll.setFrameShape(QFrame.NoFrame)
    scroll.setWidget(body)
    # a scroll area's own minimum width is tiny: without this, a narrow dock area clips the form's right edge
    scroll.setMinimumWidth(body.minimumSizeHint().width() + scroll.verticalScrollBar().sizeHint().width() + 4)
    outer = QVBoxLayout(owner)
    outer.setContentsMargins(0, 0, 0, 0)
    outer.addWidget(scroll)


def live_curve(parent: QWidget, title: str, x_label: str, y_label: str, colour: Tuple[int, int, int],
               symbol_size: int = 5):
    """(plot, curve): a white pyqtgraph plot with one line-and-dots curve for live training figures."""
    import pyqtgraph as pg

    plot = pg.PlotWidget(parent, background="w")
    plot.setTitle(title, size="9pt")
    plot.setLabel("bottom", x_label)
    plot.setLabel("left", y_label)
    plot.showGrid(x=True, y=True, alpha=0.2)
    curve = plot.plot([], [], pen=pg.mkPen(colour, width=2), symbol="o", symbolSize=symbol_size,
                      symbolBrush=pg.mkBrush(*colour))
    # pyqtgraph 0.13 draws wide pens as segments and fails on a one-point curve (the first epoch)
    curve.curve.setSegmentedLineMode("off")
    return plot, curve
