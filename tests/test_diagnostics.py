"""The diagnostics dialog, driven with pytest-qt: versions, copy, install missing packages."""
from __future__ import annotations

import sys

import pytest
from qgis.core import Qgis
from qgis.PyQt import sip
from qgis.PyQt.QtCore import QCoreApplication, QEvent, Qt
from qgis.PyQt.QtGui import QGuiApplication

import rslab
from rslab.core import dependencies
from rslab.core.errors import RSLabError
from rslab.ui.diagnostics_dialog import DiagnosticsDialog
from rslab.ui.environment import private_env_dir
from wheels import build_wheel


def row(text: str, key: str) -> str:
    """The value of one 'key : value' line of the diagnostics text."""
    return next(line.split(" : ", 1)[1] for line in text.splitlines() if line.split(" : ", 1)[0].strip() == key)


def test_dialog_shows_versions_and_copies_them(qtbot, monkeypatch):
    monkeypatch.delenv("RSLAB_JOB_NICE", raising=False)
    dialog = DiagnosticsDialog()
    qtbot.addWidget(dialog)
    text = dialog.text.toPlainText()
    import numpy
    import torch

    for expected in ("RS Lab", Qgis.version(), "GDAL", "numpy", numpy.__version__, torch.__version__,
                     "compute device", "cpu (", "CPU threads"):
        assert expected in text, expected
    assert row(text, "missing packages") == row(text, "missing Debian packages") == "none"
    assert row(text, "job priority").startswith("10 below QGIS's")  # the default, on Linux
    assert not dialog.install_button.isEnabled()
    qtbot.mouseClick(dialog.copy_button, Qt.LeftButton)
    assert QGuiApplication.clipboard().text() == text


@pytest.fixture()
def probe_requirement(tmp_path, monkeypatch):
    """Point the plugin's requirements at a tiny local wheel instead of torch (offline, seconds)."""
    wheels = tmp_path / "wheels"
    build_wheel(wheels)
    req = tmp_path / "requirements.txt"
    req.write_text("rslabprobe==1.0\n")
    monkeypatch.setattr(dependencies, "REQUIREMENTS", req)
    monkeypatch.setenv("RSLAB_PIP_ARGS", f"--no-index --find-links {wheels}")
    monkeypatch.setenv("RSLAB_ENV_DIR", str(tmp_path / "private-env"))
    before = list(sys.path)
    yield req
    sys.path[:] = before
    sys.modules.pop("rslabprobe", None)


def test_install_button_installs_into_the_private_env(qtbot, probe_requirement):
    dialog = DiagnosticsDialog()
    qtbot.addWidget(dialog)
    assert "rslabprobe==1.0" in dialog.status.text()
    assert dialog.install_button.isEnabled()
    qtbot.mouseClick(dialog.install_button, Qt.LeftButton)
    assert not dialog.install_button.isEnabled()
    qtbot.waitUntil(lambda: dialog.install_task is None, timeout=120000)
    assert dialog.status.text().startswith("Installed"), dialog.status.text()
    assert row(dialog.text.toPlainText(), "missing packages") == "none"
    site = dependencies.site_packages(private_env_dir())
    assert site is not None and (site / "rslabprobe" / "__init__.py").exists()
    # the folder it activated, whatever its name (it was found by '.venv' or 'rslab' in the path)
    assert row(dialog.text.toPlainText(), "package folders") == str(site)
    assert private_env_dir() == probe_requirement.parent / "private-env"


def test_private_env_defaults_to_the_qgis_profile(monkeypatch):
    from qgis.core import QgsApplication

    monkeypatch.delenv("RSLAB_ENV_DIR", raising=False)
    assert str(private_env_dir()).startswith(QgsApplication.qgisSettingsDirPath())


def test_plugin_warns_about_missing_packages_with_an_install_button(iface, qtbot, probe_requirement):
    from qgis.PyQt.QtWidgets import QPushButton

    plugin = rslab.classFactory(iface)
    plugin.initGui()
    try:
        item = iface.messageBar().currentItem()
        assert item is not None and "rslabprobe==1.0" in item.text()
        button = [b for b in item.findChildren(QPushButton) if b.text() == "Install…"][0]
        qtbot.mouseClick(button, Qt.LeftButton)
        assert len(plugin.dialogs) == 1 and plugin.dialogs[0].isVisible()
        dialog = plugin.dialogs[0]
        qtbot.mouseClick(dialog.install_button, Qt.LeftButton)
        qtbot.waitUntil(lambda: dialog.install_task is None, timeout=120000)
        assert dialog.status.text().startswith("Installed")
        # the warning goes once the packages are there (it stayed up, naming packages now installed)
        assert all("rslabprobe" not in message.text() for message in iface.messageBar().items())
    finally:
        plugin.unload()
    assert plugin.dialogs == []


def test_unloading_the_plugin_during_an_install_cancels_it(iface, qtbot, probe_requirement, monkeypatch):
    """The dialog goes with the plugin: its install is cancelled, and the task's end leaves the deleted dialog alone
    (it refreshed it: RuntimeError, wrapped C/C++ object deleted, caught here by pytest-qt)."""
    monkeypatch.setattr(dependencies, "install_commands", lambda *_, **__: [["sh", "-c", "sleep 1; echo done"]])
    plugin = rslab.classFactory(iface)
    plugin.initGui()
    dialog = plugin.show_diagnostics()
    qtbot.mouseClick(dialog.install_button, Qt.LeftButton)
    task = dialog.install_task
    with qtbot.waitSignal(task.jobFinished, timeout=20000) as done:
        plugin.unload()
        QCoreApplication.sendPostedEvents(None, QEvent.DeferredDelete)
        assert sip.isdeleted(dialog) and task.isCanceled()
    assert done.args[0] is None


def test_cancelling_a_silent_install_stops_it_and_says_so(iface, qtbot, probe_requirement, monkeypatch):
    """pip prints nothing while it resolves or builds: a cancel (from QGIS's task manager) stops it anyway; it used
    to wait for pip's next line (30 s here) and then read as a failure."""
    monkeypatch.setattr(dependencies, "install_commands", lambda *_, **__: [["sh", "-c", "sleep 30; echo done"]])
    plugin = rslab.classFactory(iface)
    plugin.initGui()
    try:
        dialog = plugin.show_diagnostics()
        qtbot.mouseClick(dialog.install_button, Qt.LeftButton)
        with qtbot.waitSignal(dialog.install_task.jobFinished, timeout=10000) as done:
            dialog.install_task.cancel()
        assert done.args[0] is None and dialog.status.text() == "Installation cancelled."
    finally:
        plugin.unload()


def test_without_its_debian_packages_the_plugin_offers_diagnostics_and_the_apt_command(iface, qtbot, monkeypatch):
    """A zip installed on a QGIS without python3-rasterio (Debian's qgis does not pull it in): the provider's
    imports raised ModuleNotFoundError, and the plugin loaded with no menu, no provider and no Diagnostics."""
    from qgis.core import QgsApplication

    monkeypatch.setitem(dependencies.SYSTEM_MODULES, "rslab_absent_module", "python3-rslab-absent")
    monkeypatch.setattr(dependencies, "LOAD_MODULES", dependencies.LOAD_MODULES + ("rslab_absent_module",))
    providers = len(QgsApplication.processingRegistry().providers())
    plugin = rslab.classFactory(iface)
    plugin.initGui()
    try:
        assert [a.text() for a in plugin.actions] == ["Diagnostics…", "RS Lab Help"] and plugin.provider is None
        assert len(QgsApplication.processingRegistry().providers()) == providers
        item = iface.messageBar().currentItem()
        assert item.level() == Qgis.Critical
        assert "sudo apt-get install python3-rslab-absent" in item.text() and "restart QGIS" in item.text()
        dialog = plugin.show_diagnostics()
        assert row(dialog.text.toPlainText(), "missing Debian packages") == "sudo apt-get install python3-rslab-absent"
    finally:
        plugin.unload()
    assert plugin.actions == [] and plugin.dialogs == [] and iface.pluginHelpMenu().actions() == []


def test_a_job_that_needs_a_package_not_installed_says_which_and_how(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)  # as on a QGIS without torch
    monkeypatch.setitem(sys.modules, "h5py", None)
    torch = ModuleNotFoundError("No module named 'torch'", name="torch")
    assert dependencies.missing_package_message(torch) == (
        "the Python package torch is not installed, and this job needs it: install it with RS Lab > Diagnostics > "
        "Install missing packages, then run the job again")
    assert "sudo apt-get install python3-h5py" in dependencies.missing_package_message(
        ModuleNotFoundError("No module named 'h5py'", name="h5py"))
    assert dependencies.missing_package_message(ModuleNotFoundError("x", name="rslab.no_such_module")) is None
    assert dependencies.missing_system(["rasterio", "scipy", "pyqtgraph"]) == []


def test_an_import_error_of_an_installed_package_is_not_called_missing():
    """A wrong name imported from an installed torch (or a library torch cannot load) carries name='torch' too:
    it was told 'torch is not installed', and the traceback that says what is wrong was dropped."""
    assert dependencies.missing_package_message(ImportError("cannot import name 'x' from 'torch'", name="torch")) is None
    assert dependencies.missing_package_message(ModuleNotFoundError("No module named 'torch.x'", name="torch.x")) is None


@pytest.mark.parametrize("env, cores, expected", [("", 16, 15), ("", 2, 2), ("", 1, 1), ("3", 16, 3),
                                                  ("zero", 8, 7), ("0", 8, 7)])
def test_torch_threads_leave_a_core_to_qgis_unless_rslab_threads_says(monkeypatch, env, cores, expected):
    from rslab.core.device import cpu_threads

    monkeypatch.setenv("RSLAB_THREADS", env)
    monkeypatch.setattr("os.cpu_count", lambda: cores)
    assert cpu_threads() == expected


def test_after_a_reload_the_diagnostics_still_name_the_folders_and_packages_in_use(monkeypatch):
    """A reloaded plugin starts with fresh module state: its diagnostics said 'package folders: none added' and
    'env over system: none' while the first load's folder and import finder were still in use."""
    from rslab.core.diagnostics import collect

    site = "/opt/rslab-env/lib/python3.11/site-packages"
    monkeypatch.setenv(dependencies.ADDED_FOLDERS_KEY, site)  # what the first load's `activate` recorded
    monkeypatch.setattr(sys, "path", sys.path + [site])

    class EnvPackagesFirst:  # the first load's finder class: another class object than the reloaded module's
        names = ("mpmath", "sympy")

        def find_spec(self, *args, **kwargs):  # a finder that finds nothing (imports go on past it)
            return None

    monkeypatch.setattr(sys, "meta_path", [EnvPackagesFirst()] + sys.meta_path)
    rows = dict(collect())
    assert rows["package folders"] == site and rows["env over system"] == "mpmath, sympy"


def test_a_device_torch_does_not_know_or_a_gpu_it_does_not_see_is_refused_in_words():
    import torch

    from rslab.core.device import select_device

    assert select_device("cpu") == torch.device("cpu")
    assert select_device("auto") == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(RSLabError, match="unknown device 'gpu': use 'auto', 'cpu' or 'cuda'"):
        select_device("gpu")
    if not torch.cuda.is_available():  # CI and the development machine
        with pytest.raises(RSLabError, match="a CUDA device was requested but torch sees no GPU"):
            select_device("cuda:0")
