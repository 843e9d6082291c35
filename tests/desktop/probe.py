"""Runs inside the real QGIS desktop (`qgis --code tests/desktop/probe.py` under Xvfb).

Loads RS Lab through QGIS's own plugin machinery (real QgisInterface), opens
its Raster menu, diagnostics dialog and docks, takes screenshots, unloads and loads
it again, runs BSDM + RX through the anomaly dock, writes what it saw as JSON to
$RSLAB_PROBE_OUT and quits QGIS.
"""
import json
import os
import traceback

from qgis.core import QgsApplication
from qgis.PyQt.QtCore import QTimer
from qgis.PyQt.QtGui import QGuiApplication
from qgis.PyQt.QtWidgets import QToolBar
from qgis.utils import iface, loadPlugin, plugins, startPlugin, unloadPlugin

OUT = os.environ["RSLAB_PROBE_OUT"]
SHOTS = os.environ.get("RSLAB_PROBE_SHOTS", "")
report = {"errors": []}


def rslab_menu():
    for action in iface.rasterMenu().actions():
        if action.menu() is not None and action.text().replace("&", "") == "RS Lab":
            return action.menu()
    return None


def snapshot(name):
    if SHOTS:
        QGuiApplication.primaryScreen().grabWindow(0).save(os.path.join(SHOTS, name))


def state(tag):
    menu = rslab_menu()
    report[tag] = {
        "menu": [a.text() for a in menu.actions()] if menu else [],
        "rslab_menus": sum(1 for a in iface.rasterMenu().actions() if a.text().replace("&", "") == "RS Lab"),
        "toolbars": sum(1 for t in iface.mainWindow().findChildren(QToolBar) if t.objectName() == "RSLabToolbar"),
        "provider": QgsApplication.processingRegistry().providerById("rslab") is not None,
        "help": sum(1 for a in iface.pluginHelpMenu().actions() if a.text() == "RS Lab Help"),  # Help > Plugins
    }


def guarded(fn):
    def run(*args):
        try:
            fn(*args)
        except Exception:
            report["errors"].append(traceback.format_exc())
            finish()
    return run


def optimiser_step():
    """What BSDM, AR-CDNet training and compression do first: torch needs a newer sympy than Debian's QGIS brings."""
    import torch

    model = torch.nn.Linear(3, 2)
    optimiser = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.ones(4, 3)).sum().backward()
    optimiser.step()
    report["optimiser_step"] = True


@guarded
def start():
    iface.mainWindow().showMaximized()
    report["loaded"] = bool(loadPlugin("rslab")) and bool(startPlugin("rslab"))
    state("after_load")
    optimiser_step()
    dialog = plugins["rslab"].show_diagnostics()
    dialog.move(120, 140)
    report["diagnostics"] = dialog.text.toPlainText()
    QTimer.singleShot(1500, show_menu)


@guarded
def show_menu():
    snapshot("diagnostics.png")
    raster = iface.rasterMenu()
    bar = iface.mainWindow().menuBar()
    raster_action = raster.menuAction()
    bar.setActiveAction(raster_action)
    QTimer.singleShot(600, open_submenu)


@guarded
def open_submenu():
    raster = iface.rasterMenu()
    menu = rslab_menu()
    raster.setActiveAction(menu.menuAction())
    QTimer.singleShot(800, reload)


@guarded
def reload():
    snapshot("menu.png")
    iface.rasterMenu().hide()
    for dialog in list(plugins["rslab"].dialogs):
        dialog.close()
    plugin = plugins["rslab"]
    docks = [plugin.show_change_dock(), plugin.show_anomaly_dock()]
    report["docks"] = [d.windowTitle() for d in docks if d.isVisible()]
    body = docks[1].widget()  # a choice made now must be there when the reloaded plugin builds its dock
    body.method_combo.setCurrentIndex(body.method_combo.findData("lrx"))
    body.outer_spin.setValue(21)
    QTimer.singleShot(1500, show_compression)


@guarded
def show_compression():
    snapshot("docks.png")
    for other in plugins["rslab"].docks.values():
        other.hide()  # room for the tall compression panel on the 900-pixel screen
    dock = plugins["rslab"].show_compression_dock()
    report["docks"].append(dock.windowTitle() if dock.isVisible() else "")
    QTimer.singleShot(4000, unload_and_reload)  # the panel reads the default checkpoint's BOPs in the background


@guarded
def unload_and_reload():
    snapshot("compression.png")
    report["unloaded"] = bool(unloadPlugin("rslab"))
    state("after_unload")
    report["reloaded"] = bool(loadPlugin("rslab")) and bool(startPlugin("rslab"))
    state("after_reload")
    body = plugins["rslab"].show_anomaly_dock().widget()
    report["anomaly_dock_after_reload"] = [body.method_combo.currentData(), body.outer_spin.value()]
    run_bsdm(body)


def run_bsdm(body):
    """BSDM + RX (3 iterations) on ABU beach-2 through the anomaly dock: QGIS's task manager, its Python, its layers."""
    from qgis.core import QgsProject, QgsRasterLayer

    import rslab
    from rslab.core.import_cube import import_cube

    folder = os.path.join(os.path.dirname(OUT), "bsdm")
    os.makedirs(folder, exist_ok=True)
    cube, gt = os.path.join(folder, "beach-2.tif"), os.path.join(folder, "beach-2_gt.tif")
    import_cube(os.path.join(os.path.dirname(rslab.__file__), "resources", "samples", "abu-beach-2.mat"), cube, gt)
    layers = [QgsRasterLayer(cube, "beach-2"), QgsRasterLayer(gt, "reference")]
    QgsProject.instance().addMapLayers(layers)
    body.layer_combo.setLayer(layers[0])
    body.method_combo.setCurrentIndex(body.method_combo.findData("bsdm_rx"))
    body.iterations_spin.setValue(3)
    body.reference_combo.setLayer(layers[1])
    body.output_dir.setFilePath(os.path.join(folder, "out"))
    body.runFinished.connect(bsdm_finished)
    QTimer.singleShot(180000, finish)  # a run that never ends: report what was seen
    body.run_button.click()
    threads_timer.start(100)


def sample_threads():
    """Each (name, nice value) among QGIS's threads while the dock's job runs (core/device.run_at_job_priority)."""
    seen = set(map(tuple, report.setdefault("threads_during_run", [])))
    for name in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{name}/comm") as comm:
                seen.add((comm.read().strip(), os.getpriority(os.PRIO_PROCESS, int(name))))
        except OSError:  # the thread ended meanwhile
            pass
    report["threads_during_run"] = sorted(seen)


threads_timer = QTimer()
threads_timer.timeout.connect(sample_threads)


@guarded
def bsdm_finished(result, error):
    from qgis.core import QgsProject

    threads_timer.stop()

    report["bsdm_dock"] = {
        "error": error,
        "auc_df": result.metrics.get("auc_df") if result else None,
        "losses": len(result.training_loss) if result else 0,
        "layers": sorted(layer.name() for layer in QgsProject.instance().mapLayers().values()),
    }
    go_to_strongest(result)
    QTimer.singleShot(1500, shot_and_finish)  # let QGIS paint the new layers and the dock first


def go_to_strongest(result):
    """Choose the strongest anomaly in the dock's list: QGIS's own map canvas centres on its pixel."""
    body = plugins["rslab"].show_anomaly_dock().widget()
    layer = body.layer_combo.currentLayer()
    peak = result.peaks[0]
    body.peak_table.selectRow(0)
    centre = iface.mapCanvas().center()
    extent = layer.extent()  # beach-2 has no georeferencing: QGIS places row r at y = -r
    report["peak"] = {
        "rows": body.peak_table.rowCount(),
        "centre": [centre.x(), centre.y()],
        "pixel_centre": [extent.xMinimum() + (peak.col + 0.5) * layer.rasterUnitsPerPixelX(),
                         extent.yMaximum() - (peak.row + 0.5) * layer.rasterUnitsPerPixelY()],
        "legend": f"pixel (row {peak.row}, col {peak.col}) of beach-2" in body.spectrum.legend.text(),
    }


@guarded
def shot_and_finish():
    snapshot("bsdm.png")
    finish()


def finish():
    if report.get("finished"):
        return
    report["finished"] = True
    with open(OUT, "w") as handle:
        json.dump(report, handle, indent=1)
    QTimer.singleShot(100, QgsApplication.instance().quit)


QTimer.singleShot(2000, start)
