"""The diagnostics dialog: versions, compute device and threads as copyable text,
and an installer for missing packages into the plugin-private environment."""
from __future__ import annotations

from functools import partial

from qgis.core import Qgis
from qgis.PyQt import sip
from qgis.PyQt.QtCore import pyqtSignal
from qgis.PyQt.QtGui import QFontDatabase, QGuiApplication
from qgis.PyQt.QtWidgets import QDialog, QHBoxLayout, QLabel, QPlainTextEdit, QPushButton, QVBoxLayout

from ..core import dependencies, diagnostics
from . import task as tasks
from .environment import activate_environments, private_env_dir
from .help_button import help_button


def qgis_rows() -> dict:
    from osgeo import gdal

    return {"QGIS": f"{Qgis.version()} (GDAL in QGIS {gdal.__version__})"}


class DiagnosticsDialog(QDialog):
    installed = pyqtSignal()  # the missing packages were installed (the plugin clears its load-time warning)

    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        self.setWindowTitle("RS Lab diagnostics")
        self.resize(760, 460)
        self.text = QPlainTextEdit(self)
        self.text.setReadOnly(True)
        self.text.setFont(QFontDatabase.systemFont(QFontDatabase.FixedFont))
        self.status = QLabel(self)
        self.status.setWordWrap(True)
        self.copy_button = QPushButton("Copy to clipboard", self)
        self.install_button = QPushButton("Install missing packages", self)
        self.close_button = QPushButton("Close", self)
        self.help_button = help_button(self, "Python packages inside QGIS")  # what is installed where, and how
        buttons = QHBoxLayout()
        buttons.addWidget(self.copy_button)
        buttons.addWidget(self.install_button)
        buttons.addStretch(1)
        buttons.addWidget(self.help_button)
        buttons.addWidget(self.close_button)
        layout = QVBoxLayout(self)
        layout.addWidget(self.text)
        layout.addWidget(self.status)
        layout.addLayout(buttons)
        self.copy_button.clicked.connect(self.copy)
        self.install_button.clicked.connect(self.install_missing)
        self.close_button.clicked.connect(self.reject)
        self.install_task = None
        self.refresh()

    def report(self) -> str:
        return diagnostics.as_text(diagnostics.collect(qgis_rows()))

    def refresh(self) -> None:
        self.text.setPlainText(self.report())
        absent = dependencies.missing()
        self.install_button.setEnabled(bool(absent) and self.install_task is None)
        if absent:
            self.status.setText(
                "Missing: " + ", ".join(r.spec for r in absent)
                + f". 'Install missing packages' puts them in {private_env_dir()} "
                "(numpy and QGIS's own packages are left untouched)."
            )
        else:
            self.status.setText("All packages RS Lab needs are importable.")

    def copy(self) -> None:
        QGuiApplication.clipboard().setText(self.text.toPlainText())
        self.status.setText("Copied to the clipboard.")

    def install_missing(self) -> None:
        commands = dependencies.install_commands(private_env_dir())
        self.text.appendPlainText("\nInstalling into " + str(private_env_dir()) + " ...")

        def job(progress, cancelled):
            from ..core.errors import JobCancelled, RSLabError

            code = dependencies.run_commands(commands, log=lambda line: progress(0.5, line), cancelled=cancelled)
            if code == dependencies.CANCELLED:
                raise JobCancelled()
            if code != 0:
                raise RSLabError(f"pip stopped with exit code {code}; see the log above")
            return code

        self.install_task = tasks.JobTask("RS Lab: installing Python packages", job, on_finished=self._installed)
        self.install_task.message.connect(self.text.appendPlainText)
        self.destroyed.connect(partial(tasks.cancel_if_alive, self.install_task))  # the plugin unloaded: stop pip
        self.install_button.setEnabled(False)
        tasks.start(self.install_task)

    def _installed(self, result, error: str) -> None:
        if sip.isdeleted(self):  # the plugin was unloaded while pip ran (loading it again activates the env)
            return
        self.install_task = None
        activate_environments()
        if error:  # keep pip's log on screen: it says why
            self.install_button.setEnabled(bool(dependencies.missing()))
            self.status.setText("Installation cancelled." if tasks.was_cancelled(error)
                                else "Installation failed: " + error.splitlines()[0])
        else:
            self.refresh()
            self.status.setText("Installed. The packages are importable now; restart QGIS if a tool still reports them missing.")
            self.installed.emit()
