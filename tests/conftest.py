"""Real QGIS, started once per test session, offscreen, with Processing initialised.

QGIS writes settings under a temporary profile (QGIS_CUSTOM_CONFIG_PATH), so
the tests never touch the user's own QGIS profile.
"""
from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
_CONFIG = tempfile.mkdtemp(prefix="rslab-qgis-profile-")
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
    (link_dir / "rslab").symlink_to(REPO)
    sys.path.insert(0, str(link_dir))


_link_package()
sys.path.append("/usr/share/qgis/python/plugins")

from qgis.core import QgsApplication  # noqa: E402

_APP = QgsApplication([], True)
_APP.initQgis()

from processing.core.Processing import Processing  # noqa: E402

Processing.initialize()


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
