"""The anomaly dock's spectrum plot: a picked pixel's spectrum beside the scene's mean spectrum, a legend below.

The dock reads the values (core/spectra.py) and names the pixel; this widget draws them.
"""
from __future__ import annotations

import html
from typing import Optional

import numpy as np
import pyqtgraph as pg
from qgis.PyQt.QtCore import Qt
from qgis.PyQt.QtWidgets import QWidget

from .roc_plot import PLOT_HEIGHT
from .widgets import legend_below, legend_mark, result_plot

PIXEL_PEN = (0, 150, 200)  # the anomaly mask's colour family (resources/styles/anomaly_mask.qml is #00e5ff)
MEAN_PEN = (110, 110, 110)
PICK_HINT = "Pick pixel, then click the image on the map to see its spectrum."


class SpectrumPlot(QWidget):
    """One pixel's values per band (or wavelength) and the scene mean, dashed; gaps where a band is NaN."""

    def __init__(self, parent: Optional[QWidget] = None) -> None:
        super().__init__(parent)
        self.plot = result_plot(self, "band", "value", PLOT_HEIGHT)
        # connect="finite": a gap at NaN (the bands an ENVI header flags bad) instead of a line across it
        self.mean_curve = pg.PlotDataItem(pen=pg.mkPen(MEAN_PEN, width=2, style=Qt.DashLine), connect="finite")
        self.pixel_curve = pg.PlotDataItem(pen=pg.mkPen(PIXEL_PEN, width=2), connect="finite")
        for curve in (self.mean_curve, self.pixel_curve):
            self.plot.addItem(curve)
        self.legend = legend_below(self, self.plot, PICK_HINT)

    def show_pixel(self, x: np.ndarray, spectrum: np.ndarray, axis_title: str, pixel: str) -> None:
        """Draw `spectrum` against `x` (titled `axis_title`), named `pixel` in the legend beside the scene mean."""
        self.plot.setLabel("bottom", axis_title)
        self.pixel_curve.setData(x, spectrum)
        self.legend.setText(f"{legend_mark(PIXEL_PEN)}&nbsp;{html.escape(pixel)}&nbsp;&nbsp;&nbsp; "
                            f"{legend_mark(MEAN_PEN)}&nbsp;scene&nbsp;mean")

    def show_mean(self, mean: Optional[np.ndarray]) -> bool:
        """Draw the scene mean against the pixel's x values; False (nothing changed) when `mean` is None or has
        another band count than the pixel shown."""
        x, _ = self.pixel_curve.getData()
        if mean is None or x is None or len(x) != len(mean):
            return False
        self.mean_curve.setData(x, mean)
        return True

    def clear_mean(self) -> None:
        self.mean_curve.setData([], [])

    def clear(self) -> None:
        """No pixel, no mean, no legend (a nodata pick: neither the pixel picked before nor another image's mean
        stands under the status that says so)."""
        self.pixel_curve.setData([], [])
        self.mean_curve.setData([], [])
        self.legend.setText("")
