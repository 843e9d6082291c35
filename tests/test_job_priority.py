"""Jobs run below QGIS's priority (core/device.run_at_job_priority): in a thread of their own, whose torch threads
inherit its priority, with the job's result or exception handed back."""
from __future__ import annotations

import sys
import threading
import traceback

import pytest

from rslab.core.device import DEFAULT_JOB_NICENESS, job_niceness, run_at_job_priority, select_device
from rslab.core.errors import JobCancelled

from priorities import lowered_threads, priority, thread_priorities

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread priorities are Linux's")


def test_a_job_runs_in_its_own_thread_below_the_callers_priority_and_hands_back_its_result(monkeypatch):
    monkeypatch.delenv("RSLAB_JOB_NICE", raising=False)
    base = priority()
    known = lowered_threads(base, deadline_s=0)  # GDAL's pool, started by an earlier test's job
    seen = {}

    def job(a, b, scale=1):
        seen["thread"] = threading.get_native_id()
        seen["priority"] = priority()
        return (a + b) * scale

    assert run_at_job_priority(job, 2, 3, scale=10) == 50
    assert seen["thread"] != threading.get_native_id()
    assert seen["priority"] == min(19, base + DEFAULT_JOB_NICENESS)
    assert priority() == base  # the caller keeps its own
    assert lowered_threads(base, known) == {}


def test_a_jobs_exception_is_raised_to_the_caller_with_the_jobs_own_frames(monkeypatch):
    monkeypatch.delenv("RSLAB_JOB_NICE", raising=False)

    def failing_job():
        raise ValueError("the two layers do not overlap")

    with pytest.raises(ValueError, match="do not overlap") as raised:
        run_at_job_priority(failing_job)
    assert "failing_job" in "".join(traceback.format_tb(raised.value.__traceback__))

    def cancelled_job():
        raise JobCancelled()

    with pytest.raises(JobCancelled):
        run_at_job_priority(cancelled_job)


@pytest.mark.parametrize("setting, niceness",
                         [("0", 0), ("5", 5), ("40", 19), ("-3", 0), ("soon", DEFAULT_JOB_NICENESS)])
def test_rslab_job_nice_sets_how_far_below_and_zero_runs_the_job_as_it_is(monkeypatch, setting, niceness):
    monkeypatch.setenv("RSLAB_JOB_NICE", setting)
    assert job_niceness() == niceness
    base = priority()
    seen = {}

    def job():
        seen["thread"], seen["priority"] = threading.get_native_id(), priority()

    run_at_job_priority(job)
    assert seen["priority"] == min(19, base + niceness)
    assert (seen["thread"] == threading.get_native_id()) == (niceness == 0)


def test_the_threads_torch_starts_for_a_job_run_at_the_jobs_priority(monkeypatch):
    """The point of it: torch's OpenMP threads, which do a job's arithmetic, are started from the job's thread and
    inherit its priority; they end with it."""
    monkeypatch.delenv("RSLAB_JOB_NICE", raising=False)
    import torch

    select_device("cpu")
    if torch.get_num_threads() < 2:
        pytest.skip("torch runs one thread here: it starts no others")
    base = priority()
    known = lowered_threads(base, deadline_s=0)
    seen = {}

    def job():
        a = torch.ones(1500, 1500)
        for _ in range(3):
            a = (a @ a).clamp(max=1.0)
        seen["job"] = threading.get_native_id()
        seen["lowered"] = {tid for tid, nice in thread_priorities().items() if nice == base + DEFAULT_JOB_NICENESS}

    run_at_job_priority(job)
    assert seen["lowered"] - {seen["job"]} - set(known), "no torch thread ran at the job's priority"
    assert lowered_threads(base, known) == {}  # torch's threads end with the job's
