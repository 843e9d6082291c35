"""The anomaly dock's list of a run's strongest anomalies (core/anomaly_peaks.py): rank, score and pixel.

Choosing a row (a click, the arrow keys, or a click on the row chosen
before, to go back to it after panning away) emits `peakChosen` with its
Peak; the dock then takes the map there and shows the pixel's spectrum.
"""
from __future__ import annotations

from typing import List, Optional, Sequence

from qgis.PyQt.QtCore import Qt, pyqtSignal
from qgis.PyQt.QtGui import QMouseEvent
from qgis.PyQt.QtWidgets import QAbstractItemView, QHeaderView, QTableWidget, QTableWidgetItem, QWidget

from ..core.anomaly_peaks import Peak

HEADERS = ("score", "row", "column")
VISIBLE_ROWS = 6  # the table's height in rows (it scrolls for the rest)
ROW_HEIGHT = 22


class PeakTable(QTableWidget):
    """Peaks strongest first; the row numbers are their ranks."""

    peakChosen = pyqtSignal(object)  # the Peak of the row chosen

    def __init__(self, parent: Optional[QWidget] = None) -> None:
        super().__init__(0, len(HEADERS), parent)
        self.peaks: List[Peak] = []
        self.setHorizontalHeaderLabels(HEADERS)
        self.horizontalHeaderItem(0).setToolTip("The method's anomaly score (higher = more anomalous)")
        self.setEditTriggers(QAbstractItemView.NoEditTriggers)
        self.setSelectionBehavior(QAbstractItemView.SelectRows)
        self.setSelectionMode(QAbstractItemView.SingleSelection)
        self.setWordWrap(False)
        self.verticalHeader().setDefaultSectionSize(ROW_HEIGHT)
        self.verticalHeader().setToolTip("Rank: 1 is the strongest anomaly")
        self.horizontalHeader().setSectionResizeMode(QHeaderView.Stretch)
        header_height = self.horizontalHeader().sizeHint().height()
        self.setFixedHeight(header_height + VISIBLE_ROWS * ROW_HEIGHT + 2 * self.frameWidth())
        self.setToolTip("Choose an anomaly to go to it on the map and see its spectrum")
        self._row_before_press = -1
        self.currentCellChanged.connect(self._row_changed)
        self.cellClicked.connect(self._clicked)

    def show_peaks(self, peaks: Sequence[Peak]) -> None:
        """List `peaks` (none: an empty table), nothing chosen."""
        self.blockSignals(True)
        try:
            self.setCurrentCell(-1, -1)
            self.clearSelection()
            self.peaks = list(peaks)
            self.setRowCount(len(self.peaks))
            for row, peak in enumerate(self.peaks):
                for col, text in enumerate((f"{peak.score:.4g}", str(peak.row), str(peak.col))):
                    item = QTableWidgetItem(text)
                    item.setTextAlignment(Qt.AlignRight | Qt.AlignVCenter)
                    self.setItem(row, col, item)
        finally:
            self.blockSignals(False)

    def mousePressEvent(self, event: QMouseEvent) -> None:  # noqa: N802 (Qt API)
        self._row_before_press = self.currentRow()
        super().mousePressEvent(event)

    def _row_changed(self, row: int, _col: int, previous: int, _previous_col: int) -> None:
        if row != previous and 0 <= row < len(self.peaks):
            self.peakChosen.emit(self.peaks[row])

    def _clicked(self, row: int, _col: int) -> None:
        """A click on the row already chosen (no change of row, so `_row_changed` said nothing)."""
        if row == self._row_before_press and 0 <= row < len(self.peaks):
            self.peakChosen.emit(self.peaks[row])
