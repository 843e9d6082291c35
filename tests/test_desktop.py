"""The real QGIS desktop under Xvfb: QGIS's own plugin loader and QgisInterface.

Runs tests/desktop/probe.py inside `qgis --code`, which loads RS Lab, opens
its Raster menu and diagnostics dialog (screenshots saved for the README),
unloads and loads it again, runs BSDM + RX through the anomaly dock (torch
training in QGIS's own Python), and reports what it saw.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def display():
    if shutil.which("Xvfb") is None:
        pytest.fail("Xvfb is missing: make setup installs it")
    for number in range(101, 130):
        if not Path(f"/tmp/.X11-unix/X{number}").exists() and not Path(f"/tmp/.X{number}-lock").exists():
            break
    server = subprocess.Popen(["Xvfb", f":{number}", "-screen", "0", "1440x900x24", "-nolisten", "tcp"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(50):
        if Path(f"/tmp/.X11-unix/X{number}").exists():
            break
        time.sleep(0.1)
    yield f":{number}"
    server.terminate()
    server.wait(10)


def test_real_qgis_desktop_loads_unloads_and_reloads(tmp_path, display):
    profiles = tmp_path / "profiles-root"
    plugins = profiles / "profiles" / "default" / "python" / "plugins"
    plugins.mkdir(parents=True)
    (plugins / "rslab").symlink_to(REPO)
    shots = tmp_path / "shots"
    shots.mkdir()
    report_path = tmp_path / "report.json"
    env = dict(os.environ, DISPLAY=display, RSLAB_PROBE_OUT=str(report_path), RSLAB_PROBE_SHOTS=str(shots))
    env.pop("QT_QPA_PLATFORM", None)
    env.pop("QGIS_CUSTOM_CONFIG_PATH", None)
    done = subprocess.run(
        ["qgis", "--nologo", "--noversioncheck", "--profiles-path", str(profiles),
         "--code", str(REPO / "tests" / "desktop" / "probe.py")],
        env=env, capture_output=True, text=True, timeout=240,
    )
    assert report_path.exists(), done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads(report_path.read_text())
    assert report["errors"] == []
    assert report["loaded"] and report["unloaded"] and report["reloaded"]
    assert report["optimiser_step"]  # torch trains inside QGIS's own Python (core/dependencies.py)
    menu = ["Import hyperspectral cube…", "Detect changes…", "Train a change detector…", "Detect anomalies…", "Compress a model…", "Diagnostics…", "RS Lab Help"]
    assert report["after_load"] == {"menu": menu, "rslab_menus": 1, "toolbars": 1, "provider": True, "help": 1}
    assert report["after_unload"] == {"menu": [], "rslab_menus": 0, "toolbars": 0, "provider": False, "help": 0}
    assert report["after_reload"] == report["after_load"]
    assert report["anomaly_dock_after_reload"] == ["lrx", 21]  # the choices made before the unload (ui/settings.py)
    # BSDM + RX through the anomaly dock in QGIS's own Python and task manager
    bsdm = report["bsdm_dock"]
    assert bsdm["error"] == "" and bsdm["losses"] == 3 and bsdm["auc_df"] > 0.8, bsdm
    assert "BSDM + RX scores" in " ".join(bsdm["layers"]), bsdm
    peak = report["peak"]  # its strongest anomaly chosen in the dock's list: QGIS's map went there
    assert peak["rows"] == 20 and peak["legend"], peak
    assert peak["centre"] == pytest.approx(peak["pixel_centre"], abs=0.01), peak
    # the dock's job ran below QGIS (core/device.run_at_job_priority), QGIS's own threads at their priority
    threads = {name: {nice for n, nice in report["threads_during_run"] if n == name}
               for name, _ in report["threads_during_run"]}
    base = os.getpriority(os.PRIO_PROCESS, 0)  # QGIS started at this process's
    assert threads.pop("rslab-job", None) == {min(19, base + 10)} and "qgis.bin" in threads, threads
    assert all(nices == {base} for nices in threads.values()), threads  # the map's pool ('Thread (pooled)') too
    if Path("/usr/lib/python3/dist-packages/sympy").is_dir():  # Debian's, too old for torch: the env's is used
        assert re.search(r"env over system +: .*\bsympy\b", report["diagnostics"])
    for expected in (r"QGIS +: 3\.22", "torch", "compute device", "CPU threads", r"missing packages +: none",
                     r"missing Debian packages +: none", r"package folders +: \S*/\.venv/lib/python3\.11/site-packages"):
        assert re.search(expected, report["diagnostics"]), expected
    assert report["docks"] == ["RS Lab: change detection", "RS Lab: hyperspectral anomalies", "RS Lab: model compression"]
    for shot in ("menu.png", "docks.png", "compression.png"):
        assert (shots / shot).stat().st_size > 10000
    keep = os.environ.get("RSLAB_SCREENSHOTS")
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        for shot in shots.iterdir():
            shutil.copy(shot, Path(keep) / shot.name)
