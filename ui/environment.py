"""Where the plugin keeps its private Python packages, and making them importable."""
from __future__ import annotations

from pathlib import Path
from typing import List

from qgis.core import QgsApplication

from ..core import dependencies


def private_env_dir() -> Path:
    """The plugin-private environment under the QGIS profile (never QGIS's own site-packages)."""
    return Path(QgsApplication.qgisSettingsDirPath()) / "rslab" / "python-env"


def activate_environments() -> List[str]:
    """Append the checkout's .venv and the private env to sys.path (system packages keep priority)."""
    return dependencies.activate(dependencies.default_envs(private_env_dir()))
