"""The anomaly dock's ROC plot: one curve per method run on an image, the mask's operating point, a legend below.

The ROC is the one the core's metrics come from (core/anomaly_metrics.anomaly_roc,
on the reference as resampled onto the image), thinned in the worker to
ROC_POINTS log-spaced false-alarm rates (thinned_roc). The dock decides which
curves belong to the image picked; this widget draws them.
"""
from __future__ import annotations

import html
import math
from dataclasses import dataclass
from typing import Dict, Optional, Tuple

import numpy as np
import pyqtgraph as pg
from qgis.PyQt.QtWidgets import QWidget

from ..core.anomaly_params import METHOD_LABELS
from ..core.metrics import Roc
from .widgets import decade_label, legend_below, legend_mark, result_plot

METHOD_PENS = {"bsdm_rx": (214, 39, 40), "rx": (31, 119, 180), "lrx": (44, 160, 44)}
CIRCLE = "&#9675;"  # the mask's operating point on the ROC is a ring in its method's colour
PLOT_HEIGHT = 200  # the ROC and spectrum plots' least height in pixels
EMPTY_ROC_FLOOR = 1e-4  # the false-alarm axis before a run: 1 / the pixels of a 100 x 100 scene
ROC_POINTS = 600  # points kept per ROC curve (enough for a smooth line, few for pyqtgraph)


@dataclass(frozen=True)
class RocCurve:
    """Detection rate against false-alarm rate, thinned to at most ROC_POINTS points with false alarms > 0."""

    false_alarm: np.ndarray
    detection: np.ndarray
    auc: float
    anomaly_pixels: int
    background_pixels: int


@dataclass(frozen=True)
class MaskPoint:
    """Where a mask lies on its run's ROC: its measured false-alarm and detection rates, the rate asked, the method."""

    false_alarm: float
    detection: float
    rate: float
    method: str


def thinned_roc(roc: Roc) -> RocCurve:
    """The core's exact ROC thinned for the plot (every threshold of a large scene is too many points)."""
    pf, pd = _thin(roc.false_alarm, roc.detection, 1.0 / roc.negatives)
    return RocCurve(pf, pd, roc.auc, roc.positives, roc.negatives)


def _thin(false_alarm: np.ndarray, detection: np.ndarray, smallest: float) -> Tuple[np.ndarray, np.ndarray]:
    """The best detection rate reached at ROC_POINTS log-spaced false-alarm rates (a log axis cannot show 0)."""
    targets = np.geomspace(smallest, 1.0, ROC_POINTS)
    last = np.searchsorted(false_alarm, targets, side="right") - 1  # the last threshold with PF <= target
    return targets, detection[last]


class RocPlot(QWidget):
    """Detection against false-alarm rate (log axis) for the runs given, with their AUCs in a legend under the plot.

    One curve per method, made once and only hidden: pyqtgraph under QGIS's
    PyQt fails when items are removed. The legend is a label under the plot:
    inside the plot it would hide part of some curve wherever it sat.
    """

    def __init__(self, parent: Optional[QWidget] = None) -> None:
        super().__init__(parent)
        self.plot = result_plot(self, "false-alarm rate", "detection rate", PLOT_HEIGHT)
        self.plot.setLogMode(x=True, y=False)
        self.plot.setYRange(-0.1, 1.1, padding=0)  # room for the 0 and 1 tick labels (see show_runs)
        self.curves: Dict[str, pg.PlotDataItem] = {}
        for method, colour in METHOD_PENS.items():
            curve = pg.PlotDataItem(pen=pg.mkPen(colour, width=2))
            curve.setVisible(False)
            self.plot.addItem(curve)
            self.curves[method] = curve
        # the latest mask's operating point on its run's curve (a PlotDataItem: it follows the log axis)
        self.mask_point = pg.PlotDataItem(pen=None, symbol="o", symbolSize=10, symbolBrush=pg.mkBrush(255, 255, 255))
        self.mask_point.setVisible(False)
        self.plot.addItem(self.mask_point)
        self.legend = legend_below(self, self.plot)
        self.show_runs({})  # decade ticks on the empty plot, not pyqtgraph's bare 2 3 4 ... 9

    def show_runs(self, runs: Dict[str, RocCurve], mask: Optional[MaskPoint] = None) -> None:
        """Draw `runs` (method -> curve; an empty dict clears the plot) and `mask`'s point on its curve."""
        entries = []
        smallest = 1.0 if runs else EMPTY_ROC_FLOOR
        for method, curve in self.curves.items():
            roc = runs.get(method)
            curve.setVisible(roc is not None)
            if roc is None:
                curve.setData([], [])
                continue
            curve.setData(roc.false_alarm, roc.detection)
            entries.append(f"{legend_mark(METHOD_PENS[method])}&nbsp;"
                           f"{html.escape(METHOD_LABELS[method]).replace(' ', '&nbsp;')}&nbsp;AUC&nbsp;"
                           f"<b>{roc.auc:.4f}</b>")
            smallest = min(smallest, 1.0 / roc.background_pixels)
        self.mask_point.setVisible(mask is not None)
        if mask is None:
            self.mask_point.setData([], [])
        else:  # a false-alarm rate of 0 sits at the axis' left end (a log axis cannot show 0)
            self.mask_point.setData([max(mask.false_alarm, smallest)], [mask.detection],
                                    symbolPen=pg.mkPen(METHOD_PENS[mask.method], width=2.5))
            entries.append(f"{legend_mark(METHOD_PENS[mask.method], CIRCLE)}&nbsp;mask&nbsp;at&nbsp;{mask.rate:g}")
        self.legend.setText("&nbsp;&nbsp;&nbsp; ".join(entries))
        first = math.floor(math.log10(smallest))
        self.plot.getAxis("bottom").setTicks([[(k, decade_label(k)) for k in range(first, 1)]])
        # margins in axis units, not a share of the range: pyqtgraph leaves out an end label that would
        # stick out of its axis (the first decade and the 0 and 1 of a short plot were not drawn)
        self.plot.setXRange(min(first, math.log10(smallest)) - 0.35, 0.2, padding=0)
        self.plot.setYRange(-0.1, 1.1, padding=0)

    def visible_curves(self) -> Dict[str, pg.PlotDataItem]:
        """The ROC curves shown now, by method."""
        return {method: curve for method, curve in self.curves.items() if curve.isVisible()}
