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


MB = 1e6


def timed_child(job, *args: Any) -> None:
    """In a child: run `job(*args)` and print its seconds, memory (before, peak) and what it found as the JSON line
    `spawn_child` returns. `job` returns a JSON-able summary of its result."""
    import time

    baseline = own_hwm_bytes()
    t0 = time.perf_counter()
    found = job(*args)
    seconds = time.perf_counter() - t0
    print(json.dumps({"seconds": seconds, "baseline": baseline, "peak": own_hwm_bytes(), "maxrss": max_rss_bytes(),
                      "found": found}))


def print_passes(figures: Dict[str, Dict[str, Any]], labels: Sequence[Sequence[str]], megapixels: float) -> None:
    """A table of timed passes over one raster: seconds, megapixels per second, the child's memory before and at
    its peak, and the job's share; `labels` pairs each figure's key with its row's label."""
    width = max(len(label) for _, label in labels)
    print(f"  {'pass':<{width}} {'s':>7} {'MP/s':>7} {'base MB':>8} {'peak MB':>8} {'job MB':>7}")
    for job, label in labels:
        f = figures[job]
        print(f"  {label:<{width}} {f['seconds']:>7.1f} {megapixels / f['seconds']:>7.1f} {f['baseline'] / MB:>8.0f} "
              f"{f['peak'] / MB:>8.0f} {(f['peak'] - f['baseline']) / MB:>7.0f}")
