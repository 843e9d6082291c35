"""Outputs written under a temporary name and renamed only on success.

A job opens `PendingOutputs` for all the files it will write, writes to
`pending.temp(path)`, and the files appear under their real names only when
the `with` block ends without an exception. On any exception (bad input
found late, cancellation, a crash in the model) every temporary file and its
GDAL sidecars are removed, so a failed job never leaves a partial output that
could be mistaken for a result.
"""
from __future__ import annotations

import os
import uuid
from pathlib import Path
from types import TracebackType
from typing import Dict, Optional, Type, Union

from .errors import RSLabError

PathLike = Union[str, "os.PathLike[str]"]

_SIDECARS = (".aux.xml", ".ovr", ".msk")


def _remove_with_sidecars(path: Path) -> None:
    for candidate in [path] + [Path(str(path) + s) for s in _SIDECARS]:
        try:
            candidate.unlink()
        except FileNotFoundError:
            pass


class PendingOutputs:
    """Temporary names for a job's outputs, committed together on success."""

    def __init__(self) -> None:
        self._pending: Dict[Path, Path] = {}
        self._created: list = []  # folders made for outputs, removed again if the job fails

    def temp(self, final_path: PathLike) -> str:
        """Return the temporary path to write in place of `final_path`."""
        final = Path(final_path).expanduser().absolute()
        if final in self._pending:
            return str(self._pending[final])
        if final.is_dir():
            raise RSLabError(f"output path {final} is a folder; give a file name")
        if not final.parent.exists():
            missing = [p for p in [final.parent, *final.parent.parents] if not p.exists()]
            try:
                final.parent.mkdir(parents=True, exist_ok=True)
                self._created.extend(missing)  # deepest first
            except OSError as exc:
                raise RSLabError(f"cannot create the output folder {final.parent}: {exc.strerror}") from exc
        if not os.access(final.parent, os.W_OK):
            raise RSLabError(f"the output folder {final.parent} is not writable")
        # Keep the extension last so drivers that look at it still see it.
        tmp = final.with_name(f".{final.stem}.rslab-partial-{uuid.uuid4().hex[:8]}{final.suffix}")
        self._pending[final] = tmp
        return str(tmp)

    def commit(self) -> None:
        """Rename every temporary file to its final name."""
        for final, tmp in self._pending.items():
            if not tmp.exists():
                raise RSLabError(f"internal error: {final.name} was never written")
        for final, tmp in self._pending.items():
            _remove_with_sidecars(final)
            os.replace(tmp, final)
            for suffix in _SIDECARS:
                side = Path(str(tmp) + suffix)
                if side.exists():
                    os.replace(side, Path(str(final) + suffix))
        self._pending.clear()

    def discard(self) -> None:
        """Remove every temporary file (and GDAL sidecars) written so far."""
        for tmp in self._pending.values():
            _remove_with_sidecars(tmp)
        self._pending.clear()
        for folder in self._created:
            try:
                folder.rmdir()  # only if empty
            except OSError:
                pass
        self._created = []

    def __enter__(self) -> "PendingOutputs":
        return self

    def __exit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.discard()
