"""Build the plugin zip the QGIS plugin repository accepts: dist/rslab-VERSION.zip.

The zip holds one folder, `rslab/`, with the plugin code, resources (icons,
styles, samples, default weights), metadata, licence, README and the
requirements files the dependency installer reads. Tests, benchmarks, the
venv, caches and build tooling stay out. The repository caps zips at 25 MB.
"""
from __future__ import annotations

import re
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the plugin's `core` (standard library only here) reads metadata.txt
from core.resources import metadata_value  # noqa: E402

NAME = "rslab"
LIMIT_MB = 25
INCLUDE = ["metadata.txt", "__init__.py", "plugin.py", "LICENSE", "README.md", "requirements.txt",
           "constraints.txt", "core", "models", "provider", "ui", "resources"]
SKIP_PARTS = {"__pycache__", ".pytest_cache"}
SKIP_SUFFIXES = {".pyc", ".pyo", ".xml"}  # .aux.xml: statistics QGIS writes beside rasters


SCREENSHOT = re.compile(r"!\[([^\]]*)\]\((docs/screenshots/[^)]+)\)")
ZIP_NOTE = ("> This copy of the README comes in the plugin zip, which leaves out the screenshots (docs/screenshots) "
            "and the methods description (../shared/docs/METHODS.md) to stay under the plugin repository's "
            f"{LIMIT_MB} MB cap: both are in the source repository.\n\n")


def readme_for_zip(text: str) -> str:
    """The README as the zip carries it: each screenshot, which the zip does not hold, becomes a line naming it."""
    return ZIP_NOTE + SCREENSHOT.sub(lambda m: f"*(Screenshot, in the source repository's {m.group(2)}: {m.group(1)})*",
                                     text)


def version() -> str:
    found = metadata_value("version")
    if not found:
        raise SystemExit("metadata.txt has no version")
    return found


def files() -> list:
    out = []
    for entry in INCLUDE:
        path = ROOT / entry
        if not path.exists():
            raise SystemExit(f"missing {entry}")
        candidates = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
        for p in candidates:
            rel = p.relative_to(ROOT)
            if SKIP_PARTS & set(rel.parts) or p.suffix in SKIP_SUFFIXES:
                continue
            out.append(rel)
    return out


def build(dist: Path) -> Path:
    dist.mkdir(parents=True, exist_ok=True)
    target = dist / f"{NAME}-{version()}.zip"
    with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as archive:
        for rel in files():
            if rel.as_posix() == "README.md":
                archive.writestr(f"{NAME}/README.md", readme_for_zip((ROOT / rel).read_text(encoding="utf-8")))
            else:
                archive.write(ROOT / rel, f"{NAME}/{rel.as_posix()}")
    size_mb = target.stat().st_size / 1e6
    if size_mb > LIMIT_MB:
        target.unlink()
        raise SystemExit(f"the plugin zip would be {size_mb:.1f} MB, over the repository's {LIMIT_MB} MB cap")
    print(f"{target} ({size_mb:.1f} MB)")
    return target


if __name__ == "__main__":
    build(Path(sys.argv[1] if len(sys.argv) > 1 else ROOT / "dist"))
