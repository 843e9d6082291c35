"""What the plugin runs on: versions, compute device and threads, as copyable text.

The diagnostics dialog and bug reports use this. The caller adds what only it
knows (the QGIS version); everything here works without QGIS.
"""
from __future__ import annotations

import os
import platform
import sys
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from . import dependencies
from .resources import metadata_value

Row = Tuple[str, str]


def plugin_version() -> str:
    """The version line of metadata.txt."""
    return metadata_value("version") or "unknown"


def _module_version(name: str) -> str:
    try:
        module = __import__(name)
    except Exception as exc:  # a broken install should show, not crash the dialog
        return f"not available ({type(exc).__name__}: {exc})" if not isinstance(exc, ImportError) else "not installed"
    return str(getattr(module, "__version__", "installed"))


def _gdal_versions() -> str:
    parts = []
    try:
        from osgeo import gdal

        parts.append(f"{gdal.__version__} (osgeo)")
    except ImportError:
        pass
    try:
        import rasterio

        parts.append(f"{rasterio.__gdal_version__} (rasterio {rasterio.__version__})")
    except ImportError:
        parts.append("rasterio not installed")
    return ", ".join(parts)


def _torch_rows() -> List[Row]:
    try:
        import torch
    except ImportError:
        return [("torch", "not installed: deep-learning jobs are unavailable"), ("compute device", "none (torch missing)")]
    from .device import cpu_threads, describe_device, job_niceness, select_device

    device = select_device()
    rows = [("torch", f"{torch.__version__} from {Path(torch.__file__).parent.parent}")]
    rows.append(("compute device", describe_device(device)))
    if torch.cuda.is_available():
        rows.append(("CUDA", f"{torch.version.cuda}, {torch.cuda.device_count()} GPU(s)"))
    else:
        rows.append(("CUDA", "no GPU visible to torch; jobs run on the CPU"))
    rows.append(("CPU threads", f"torch uses {torch.get_num_threads()} of {os.cpu_count()} logical cores "
                                f"(RS Lab default {cpu_threads()}; set RSLAB_THREADS to change)"))
    niceness = job_niceness()
    rows.append(("job priority", f"{niceness} below QGIS's, so the map draws first (set RSLAB_JOB_NICE to change)"
                                 if niceness else "QGIS's own (below it on Linux only; RSLAB_JOB_NICE sets how far)"))
    return rows


def collect(extra: Optional[Dict[str, str]] = None) -> List[Row]:
    """All rows, in display order; `extra` (e.g. QGIS version) goes first."""
    rows: List[Row] = [("RS Lab", plugin_version())]
    rows += list((extra or {}).items())
    rows += [
        ("Python", f"{platform.python_version()} ({dependencies.system_python()})"),
        ("platform", platform.platform()),
        ("numpy", _module_version("numpy")),
        ("GDAL", _gdal_versions()),
        ("scipy", _module_version("scipy")),
    ]
    rows += _torch_rows()
    added = [p for p in dependencies.added_folders() if p in sys.path]
    rows.append(("package folders", ", ".join(added) or "none added"))
    rows.append(("env over system", ", ".join(dependencies.preferred_packages()) or "none"))
    absent = dependencies.missing()
    rows.append(("missing packages", ", ".join(r.spec for r in absent) if absent else "none"))
    system = dependencies.missing_system()
    rows.append(("missing Debian packages", dependencies.apt_command(system) if system else "none"))
    return rows


def as_text(rows: List[Row]) -> str:
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k.ljust(width)} : {v}" for k, v in rows)
