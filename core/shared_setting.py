"""A process-wide setting that RS Lab's blocks share across threads: the first block in sets it, the last one out
puts back what the first found.

Some of GDAL's settings are one for the whole QGIS process, not one per thread: whether its Python bindings raise
exceptions, the size of its block cache (through which QGIS draws the map too). A block that saved the setting on
entry and put it back on exit misbehaved as soon as two jobs overlapped (A in, B in, A out, B out): A's exit
switched the setting back under B, still inside, and B's exit then "restored" the value it had found, A's, for
good (GDAL exceptions left on for other plugins; QGIS's block cache left at 256 MB).
"""
from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Callable, Generic, Iterator, Optional, TypeVar

Value = TypeVar("Value")


class SharedSetting(Generic[Value]):
    """`with setting.held():` the setting is `value` inside, while any thread is inside; as it was after."""

    def __init__(self, read: Callable[[], Value], write: Callable[[Value], None], value: Value) -> None:
        self._read, self._write, self.value = read, write, value
        self._lock = threading.Lock()
        self._inside = 0  # blocks running now, in any thread
        self._found: Optional[Value] = None  # the setting before the first of them

    @contextmanager
    def held(self) -> Iterator[None]:
        with self._lock:
            if self._inside == 0:
                self._found = self._read()
                self._write(self.value)
            self._inside += 1
        try:
            yield
        finally:
            with self._lock:
                self._inside -= 1
                if self._inside == 0:
                    self._write(self._found)
