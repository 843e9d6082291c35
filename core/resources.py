"""Where the plugin's own files are: its folder, and resources/ (styles, icons, weights, samples)."""
from __future__ import annotations

from .dependencies import PLUGIN_DIR

RESOURCES_DIR = PLUGIN_DIR / "resources"
STYLE_DIR = RESOURCES_DIR / "styles"  # the QML styles outputs load with
ICON_DIR = RESOURCES_DIR / "icons"
WEIGHTS_DIR = RESOURCES_DIR / "weights"  # the shipped checkpoints
