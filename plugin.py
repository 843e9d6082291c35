"""The RS Lab plugin object: menu, toolbar, lazily created docks, Processing provider."""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Dict, List, Optional, Union

from qgis.core import Qgis, QgsApplication
from qgis.PyQt import sip
from qgis.PyQt.QtCore import Qt
from qgis.PyQt.QtGui import QIcon
from qgis.PyQt.QtWidgets import QAction, QDockWidget, QPushButton

from .core import dependencies
from .core.resources import ICON_DIR
from .ui.environment import activate_environments
from .ui.help_button import HELP_ICON, open_guide

if TYPE_CHECKING:  # the dialog needs packages the plugin may be loading without (Diagnostics installs them)
    from .ui.diagnostics_dialog import DiagnosticsDialog

MENU = "RS &Lab"


def icon(name: str) -> QIcon:
    return QIcon(str(ICON_DIR / name))


class RSLabPlugin:
    def __init__(self, iface) -> None:
        self.iface = iface
        self.provider = None
        self.toolbar = None
        self.actions: List[QAction] = []
        self.help_action: Optional[QAction] = None  # also in Help > Plugins
        self.docks: Dict[str, QDockWidget] = {}
        self.dialogs: list = []
        self._missing_message = None  # the load-time warning about missing Python packages, while shown
        activate_environments()

    # Processing -----------------------------------------------------------
    def initProcessing(self) -> None:  # noqa: N802 (QGIS API)
        if dependencies.missing_system(dependencies.LOAD_MODULES):
            return  # the provider imports them; initGui says what to install
        from .provider.provider import RSLabProvider, register

        if self.provider is None:
            self.provider = RSLabProvider()
            register(self.provider)

    # GUI ------------------------------------------------------------------
    def initGui(self) -> None:  # noqa: N802 (QGIS API)
        self.initProcessing()
        self.toolbar = self.iface.addToolBar("RS Lab")
        self.toolbar.setObjectName("RSLabToolbar")
        system = dependencies.missing_system(dependencies.LOAD_MODULES)
        if system:  # no tool can load without them: only Diagnostics, and what to install
            self._add_action("Diagnostics…", "diagnostics.svg", self.show_diagnostics)
            self._add_help_action()  # the manual's install steps
            self.iface.messageBar().pushCritical(
                "RS Lab", "cannot start: the Debian packages " + ", ".join(system) + " are not installed. Install "
                f"them ({dependencies.apt_command(system)}) and restart QGIS.")
            return
        self._add_action("Import hyperspectral cube…", "rslab.svg", self.open_import_cube, toolbar=False)
        self._add_action("Detect changes…", "change.svg", self.show_change_dock)
        self._add_action("Train a change detector…", "train.svg", self.show_change_training, toolbar=False)
        self._add_action("Detect anomalies…", "anomaly.svg", self.show_anomaly_dock)
        self._add_action("Compress a model…", "rslab.svg", self.show_compression_dock, toolbar=False)
        self._add_action("Diagnostics…", "diagnostics.svg", self.show_diagnostics)
        self._add_help_action()
        self._warn_missing_packages()

    def _add_action(self, text: str, image: Union[str, QIcon], slot: Callable, toolbar: bool = True) -> QAction:
        """An entry of the RS Lab menu (and of its toolbar); `image`: an icon, or an SVG file's name in ICON_DIR."""
        action = QAction(icon(image) if isinstance(image, str) else image, text, self.iface.mainWindow())
        action.setObjectName("rslab_" + "".join(c for c in text.lower() if c.isalnum()))
        action.triggered.connect(slot)
        self.iface.addPluginToRasterMenu(MENU, action)
        if toolbar:
            self.toolbar.addAction(action)
        self.actions.append(action)
        return action

    def _add_help_action(self) -> None:
        """The manual (the README, core/help_links.guide_url) from the RS Lab menu, and from Help > Plugins where
        QGIS users look for a plugin's help."""
        action = self._add_action("RS Lab Help", QgsApplication.getThemeIcon(HELP_ICON),
                                  lambda: open_guide(), toolbar=False)  # not triggered(checked) as the section
        self.iface.pluginHelpMenu().addAction(action)
        self.help_action = action

    def _warn_missing_packages(self) -> None:
        absent = dependencies.missing()
        if not absent:
            return
        bar = self.iface.messageBar()
        widget = bar.createMessage(
            "RS Lab",
            "missing Python packages: " + ", ".join(r.spec for r in absent)
            + ". Deep-learning tools are unavailable until they are installed.",
        )
        button = QPushButton("Install…", widget)
        button.clicked.connect(self.show_diagnostics)
        widget.layout().addWidget(button)
        bar.pushWidget(widget, 1)  # Qgis.Warning
        self._missing_message = widget

    def show_dock(self, key: str, title: str, factory: Callable[[], object]) -> QDockWidget:
        """Create dock `key` on first use (lazily), then show and raise it."""
        dock = self.docks.get(key)
        if dock is None:
            dock = QDockWidget(title, self.iface.mainWindow())
            dock.setObjectName("RSLab_" + key)
            dock.setWidget(factory())
            self.iface.addDockWidget(Qt.RightDockWidgetArea, dock)
            self.docks[key] = dock
        dock.show()
        dock.raise_()
        return dock

    def show_change_dock(self) -> QDockWidget:
        from .ui.change_dock import ChangeDetectionDock

        return self.show_dock("change", "RS Lab: change detection", lambda: ChangeDetectionDock(self.iface))

    def show_change_training(self) -> None:
        """The training dialog belongs to the dock, so a trained model lands in its model list."""
        self.show_change_dock().widget().open_training()

    def show_anomaly_dock(self) -> QDockWidget:
        from .ui.anomaly_dock import AnomalyDock

        return self.show_dock("anomaly", "RS Lab: hyperspectral anomalies", lambda: AnomalyDock(self.iface))

    def show_compression_dock(self) -> QDockWidget:
        from .ui.compression_dock import CompressionDock

        return self.show_dock("compression", "RS Lab: model compression", lambda: CompressionDock(self.iface))

    def show_diagnostics(self) -> DiagnosticsDialog:
        from .ui.diagnostics_dialog import DiagnosticsDialog

        dialog = DiagnosticsDialog(self.iface.mainWindow())
        dialog.installed.connect(self._clear_missing_message)
        self.dialogs.append(dialog)
        dialog.finished.connect(lambda _=0, d=dialog: self._forget(d))
        dialog.show()
        return dialog

    def _clear_missing_message(self) -> None:
        """The load-time 'missing Python packages' warning, once they are installed (it stayed up)."""
        widget, self._missing_message = self._missing_message, None
        if widget is not None and not sip.isdeleted(widget) and not dependencies.missing():
            self.iface.messageBar().popWidget(widget)

    def _forget(self, dialog) -> None:
        if dialog in self.dialogs:
            self.dialogs.remove(dialog)

    def open_import_cube(self) -> None:
        import processing

        processing.execAlgorithmDialog("rslab:import_cube", {})

    # Teardown -------------------------------------------------------------
    def unload(self) -> None:
        if self.help_action is not None:
            self.iface.pluginHelpMenu().removeAction(self.help_action)
            self.help_action = None
        for action in self.actions:
            self.iface.removePluginRasterMenu(MENU, action)
            if self.toolbar is not None:
                self.toolbar.removeAction(action)
            action.triggered.disconnect()
            action.deleteLater()
        self.actions = []
        for dock in self.docks.values():
            self.iface.removeDockWidget(dock)
            dock.deleteLater()
        self.docks = {}
        for dialog in list(self.dialogs):
            dialog.close()
            dialog.deleteLater()
        self.dialogs = []
        if self.toolbar is not None:
            self.iface.mainWindow().removeToolBar(self.toolbar)
            self.toolbar.setParent(None)  # gone from the window now, not at the next event loop
            self.toolbar.deleteLater()
            self.toolbar = None
        if self.provider is not None:
            from .provider.provider import retire

            if not self.provider.stop_running():
                self.iface.messageBar().pushMessage(
                    "RS Lab", "an RS Lab algorithm was still running when the plugin was unloaded; QGIS may be "
                    "unstable until it is restarted", Qgis.Warning, 0)
            if not retire(self.provider):
                self.iface.messageBar().pushMessage(
                    "RS Lab", "the RS Lab run in progress is cancelled; the Processing toolbox updates RS Lab's "
                    "algorithms (removed, or reloaded) once it has stopped", Qgis.Info, 10)
            self.provider = None
