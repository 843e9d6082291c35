"""Where the plugin's own files are: its folder, metadata.txt, README.md and resources/ (styles, icons,
weights, samples)."""
from __future__ import annotations

from typing import Optional

from .dependencies import PLUGIN_DIR

METADATA = PLUGIN_DIR / "metadata.txt"
README = PLUGIN_DIR / "README.md"  # the plugin's manual; the zip carries it too
RESOURCES_DIR = PLUGIN_DIR / "resources"
STYLE_DIR = RESOURCES_DIR / "styles"  # the QML styles outputs load with
ICON_DIR = RESOURCES_DIR / "icons"
WEIGHTS_DIR = RESOURCES_DIR / "weights"  # the shipped checkpoints


def metadata_value(key: str) -> Optional[str]:
    """A value of the plugin's metadata.txt (version, homepage, …); None when it has no such line."""
    for line in METADATA.read_text(encoding="utf-8").splitlines():
        name, sep, value = line.partition("=")
        if sep and name.strip() == key:
            return value.strip()
    return None
