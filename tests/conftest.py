"""Real QGIS, started once per test session, offscreen, with Processing initialised.

QGIS writes settings under a temporary profile (QGIS_CUSTOM_CONFIG_PATH), so
the tests never touch the user's own QGIS profile.
"""
from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Tuple

import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
_CONFIG = tempfile.mkdtemp(prefix="rslab-qgis-profile-")
_TEMPORARY = [_CONFIG]  # removed at the session's end
os.environ["QGIS_CUSTOM_CONFIG_PATH"] = _CONFIG

REPO = Path(__file__).resolve().parent.parent
SAMPLES = REPO / "resources" / "samples"
SHARED = REPO.parent / "shared" / "data"


def _link_package() -> None:
    """Make `import rslab` resolve to this checkout (make setup also links it into .venv)."""
    try:
        import rslab  # noqa: F401

        if Path(rslab.__file__).resolve().parent == REPO:
            return
        del sys.modules["rslab"]
    except ImportError:
        pass
    link_dir = Path(tempfile.mkdtemp(prefix="rslab-link-"))
    _TEMPORARY.append(str(link_dir))
    (link_dir / "rslab").symlink_to(REPO)
    sys.path.insert(0, str(link_dir))


_link_package()
sys.path.append("/usr/share/qgis/python/plugins")

from qgis.core import QgsApplication  # noqa: E402

_APP = QgsApplication([], True)
_APP.initQgis()

from processing.core.Processing import Processing  # noqa: E402

Processing.initialize()


def pytest_sessionfinish(session, exitstatus):
    """Cancel the background tasks a test's dock left running (a checkpoint still being read) and wait for them:
    a worker thread cut off by the interpreter's exit made Qt print 'Qt Concurrent has caught an exception'."""
    import time

    manager = QgsApplication.taskManager()
    manager.cancelAll()
    deadline = time.monotonic() + 30
    while manager.countActiveTasks() and time.monotonic() < deadline:
        _APP.processEvents()
        time.sleep(0.01)
    # the session's QGIS profile and package link (hundreds were left in /tmp); QGIS writes nothing there after
    for folder in _TEMPORARY:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="session")
def qapp():
    """pytest-qt's application is QGIS's application."""
    return _APP


@pytest.fixture(scope="session")
def qgis_app():
    return _APP


@pytest.fixture(scope="session")
def samples() -> Path:
    return SAMPLES


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The shared real sample data beside the checkout (present in CI)."""
    if not SHARED.is_dir():
        pytest.fail(f"shared sample data not found at {SHARED}; it sits beside the checkout in CI")
    return SHARED


@pytest.fixture(scope="module")
def beach2(tmp_path_factory, samples) -> Tuple[Path, Path]:
    """ABU beach-2 (100 x 100 x 193, resources/samples) imported to GeoTIFFs in a temporary folder: its cube and
    its reference. Per module, and never in resources/: QGIS writes .aux.xml beside what it opens."""
    from rslab.core.import_cube import import_cube

    folder = tmp_path_factory.mktemp("beach2")
    cube, gt = folder / "beach-2.tif", folder / "beach-2_gt.tif"
    import_cube(str(samples / "abu-beach-2.mat"), str(cube), str(gt))
    return cube, gt


@pytest.fixture(autouse=True)
def fresh_rslab_settings(qgis_app):
    """Each test starts from the docks' defaults: what an earlier test chose is not remembered (ui/settings.py)."""
    from qgis.core import QgsSettings

    QgsSettings().remove("rslab")
    yield


@pytest.fixture()
def project(qgis_app):
    """The QGIS project, empty at the start and the end of the test."""
    from qgis.core import QgsProject

    project = QgsProject.instance()
    project.clear()
    yield project
    project.clear()


@pytest.fixture()
def qgis_process(tmp_path):
    """`qgis_process(*args)`: /usr/bin/qgis_process.bin with RS Lab enabled in a fresh QGIS profile.

    It runs QGIS's own Python (no PYTHONPATH), which is how users' command lines run the plugin.
    """
    import subprocess

    config = tmp_path / "qgis-process-profile"
    plugins = config / "profiles" / "default" / "python" / "plugins"
    plugins.mkdir(parents=True)
    (plugins / "rslab").symlink_to(REPO)
    env = dict(os.environ, QGIS_CUSTOM_CONFIG_PATH=str(config), QT_QPA_PLATFORM="offscreen")
    env.pop("PYTHONPATH", None)

    def run(*args: str) -> "subprocess.CompletedProcess":
        return subprocess.run(["/usr/bin/qgis_process.bin", *args], capture_output=True, text=True, env=env,
                              timeout=300)

    assert run("plugins", "enable", "rslab").returncode == 0
    run.env = env  # for a test that starts qgis_process.bin itself (to interrupt it)
    return run


@pytest.fixture()
def provider():
    """The RS Lab Processing provider, registered for one test and removed after it."""
    from rslab.provider.provider import RSLabProvider

    registry = QgsApplication.processingRegistry()
    existing = registry.providerById("rslab")
    if existing is not None:
        yield existing
        return
    prov = RSLabProvider()
    assert registry.addProvider(prov)
    yield prov
    registry.removeProvider(prov)


class DesktopIface:
    """The part of QgisInterface the plugin uses, backed by real Qt and QGIS widgets.

    QGIS's QgisInterface needs the desktop application; offscreen we build the
    same widgets it manages (main window, Raster menu with plugin submenus,
    toolbars, dock areas, message bar, map canvas) so the tests can look at
    what the plugin really added and removed.
    """

    def __init__(self) -> None:
        from qgis.gui import QgsMapCanvas, QgsMessageBar
        from qgis.PyQt.QtWidgets import QMainWindow

        self._window = QMainWindow()
        self._canvas = QgsMapCanvas(self._window)
        self._window.setCentralWidget(self._canvas)
        self._bar = QgsMessageBar(self._window)
        self.raster_menu = self._window.menuBar().addMenu("&Raster")
        self.plugin_help_menu = self._window.menuBar().addMenu("&Help").addMenu("Plugins")

    def mainWindow(self):  # noqa: N802
        return self._window

    def mapCanvas(self):  # noqa: N802
        return self._canvas

    def messageBar(self):  # noqa: N802
        return self._bar

    def pluginHelpMenu(self):  # noqa: N802 (Help > Plugins)
        return self.plugin_help_menu

    def addToolBar(self, name):  # noqa: N802
        return self._window.addToolBar(name)

    def addDockWidget(self, area, dock):  # noqa: N802
        self._window.addDockWidget(area, dock)

    def removeDockWidget(self, dock):  # noqa: N802
        self._window.removeDockWidget(dock)

    def _submenu(self, name, create):
        for action in self.raster_menu.actions():
            if action.menu() is not None and action.text() == name:
                return action.menu()
        return self.raster_menu.addMenu(name) if create else None

    def addPluginToRasterMenu(self, name, action):  # noqa: N802
        self._submenu(name, True).addAction(action)

    def removePluginRasterMenu(self, name, action):  # noqa: N802
        menu = self._submenu(name, False)
        if menu is not None:
            menu.removeAction(action)
            if not menu.actions():
                self.raster_menu.removeAction(menu.menuAction())

    def plugin_menu_texts(self):
        return {
            a.text(): [x.text() for x in a.menu().actions()]
            for a in self.raster_menu.actions()
            if a.menu() is not None
        }


@pytest.fixture()
def iface(qgis_app):
    iface = DesktopIface()
    yield iface
    iface.mainWindow().close()


@pytest.fixture(scope="session")
def tiny_change_checkpoint(tmp_path_factory, shared_data) -> str:
    """A small AR-CDNet trained for a few iterations on two LEVIR pairs: exercises the machinery, not accuracy."""
    from rslab.core.change_data import pairs_from_folder
    from rslab.core.change_training import TrainChangeParams, train_change_detector

    from levir import LEVIR

    pairs = pairs_from_folder(str(shared_data / LEVIR), ["train_36_0512_0512", "test_77_0512_0256"])
    path = str(tmp_path_factory.mktemp("ckpt") / "tiny_arcdnet.pt")
    params = TrainChangeParams(iterations=3, eval_every=3, crop=64, batch_size=2, base=8, channels=8, warmup=1)
    train_change_detector(pairs[:1], pairs[1:], path, params)
    return path


@pytest.fixture(scope="session")
def bgr_pair(tmp_path_factory) -> Tuple[str, str, str]:
    """The bundled LEVIR-CD pair (test_7) as GeoTIFFs stored blue, green, red, with band descriptions "Blue",
    "Green", "Red" (as Sentinel-2's B02, B03, B04 or Landsat TM 1-3 come), and its label."""
    import numpy as np
    import rasterio

    folder = tmp_path_factory.mktemp("bgr")
    paths = []
    for name in ("levir_test_7_A.png", "levir_test_7_B.png"):
        with rasterio.open(SAMPLES / name) as src:
            rgb = src.read()
        path = str(folder / name.replace(".png", "_bgr.tif"))
        with rasterio.open(path, "w", driver="GTiff", width=rgb.shape[2], height=rgb.shape[1], count=3,
                           dtype=rgb.dtype, photometric="MINISBLACK") as dst:
            dst.write(np.ascontiguousarray(rgb[::-1]))
            dst.descriptions = ("Blue", "Green", "Red")
        paths.append(path)
    return paths[0], paths[1], str(SAMPLES / "levir_test_7_label.png")
