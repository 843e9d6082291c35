"""Small widget factories the docks and dialogs share."""
from __future__ import annotations

import time
from typing import TYPE_CHECKING, List, Optional, Sequence, Tuple

from qgis.core import QgsFieldProxyModel, QgsMapLayer, QgsMapLayerProxyModel, QgsProject, QgsRasterLayer
from qgis.gui import QgsCheckableComboBox, QgsFieldComboBox, QgsFileWidget, QgsMapLayerComboBox
from qgis.PyQt import sip
from qgis.PyQt.QtCore import QEvent, QObject, QSignalBlocker, Qt, QTimer
from qgis.PyQt.QtGui import QResizeEvent, QValidator
from qgis.PyQt.QtWidgets import (
    QComboBox,
    QDoubleSpinBox,
    QFrame,
    QLabel,
    QProgressBar,
    QScrollArea,
    QSizePolicy,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

if TYPE_CHECKING:  # imported where used: importing this module does not load pyqtgraph
    import pyqtgraph as pg

from ..core.change_reference import CODING_LABELS, CODINGS

SUPERSCRIPTS = str.maketrans("0123456789", "⁰¹²³⁴⁵⁶⁷⁸⁹")
CHECKPOINT_FILTER = "RS Lab checkpoints (*.pt)"
BAR, SQUARE = "&#9644;", "&#9632;"  # legend glyphs: a line's colour, a filled area's colour


def message_label(parent: QWidget) -> QLabel:
    """A wrapping, selectable plain-text label (error texts and paths may hold '<')."""
    label = QLabel(parent)
    label.setWordWrap(True)
    label.setTextFormat(Qt.PlainText)
    label.setTextInteractionFlags(Qt.TextSelectableByMouse)
    return label


def folder_widget(parent: QWidget, placeholder: str = "") -> QgsFileWidget:
    """A folder chooser (line edit and browse button) showing `placeholder` while empty."""
    widget = QgsFileWidget(parent)
    widget.setStorageMode(QgsFileWidget.GetDirectory)
    widget.lineEdit().setPlaceholderText(placeholder)
    return widget


def checkpoint_widget(parent: QWidget, save: bool = False, placeholder: str = "") -> QgsFileWidget:
    """A chooser of RS Lab checkpoint files (*.pt): one to open, or with `save` one to write (asks before
    overwriting a file picked in the browser)."""
    widget = QgsFileWidget(parent)
    widget.setStorageMode(QgsFileWidget.SaveFile if save else QgsFileWidget.GetFile)
    widget.setFilter(CHECKPOINT_FILTER)
    widget.setConfirmOverwrite(save)
    widget.lineEdit().setPlaceholderText(placeholder)
    return widget


def coding_combo(parent: QWidget, tip: str) -> QComboBox:
    """A choice of change-reference coding (core/change_reference.py): short item texts, the full meaning as
    each item's tooltip; the item data is the coding's name."""
    combo = QComboBox(parent)
    for coding, short in zip(CODINGS, CODING_LABELS):
        combo.addItem(short, coding)
        combo.setItemData(combo.count() - 1, CODINGS[coding], Qt.ToolTipRole)
    combo.setSizeAdjustPolicy(QComboBox.AdjustToMinimumContentsLengthWithIcon)
    combo.setToolTip(tip)
    return combo


def raster_combo(parent: QWidget, allow_empty: bool = False) -> QgsMapLayerComboBox:
    """A chooser of the project's raster layers (with an empty entry, selected, when `allow_empty`)."""
    combo = QgsMapLayerComboBox(parent)
    combo.setFilters(QgsMapLayerProxyModel.RasterLayer)
    combo.setAllowEmptyLayer(allow_empty)
    if allow_empty:
        combo.setLayer(None)
    return combo


class MultibandRasterCombo(QgsMapLayerComboBox):
    """A chooser of the project's rasters of two or more bands (hyperspectral images).

    After a saved project was reopened, a plain raster chooser picked its first
    raster, a result's one-band mask, which detection then refused. One-band
    layers are left out once the event loop has turned after they were added or
    repaired: a project of a thousand layers is read as a thousand additions, and
    filtering the whole list at each one made opening it 2.5 times slower. A
    layer that could not be read is listed (it has no bands to count yet)."""

    def __init__(self, parent: QWidget) -> None:
        super().__init__(parent)
        self.setFilters(QgsMapLayerProxyModel.RasterLayer)
        self._refilter = QTimer(self)
        self._refilter.setSingleShot(True)
        self._refilter.timeout.connect(self._leave_out_single_bands)
        project = QgsProject.instance()
        project.layersAdded.connect(self._watch)
        project.layersRemoved.connect(self._schedule)
        self._watch(list(project.mapLayers().values()))
        self._leave_out_single_bands()

    def _schedule(self, *_: object) -> None:
        if not sip.isdeleted(self):
            self._refilter.start(0)

    def _watch(self, layers: List[QgsMapLayer]) -> None:
        if sip.isdeleted(self):
            return
        for layer in layers:
            if isinstance(layer, QgsRasterLayer):
                layer.dataSourceChanged.connect(self._schedule)  # A broken path repaired.
        self._schedule()

    def _leave_out_single_bands(self) -> None:
        single = [layer for layer in QgsProject.instance().mapLayers().values()
                  if isinstance(layer, QgsRasterLayer) and layer.isValid() and layer.bandCount() < 2]
        current = self.currentLayer()
        with QSignalBlocker(self):
            self.setExceptedLayerList(single)
            if current is None or current in single:  # The first multiband layer, not the first raster.
                self.setLayer(self.layer(0) if self.count() else None)
        # Leaving rows out can move the current row without a signal; whatever follows the choice (the true
        # colour button, the ROC, the form watch) hears of the new layer once.
        now = self.currentLayer()
        if (now.id() if now else None) != (current.id() if current else None):
            self.layerChanged.emit(now)


def label_layer_combo(parent: QWidget, tip: str) -> QgsMapLayerComboBox:
    """A chooser of change labels: raster layers or polygon layers (with an empty entry, selected)."""
    combo = raster_combo(parent, allow_empty=True)
    combo.setFilters(QgsMapLayerProxyModel.RasterLayer | QgsMapLayerProxyModel.PolygonLayer)
    combo.setToolTip(tip)
    return combo


def label_field_combo(parent: QWidget) -> QgsFieldComboBox:
    """The numeric field of label polygons that holds 1 (no change) or 2 (change)."""
    combo = QgsFieldComboBox(parent)
    combo.setFilters(QgsFieldProxyModel.Numeric)
    combo.setToolTip("The polygons' field holding 1 (no change) or 2 (change); polygons are burnt onto the before "
                     "layer's grid and read as partial labels")
    return combo


def follow_label_layer(layer: Optional[QgsMapLayer], field: QgsFieldComboBox, coding: QComboBox) -> bool:
    """Set `field` and `coding` for a label layer: polygons offer their numeric fields (preferring one named
    'label') and impose the partial coding (0 is where no polygon was drawn); leaving polygons for a raster
    gives back the coding chosen before. True for polygons."""
    polygons = layer is not None and layer.type() == QgsMapLayer.VectorLayer
    field.setLayer(layer if polygons else None)
    field.setEnabled(polygons)
    imposed_over = coding.property("rslab_coding_before_polygons")
    if polygons:
        # 'label', else the first field that is not the layer's key: a GeoPackage's 'fid' is listed first, but
        # OGR, which burns the polygons, has no such field
        keys = {layer.fields().at(i).name() for i in layer.primaryKeyAttributes()}
        names = [field.itemText(i) for i in range(field.count())]
        usable = [name for name in names if name not in keys]
        field.setField("label" if "label" in names else (usable or names or [""])[0])
        if imposed_over is None:
            coding.setProperty("rslab_coding_before_polygons", coding.currentData())
        coding.setCurrentIndex(coding.findData("partial"))
    elif imposed_over is not None:
        coding.setCurrentIndex(coding.findData(imposed_over))
        coding.setProperty("rslab_coding_before_polygons", None)
    return polygons


class BandChooser(QgsCheckableComboBox):
    """A checkable list of a raster's bands; none checked means all bands.

    The bands are read in the order they were checked (a model trained on red, green, blue reads a
    blue-green-red file as bands 3, 2, 1), or in the order `check(bands)` gave; the box shows that order.
    """

    def __init__(self, parent: QWidget, tip: str) -> None:
        super().__init__(parent)
        self.setDefaultText("all bands")
        self._tip = tip
        self.setToolTip(tip)
        self.setSizeAdjustPolicy(QComboBox.AdjustToMinimumContentsLengthWithIcon)
        self._order: List[int] = []
        self.model().dataChanged.connect(self._follow_checks)  # 3.22: no checkedItemsChanged on setItemCheckState
        # a click in the list: QGIS writes its own text (in band order) after the slots above have run, so the
        # order is shown again once the event loop is back (a child timer: none fires after the box is gone)
        self._redraw = QTimer(self)
        self._redraw.setSingleShot(True)
        self._redraw.setInterval(0)
        self._redraw.timeout.connect(self._show_order)

    def list_layer(self, layer: Optional[QgsRasterLayer]) -> None:
        """Offer `layer`'s bands (none checked); no items without a valid layer."""
        self.clear()
        self._order = []
        if layer is not None and layer.isValid():
            for band in range(1, layer.bandCount() + 1):
                self.addItemWithCheckState(layer.bandName(band), Qt.Unchecked, band)
        self._show_order()

    def check(self, bands: Sequence[int]) -> None:
        """Check exactly `bands` (1-based), to be read in this order."""
        wanted = set(bands)
        for index in range(self.count()):
            self.setItemCheckState(index, Qt.Checked if self.itemData(index) in wanted else Qt.Unchecked)
        self._order = [b for b in bands if b in self._checked()]
        self._show_order()

    def chosen(self) -> Optional[Tuple[int, ...]]:
        """The checked bands in their reading order; None when none is checked (all bands)."""
        checked = self._checked()
        return tuple([b for b in self._order if b in checked] + sorted(checked - set(self._order))) or None

    def _checked(self) -> set:
        return {int(band) for band in self.checkedItemsData()}

    def _follow_checks(self, *_: object) -> None:
        """A band checked now goes last; one unchecked leaves the order."""
        checked = self._checked()
        kept = [b for b in self._order if b in checked]
        self._order = kept + sorted(checked - set(kept))
        self._show_order()
        self._redraw.start()

    def _show_order(self) -> None:
        """The box's text lists the checked bands in reading order (QGIS's own lists them in band order)."""
        bands = self.chosen()
        if not bands:
            self.setToolTip(self._tip)
            return
        names = {int(self.itemData(i)): self.itemText(i) for i in range(self.count())}
        text = ", ".join(names.get(b, str(b)) for b in bands)
        self.lineEdit().setText(text)
        self.lineEdit().setCursorPosition(0)  # the first band read shows when the list is longer than the box
        self.setToolTip(f"Read in this order: {text}\n\n{self._tip}")

    def resizeEvent(self, event: QResizeEvent) -> None:  # noqa: N802 (Qt API): QGIS redraws its own text on resize
        super().resizeEvent(event)
        self._show_order()


def spin_box(parent: QWidget, low: int, high: int, value: int, step: int = 1, tip: str = "") -> QSpinBox:
    spin = QSpinBox(parent)
    spin.setRange(low, high)
    spin.setSingleStep(step)
    spin.setValue(value)
    spin.setToolTip(tip)
    return spin


class OddSpinBox(QSpinBox):
    """A spin box of odd values (window sizes: a centre pixel and as many on each side). It steps by 2 from an
    odd value, and a typed even value is not taken as is: when editing ends it becomes the odd value above it
    (below it at the maximum). Values set from code are taken as given."""

    def validate(self, text: str, pos: int) -> Tuple[QValidator.State, str, int]:
        state, text, pos = super().validate(text, pos)
        if state == QValidator.Acceptable and self.valueFromText(text) % 2 == 0:
            state = QValidator.Intermediate
        return state, text, pos

    def fixup(self, text: str) -> str:
        if super().validate(text, 0)[0] == QValidator.Acceptable:
            value = self.valueFromText(text)
            if value % 2 == 0:
                return self.textFromValue(value + 1 if value < self.maximum() else value - 1)
        return super().fixup(text)


def odd_spin_box(parent: QWidget, low: int, high: int, value: int, tip: str = "") -> OddSpinBox:
    """An OddSpinBox from `low` to `high` (both odd) stepping by 2."""
    spin = OddSpinBox(parent)
    spin.setRange(low, high)
    spin.setSingleStep(2)
    spin.setValue(value)
    spin.setToolTip(tip)
    return spin


def double_spin_box(parent: QWidget, low: float, high: float, value: float, decimals: int, step: float,
                    tip: str = "") -> QDoubleSpinBox:
    spin = QDoubleSpinBox(parent)
    spin.setDecimals(decimals)  # first: setValue rounds to the decimals in force
    spin.setRange(low, high)
    spin.setSingleStep(step)
    spin.setValue(value)
    spin.setToolTip(tip)
    return spin


class _FollowWidth(QObject):
    """Keeps a scroll area at least as wide as its body's minimum size, whenever the body's layout changes."""

    def __init__(self, scroll: QScrollArea, body: QWidget) -> None:
        super().__init__(scroll)
        self.scroll, self.body = scroll, body

    def fit(self) -> None:
        width = self.body.minimumSizeHint().width() + self.scroll.verticalScrollBar().sizeHint().width() + 4
        if width != self.scroll.minimumWidth():
            self.scroll.setMinimumWidth(width)

    def eventFilter(self, watched: QObject, event: QEvent) -> bool:  # noqa: N802 (Qt API)
        if event.type() == QEvent.LayoutRequest:
            self.fit()
        return False


def tab_in_order(widgets: Sequence[QWidget]) -> None:
    """Tab moves through `widgets` in this order (the order they are laid out in): Qt's default is the order
    they were made in, which jumped from After to Reference and back up to Method in the change dock."""
    chain = [w.focusProxy() or w for w in widgets]
    for first, second in zip(chain, chain[1:]):
        QWidget.setTabOrder(first, second)


def scroll_body(owner: QWidget, body: QWidget) -> None:
    """Make `body` the scrollable content of `owner`, so a tall dock stays usable on a short screen."""
    scroll = QScrollArea(owner)
    scroll.setWidgetResizable(True)
    scroll.setFrameShape(QFrame.NoFrame)
    scroll.setWidget(body)
    # a scroll area's own minimum width is tiny: without this, a narrow dock area clips the form's right edge;
    # kept in step with the body, whose readouts widen after a run (a result's 'Change' column was cut)
    follower = _FollowWidth(scroll, body)
    follower.fit()
    body.installEventFilter(follower)
    outer = QVBoxLayout(owner)
    outer.setContentsMargins(0, 0, 0, 0)
    outer.addWidget(scroll)


def white_plot(parent: QWidget, bottom: str, left: str, grid_x: bool = True) -> "pg.PlotWidget":
    """A pyqtgraph plot on white with axis labels and a light grid: the look of every RS Lab plot."""
    import pyqtgraph as pg

    plot = pg.PlotWidget(parent, background="w")
    plot.setLabel("bottom", bottom)
    plot.setLabel("left", left)
    plot.showGrid(x=grid_x, y=True, alpha=0.2)
    return plot


def result_plot(parent: QWidget, bottom: str, left: str, min_height: int, grid_x: bool = True) -> "pg.PlotWidget":
    """A white plot that grows with its dock and ignores the mouse: results are read, not panned."""
    plot = white_plot(parent, bottom, left, grid_x)
    plot.setMinimumHeight(min_height)
    plot.setSizePolicy(QSizePolicy.Expanding, QSizePolicy.Expanding)
    plot.setMouseEnabled(x=False, y=False)
    return plot


def decade_label(exponent: int) -> str:
    """'1', '10⁹' or '10⁻³': tick labels for a logarithmic axis (pyqtgraph's own skip decades on a narrow plot)."""
    if exponent == 0:
        return "1"
    return "10" + ("⁻" if exponent < 0 else "") + str(abs(exponent)).translate(SUPERSCRIPTS)


def legend_below(owner: QWidget, plot: QWidget, text: str = "") -> QLabel:
    """Lay out `plot` over a word-wrapped rich-text legend label filling `owner`, and return the label. A legend
    inside the plot would hide part of some curve wherever it sat."""
    legend = QLabel(text, owner)
    legend.setWordWrap(True)
    legend.setTextFormat(Qt.RichText)
    layout = QVBoxLayout(owner)
    layout.setContentsMargins(0, 0, 0, 0)
    layout.addWidget(plot, 1)
    layout.addWidget(legend)
    return legend


def legend_mark(colour: Tuple[int, int, int], glyph: str = BAR) -> str:
    """A coloured mark for a legend written as rich text (in a QLabel or a plot title)."""
    return "<span style='color:#%02x%02x%02x'>%s</span>" % (*colour, glyph)


def live_curve(parent: QWidget, title: str, x_label: str, y_label: str, colour: Tuple[int, int, int],
               symbol_size: int = 5) -> Tuple["pg.PlotWidget", "pg.PlotDataItem"]:
    """(plot, curve): a white pyqtgraph plot with one line-and-dots curve for live training figures."""
    import pyqtgraph as pg

    plot = white_plot(parent, x_label, y_label)
    plot.setTitle(title, size="9pt")
    curve = plot.plot([], [], pen=pg.mkPen(colour, width=2), symbol="o", symbolSize=symbol_size,
                      symbolBrush=pg.mkBrush(*colour))
    # pyqtgraph 0.13 draws wide pens as segments and fails on a one-point curve (the first epoch)
    curve.curve.setSegmentedLineMode("off")
    return plot, curve


ETA_AFTER_S = 10.0  # seconds a run must have gone before its bar says how long is left
ETA_AFTER_PERCENT = 3.0  # and percent done: earlier, the rate says little


def time_left_text(elapsed: float, percent: float) -> str:
    """'about 12 min left' from the time a run has taken for `percent` of its bar ('' before an estimate means
    anything, and at the end). The jobs share their bars by expected time (BSDM's stages by their cost), so
    the rate so far carries on: a BSDM run on 2000 x 2000 x 205 takes about 20 minutes on two cores."""
    if elapsed < ETA_AFTER_S or not ETA_AFTER_PERCENT <= percent < 100:
        return ""
    left = elapsed * (100.0 - percent) / percent
    if left < 60:
        return f"about {max(10, int(round(left / 10.0)) * 10)} s left"
    minutes = int(round(left / 60.0))
    if minutes < 60:
        return f"about {minutes} min left"
    return f"about {minutes // 60} h {minutes % 60:02d} min left"


class TimedProgressBar(QProgressBar):
    """A 0-100 % bar that adds the time left once a run has gone long enough to estimate it (time_left_text)."""

    def __init__(self, parent: QWidget) -> None:
        super().__init__(parent)
        self.setRange(0, 100)
        self._started: Optional[float] = None

    def start(self) -> None:
        self._started = time.monotonic()
        self.setFormat("%p%")
        self.setToolTip("")
        self.setValue(0)

    def wait(self, text: str, why: str) -> None:
        """The run is queued, not started: `text` in the bar instead of a percentage, `why` in its tooltip, and no
        clock running (the wait would have counted as time the run took, and made the first estimate of the time
        left too long). `start()` ends the wait."""
        self._started = None
        self.setValue(0)
        self.setFormat(text)  # no "%" in it: QProgressBar would read "%p", "%v", "%m" as numbers
        self.setToolTip(why)

    def show_percent(self, percent: float) -> None:
        self.setValue(int(percent))
        left = time_left_text(time.monotonic() - self._started, percent) if self._started is not None else ""
        self.setFormat(f"%p% · {left}" if left else "%p%")

    def stop(self) -> None:
        """The run ended (perhaps cancelled while it waited): no more estimates (the caller sets the final value)."""
        self._started = None
        self.setFormat("%p%")
        self.setToolTip("")
