"""Small widget factories the docks and dialogs share."""
from __future__ import annotations

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
