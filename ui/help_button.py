"""The Help button of the docks and dialogs: their section of the plugin's manual (the README) in a browser.

Its own module, importing only QGIS, Qt and core/help_links: the diagnostics dialog opens when the packages
ui/widgets needs (rasterio, through core/raster_io) are missing, and carries a Help button too.
"""
from __future__ import annotations

from qgis.core import QgsApplication
from qgis.PyQt.QtCore import QUrl
from qgis.PyQt.QtGui import QDesktopServices
from qgis.PyQt.QtWidgets import QPushButton, QWidget

from ..core.help_links import guide_url

HELP_ICON = "/mActionHelpContents.svg"  # QGIS's own, as on its Help menu


def help_button(parent: QWidget, section: str) -> QPushButton:
    """A Help button opening the README section whose heading starts with `section`: on the plugin's
    homepage, or the README the plugin carries when metadata.txt names no homepage (core/help_links). The
    URL is looked up at each click, from the README of the plugin as installed."""
    button = QPushButton(QgsApplication.getThemeIcon(HELP_ICON), "Help", parent)
    button.setObjectName("help_button")
    button.setToolTip(f"This tool's section of the RS Lab manual (\"{section}\") in a web browser")
    button.setAutoDefault(False)  # Enter in a dialog's field runs its default button, never Help
    button.clicked.connect(lambda: open_guide(section))
    return button


def open_guide(section: str = "") -> None:
    """The README section whose heading starts with `section` (its top for "") in the desktop's browser."""
    QDesktopServices.openUrl(QUrl(guide_url(section)))
