"""`make install` into a QGIS profile, then qgis_process (QGIS's own Python) lists and runs the
algorithms; `make package` builds a zip the plugin repository accepts."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import rasterio
import scipy.io

REPO = Path(__file__).resolve().parent.parent
QGIS_PROCESS = "/usr/bin/qgis_process.bin"
ALGORITHM_NAMES = ("import_cube", "detect_changes", "train_change_detector", "detect_anomalies", "threshold_anomalies",
                   "model_bops", "compress_model")


def _qgis_process(config: Path, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, QGIS_CUSTOM_CONFIG_PATH=str(config), QT_QPA_PLATFORM="offscreen")
    env.pop("PYTHONPATH", None)
    return subprocess.run([QGIS_PROCESS, *args], capture_output=True, text=True, env=env, timeout=300)


def test_make_install_then_qgis_process_lists_and_runs(tmp_path, samples):
    config = tmp_path / "qgis-config"
    done = subprocess.run(["make", "-s", "install", f"QGIS_CONFIG={config}"], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    link = config / "profiles" / "default" / "python" / "plugins" / "rslab"
    assert link.resolve() == REPO

    listed = _qgis_process(config, "list")
    assert "rslab:import_cube" in listed.stdout, listed.stdout[-2000:] + listed.stderr[-2000:]

    out = tmp_path / "cube.tif"
    ran = _qgis_process(config, "--json", "run", "rslab:import_cube", "--",
                        f"INPUT={samples / 'abu-beach-2.mat'}", f"OUTPUT_CUBE={out}")
    assert ran.returncode == 0, ran.stdout[-2000:] + ran.stderr[-2000:]
    assert json.loads(ran.stdout)["results"]["OUTPUT_CUBE"] == str(out)
    with rasterio.open(out) as ds:
        cube = np.moveaxis(ds.read(), 0, 2)
    assert np.array_equal(cube, scipy.io.loadmat(samples / "abu-beach-2.mat")["data"])

    bad = _qgis_process(config, "run", "rslab:import_cube", "--",
                        f"INPUT={samples / 'abu-beach-2.mat'}", "CUBE_KEY=nope", f"OUTPUT_CUBE={tmp_path / 'x.tif'}")
    assert bad.returncode != 0
    assert "no variable 'nope'" in bad.stdout + bad.stderr
    assert not (tmp_path / "x.tif").exists()


def test_package_zip_is_clean_and_small(tmp_path):
    done = subprocess.run(["/usr/bin/python3", "scripts/package.py", str(tmp_path)], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    (zip_path,) = tmp_path.glob("rslab-*.zip")
    assert zip_path.stat().st_size < 25e6
    names = zipfile.ZipFile(zip_path).namelist()
    assert all(n.startswith("rslab/") for n in names)
    for needed in ("rslab/metadata.txt", "rslab/__init__.py", "rslab/plugin.py", "rslab/LICENSE",
                   "rslab/resources/icons/rslab.svg", "rslab/core/tiling.py", "rslab/requirements.txt"):
        assert needed in names
    for part in ("/tests/", "/bench/", "/.venv/", "__pycache__", ".pyc", "/.git/", "/.ci/"):
        assert not any(part in n for n in names), part
    readme = zipfile.ZipFile(zip_path).read("rslab/README.md").decode()  # no links to files the zip lacks
    assert "](docs/screenshots/" not in readme and "docs/screenshots/change-dock.png" in readme
    assert readme.startswith("> This copy of the README comes in the plugin zip")
    assert readme.count("\n") == (REPO / "README.md").read_text(encoding="utf-8").count("\n") + 2
    # the Help buttons of the installed plugin find each algorithm's section in the zip's README
    zipfile.ZipFile(zip_path).extractall(tmp_path / "installed")
    code = ("from rslab.core.help_links import help_url; "
            "print('\\n'.join(help_url('rslab:' + n) for n in " + repr(ALGORITHM_NAMES) + "))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={"PYTHONPATH": str(tmp_path / "installed")})
    assert done.returncode == 0, done.stderr
    urls = done.stdout.split()
    assert len(set(urls)) == len(ALGORITHM_NAMES) and all("#rslab" in url for url in urls), urls
    metadata = zipfile.ZipFile(zip_path).read("rslab/metadata.txt").decode()
    for field in ("name=RS Lab", "qgisMinimumVersion=3.22", "description=", "about=", "version=", "author=",
                  "email=", "repository=", "tracker=", "category=Raster", "hasProcessingProvider=yes", "icon=",
                  "tags=", "changelog="):
        assert field in metadata, field
