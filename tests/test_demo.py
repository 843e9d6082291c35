"""`make demo` end to end: qgis_process runs rslab:detect_changes with the default weights on the
bundled held-out pair, prints the metrics and writes a quicklook a person can open."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import rasterio
from PIL import Image

REPO = Path(__file__).resolve().parent.parent


def test_make_demo(tmp_path):
    """Written to a temporary folder (the checkout's demo/ may hold a person's own run); the bundled samples
    get no .aux.xml files beside them."""
    demo = tmp_path / "my demo"
    (demo / "inputs").mkdir(parents=True)  # a person's own files there stay (inputs/ was replaced whole)
    (demo / "inputs" / "mine.tif").write_text("my data")
    (demo / "notes.txt").write_text("my notes")
    samples = sorted(p.name for p in (REPO / "resources" / "samples").iterdir())
    done = subprocess.run(["make", "-s", "demo", f"DEMO={demo}"], cwd=REPO, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert sorted(p.name for p in (REPO / "resources" / "samples").iterdir()) == samples
    assert (demo / "inputs" / "mine.tif").read_text() == "my data" and (demo / "notes.txt").read_text() == "my notes"
    report = json.loads((demo / "report.json").read_text())
    assert report["method"] == "arcdnet" and report["model"]["architecture"] == "arcdnet"
    assert report["model"]["path"].endswith("resources/weights/arcdnet_levir_dsifn.pt")
    assert f"f1               {report['metrics']['f1']:.4f}" in done.stdout
    for name in ("change.tif", "probability.tif", "uncertainty.tif"):
        with rasterio.open(demo / name) as ds:
            assert (ds.width, ds.height) == (256, 256)
    with Image.open(demo / "quicklook.png") as image:
        assert image.width > 4 * 256 and image.height > 256
