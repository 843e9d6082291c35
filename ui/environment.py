"""Where the plugin keeps its private Python packages, and making them importable."""
from __future__ import annotations

import os
from pathlib import Path
from typing import List

from qgis.core import QgsApplication

from ..core import dependencies


def private_env_dir() -> Path:
    """The plugin-private environment: RSLAB_ENV_DIR, else under the QGIS profile.

    Never QGIS's own site-packages.
    """
    override = os.environ.get("RSLAB_ENV_DIR", "").strip()
    if override:
        return Path(override).expanduser()
    return Path(QgsApplication.qgisSettingsDirPath()) / "rslab" / "python-env"


def activate_environments() -> List[str]:
    """Append the checkout's .venv and the private env to sys.path (system packages keep priority)."""
    return dependencies.activate(dependencies.default_envs(private_env_dir()))
