"""Clearing the frames that QGIS 3.22 keeps through an algorithm's exception (provider/leaked_frames.py)."""
from __future__ import annotations

import sys
import weakref

from rslab.provider.leaked_frames import clear_returned


class Held:
    """Something a frame's local holds (a dialog's feedback, its progress task)."""


def _called(frames):
    frames.append(sys._getframe())
    held = Held()
    frames.append(weakref.ref(held))
    return held is not None


def test_a_returned_frame_and_its_returned_callers_are_cleared_up_to_the_first_still_running():
    frames = []

    def caller():
        held = Held()
        frames.append(weakref.ref(held))
        return _called(frames)

    assert caller()
    inner, inner_held, caller_held = frames[1], frames[2], frames[0]
    assert inner_held() is not None and caller_held() is not None  # Kept by the returned frames.
    assert clear_returned(inner) is sys._getframe()  # This test still runs: its frame is where it stopped.
    assert inner_held() is None and caller_held() is None


def test_a_copy_of_the_locals_taken_while_the_frame_ran_is_cleared_too():
    """RSLabProvider.gui_thread_runs reads the batch dialog's frame's f_locals; Python 3.11 keeps that copy on the
    frame, and clear() alone left the dialog's feedback (and its progress task) in it."""
    frames = []

    def caller():
        held = Held()
        frames.append(weakref.ref(held))
        sys._getframe().f_locals  # What gui_thread_runs does while the frame runs.
        return _called(frames)

    assert caller()
    clear_returned(frames[1])
    assert frames[0]() is None


def test_a_generator_in_the_chain_is_left_running():
    frames = []

    def generator():
        yield _called(frames)
        yield "resumed"

    steps = generator()
    assert next(steps)
    assert clear_returned(frames[0]) is None and frames[1]() is None  # Cleared up to the generator, not beyond.
    assert next(steps) == "resumed"
