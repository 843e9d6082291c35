"""Dock and dialog choices that outlast the QGIS session (QgsSettings, under `rslab/<section>/<key>`).

A user who detects anomalies with local RX 5/21 into one folder today wants
the dock to open on those tomorrow. `remember` restores each widget's last
value when the dock is built and stores every change as it happens (a crash
or a killed QGIS keeps what was chosen). Layer choices are not remembered
(they belong to a project), nor are output *files* (reusing one would
overwrite the last run's result); output *folders* are.

A stored value the widget cannot take (an option that no longer exists, a
number out of range or one it refuses, such as an even window size, text
where a number was) is dropped and the widget keeps its default.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, Tuple

from qgis.core import QgsSettings
from qgis.gui import QgsFileWidget, QgsMapLayerComboBox
from qgis.PyQt.QtGui import QValidator
from qgis.PyQt.QtWidgets import QAbstractSpinBox, QCheckBox, QComboBox, QDoubleSpinBox, QLineEdit, QSpinBox, QWidget

GROUP = "rslab"


def _accessors(widget: QWidget) -> Tuple[Callable[[], Any], Callable[[Any], bool], Any]:
    """(read, write, changed signal) for one widget; `write` says whether the stored value was taken."""
    if isinstance(widget, QgsMapLayerComboBox):  # a QComboBox, but its layers belong to one project
        raise TypeError("a QgsMapLayerComboBox's layer is not remembered: layers belong to a project")
    if isinstance(widget, QCheckBox):
        return widget.isChecked, lambda v: _set_checked(widget, v), widget.toggled
    if isinstance(widget, QDoubleSpinBox):
        return widget.value, lambda v: _set_number(widget, float(v)), widget.valueChanged
    if isinstance(widget, QSpinBox):
        return widget.value, lambda v: _set_number(widget, int(v)), widget.valueChanged
    if isinstance(widget, QComboBox):  # by the item's data (the method's code name), not its label
        return widget.currentData, lambda v: _set_item(widget, v), widget.currentIndexChanged
    if isinstance(widget, QgsFileWidget):
        return widget.filePath, lambda v: _set_text(widget.setFilePath, v), widget.fileChanged
    if isinstance(widget, QLineEdit):
        return widget.text, lambda v: _set_text(widget.setText, v), widget.textChanged
    raise TypeError(f"cannot remember a {type(widget).__name__}")


def _set_checked(widget: QCheckBox, value: Any) -> bool:
    if str(value).lower() not in ("true", "false"):  # QSettings' ini files hand booleans back as text
        return False
    widget.setChecked(str(value).lower() == "true")
    return True


def _set_number(widget: QAbstractSpinBox, value: float) -> bool:
    if not widget.minimum() <= value <= widget.maximum():
        return False
    if widget.validate(widget.textFromValue(value), 0)[0] != QValidator.Acceptable:  # an even window size, say
        return False
    widget.setValue(value)
    return True


def _set_item(widget: QComboBox, value: Any) -> bool:
    index = widget.findData(value)
    if index < 0:
        return False
    widget.setCurrentIndex(index)
    return True


def _set_text(setter: Callable[[str], None], value: Any) -> bool:
    setter(str(value))
    return True


def remember(section: str, widgets: Dict[str, QWidget]) -> None:
    """Restore `widgets` from `rslab/<section>/<key>` and store each of their changes there."""
    settings = QgsSettings()
    for key, widget in widgets.items():
        read, write, changed = _accessors(widget)
        name = f"{GROUP}/{section}/{key}"
        stored = settings.value(name)
        if stored is not None:
            try:
                taken = write(stored)
            except (TypeError, ValueError):
                taken = False
            if not taken:
                settings.remove(name)
        changed.connect(lambda *_, name=name, read=read: QgsSettings().setValue(name, read()))
