"""Peak-memory measurement shared by the benchmarks: each measured job runs in a fresh child.

Linux carries a launcher's peak RSS into its child's ru_maxrss (kept across
fork and exec), so the parent must stay small: it only imports and waits,
and every heavy step runs in a child that prints one JSON line. VmHWM, by
contrast, starts afresh at exec: children report both and the benchmarks
warn if they disagree.
"""
from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, Optional, Sequence


def max_rss_bytes() -> int:
    """Peak resident set size of this process so far (ru_maxrss is KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def own_hwm_bytes() -> int:
    """Peak RSS of this process's own address space (VmHWM), which starts afresh at exec."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def spawn_child(script: str, options: Sequence[str], env: Optional[Dict[str, str]] = None) -> Dict[str, Any]:
    """Run `script` with `--child ...` options in a fresh interpreter (with `env` added to this process's
    environment) and return the JSON it prints last."""
    cmd = [sys.executable, str(Path(script).resolve()), *options]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **env} if env else None)
    if proc.returncode != 0:
        raise SystemExit(f"child {' '.join(options)} failed:\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])
