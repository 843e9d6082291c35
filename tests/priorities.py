"""Helpers for the tests of jobs' thread priorities (core/device.run_at_job_priority): Linux nice values of this
process's threads."""
from __future__ import annotations

import os
import threading
import time
from typing import Collection, Dict, List, Optional, Set


def priority(thread_id: Optional[int] = None) -> int:
    """The nice value of a thread of this process (the calling thread's by default)."""
    return os.getpriority(os.PRIO_PROCESS, thread_id or threading.get_native_id())


def thread_priorities() -> Dict[int, int]:
    """{thread id: nice value} of every thread of this process now (a thread may end while it is read)."""
    found = {}
    for name in os.listdir("/proc/self/task"):
        try:
            found[int(name)] = priority(int(name))
        except OSError:
            pass
    return found


def lowered_threads(base: int, known: Collection[int] = (), deadline_s: float = 10.0) -> Dict[int, str]:
    """{thread id: name} of this process's threads running below `base`, but for those in `known` (lowered before),
    once those of ended jobs have gone (OpenMP's threads leave shortly after the thread that started them)."""
    deadline = time.monotonic() + deadline_s
    while True:
        lowered = {tid: thread_name(tid) for tid, nice in thread_priorities().items()
                   if nice > base and tid not in known}
        if not lowered or time.monotonic() > deadline:
            return lowered
        time.sleep(0.05)


def thread_name(thread_id: int) -> str:
    try:
        with open(f"/proc/self/task/{thread_id}/comm") as comm:
            return comm.read().strip()
    except OSError:
        return ""


def qgis_pool_priorities(qtbot) -> Set[int]:
    """The priorities of all the threads of QGIS's task manager pool (Qt's global pool: QGIS also draws the map
    there), each found by a task that waits for the others: as many tasks at once as the pool has threads."""
    from qgis.core import QgsApplication, QgsTask
    from qgis.PyQt.QtCore import QThreadPool

    count = QThreadPool.globalInstance().maxThreadCount()
    barrier = threading.Barrier(count, timeout=30)
    found: List[object] = []

    def report(task):
        try:
            barrier.wait()  # every task on a thread of its own
            found.append(priority())
        except threading.BrokenBarrierError as exc:
            found.append(exc)

    # held until they end (a task whose Python object is collected never runs); not touched after: the task
    # manager deletes each task when it ends
    tasks = [QgsTask.fromFunction(f"priority {i}", report) for i in range(count)]
    for task in tasks:
        QgsApplication.taskManager().addTask(task)
    qtbot.waitUntil(lambda: len(found) == count, timeout=60000)
    del tasks
    assert all(isinstance(nice, int) for nice in found), found
    return set(found)
