"""Finding and installing the Python packages RS Lab needs, for QGIS and for `make setup`.

QGIS desktop and qgis_process run the system Python, not the project's
.venv. So packages live in a virtual environment made with
`--system-site-packages` from the same interpreter (numpy, GDAL, PyQt5 stay
Debian's), and the plugin *appends* that environment's site-packages to
sys.path at load: Debian's numpy always comes first and is never upgraded or
shadowed. Two environments are looked for: the checkout's `.venv` (what
`make setup` builds) and a plugin-private one under the QGIS profile (what
the plugin's install button builds; never QGIS's own site-packages).

Appending alone is not enough: where pip put a package into the env that
Debian also ships, it did so because Debian's copy does not satisfy a
requirement, and appending would hand out Debian's copy all the same. QGIS
depends (through matplotlib and fonttools) on Debian's sympy 1.11, and
torch 2.13 needs sympy >= 1.13: every optimiser step inside QGIS failed with
"cannot import name 'equal_valued'". So `activate` also makes the env's copy
of such shadowed packages win (`EnvPackagesFirst`), as the venv's own Python
does, except numpy and pip's build tools, and except modules already imported.

This module uses only the standard library, so `make setup` runs it as a
script before anything is installed:

    /usr/bin/python3 core/dependencies.py install .venv
"""
from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import pkgutil
import queue
import re
import shlex
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, List, Optional, Sequence

PLUGIN_DIR = Path(__file__).resolve().parent.parent  # here, not core/resources.py: `make setup` runs this file alone
REQUIREMENTS = PLUGIN_DIR / "requirements.txt"
CONSTRAINTS = PLUGIN_DIR / "constraints.txt"

# pip name -> import name, where they differ.
_IMPORT_NAMES = {"torch-pruning": "torch_pruning", "onnxruntime": "onnxruntime", "flwr": "flwr"}


@dataclass(frozen=True)
class Requirement:
    spec: str  # as in requirements.txt, e.g. "torch==2.13.0"
    name: str  # distribution name, e.g. "torch"
    module: str  # import name, e.g. "torch"


def read_requirements(path: Optional[Path] = None) -> List[Requirement]:
    """The requirements file as Requirement objects (comments and blanks skipped)."""
    out = []
    for line in Path(path or REQUIREMENTS).read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        name = re.split(r"[<>=!~;\[ ]", line, maxsplit=1)[0].strip().lower()
        out.append(Requirement(spec=line, name=name, module=_IMPORT_NAMES.get(name, name.replace("-", "_"))))
    return out


def missing(requirements: Optional[Iterable[Requirement]] = None) -> List[Requirement]:
    """Requirements whose module cannot be imported in this process."""
    reqs = read_requirements() if requirements is None else requirements
    return [r for r in reqs if importlib.util.find_spec(r.module) is None]


# Modules the plugin imports from Debian, not from requirements.txt (pip's wheels of them clash with QGIS's
# GDAL and numpy), with their Debian packages. QGIS itself depends on none of them.
SYSTEM_MODULES = {"rasterio": "python3-rasterio", "scipy": "python3-scipy", "pyqtgraph": "python3-pyqtgraph",
                  "h5py": "python3-h5py"}


LOAD_MODULES = ("rasterio", "scipy", "pyqtgraph")  # imported as the provider and docks load (h5py: v7.3 .mat only)


def missing_system(modules: Optional[Iterable[str]] = None) -> List[str]:
    """The Debian packages of `modules` (SYSTEM_MODULES keys, default all) whose module cannot be imported."""
    return [SYSTEM_MODULES[m] for m in (SYSTEM_MODULES if modules is None else modules)
            if importlib.util.find_spec(m) is None]


def apt_command(packages: Sequence[str]) -> str:
    return "sudo apt-get install " + " ".join(packages)


def missing_package_message(exc: ImportError) -> Optional[str]:
    """What to tell a user whose job stopped on a package RS Lab needs but that is not installed; None when
    the module is none of those (then the error is a bug and keeps its traceback)."""
    name = (getattr(exc, "name", None) or "").split(".")[0]
    # only a package that is not there: a wrong name imported from an installed torch, or a library torch
    # cannot load, is another fault and keeps its traceback
    if not isinstance(exc, ModuleNotFoundError) or not name or importlib.util.find_spec(name) is not None:
        return None
    for requirement in read_requirements():
        if requirement.module == name:
            return (f"the Python package {requirement.name} is not installed, and this job needs it: install "
                    "it with RS Lab > Diagnostics > Install missing packages, then run the job again")
    if name in SYSTEM_MODULES:
        return (f"the Python package {name} is not installed, and this job needs it: install the Debian package "
                f"({apt_command([SYSTEM_MODULES[name]])}), then restart QGIS")
    return None


def site_packages(env_dir: Path) -> Optional[Path]:
    """The env's site-packages for *this* Python's major.minor, or None if it has none."""
    candidate = Path(env_dir) / "lib" / f"python{sys.version_info[0]}.{sys.version_info[1]}" / "site-packages"
    return candidate if candidate.is_dir() else None


# Never taken from an env over the system's copy: numpy (Debian's GDAL, QGIS, rasterio and
# scipy are built against it) and pip's own build tools.
KEEP_SYSTEM_COPY = frozenset({"numpy", "pip", "setuptools", "pkg_resources", "_distutils_hack", "distutils"})


class EnvPackagesFirst:
    """A sys.meta_path finder: these top-level packages come from `site`, not from earlier sys.path entries.

    Only top-level names are redirected; their submodules follow the package's
    own __path__. Namespace packages are left to the normal path search.
    """

    def __init__(self, site: str, names: Iterable[str]) -> None:
        self.site = site
        self.names = frozenset(names)

    def find_spec(self, fullname: str, path=None, target=None):
        if path is not None or fullname not in self.names:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, [self.site])
        return spec if spec is not None and spec.origin is not None else None


def shadowed_packages(site: str) -> List[str]:
    """Top-level packages in `site` that an earlier sys.path entry also provides (and would win)."""
    others = [p for p in sys.path if p != site]
    names = []
    for module in pkgutil.iter_modules([site]):
        if module.name in KEEP_SYSTEM_COPY or module.name in sys.modules:
            continue
        mine = importlib.machinery.PathFinder.find_spec(module.name, [site])
        theirs = importlib.machinery.PathFinder.find_spec(module.name, others)
        if mine is not None and mine.origin is not None and theirs is not None:
            names.append(module.name)
    return sorted(names)


def preferred_packages() -> List[str]:
    """The packages this process imports from an env over the system's copy (for the diagnostics). Finders are
    matched by their class's name: a reloaded plugin has a new EnvPackagesFirst class, and its first load's
    finders (still in sys.meta_path, still used) were not counted."""
    return sorted({n for f in sys.meta_path if type(f).__name__ == EnvPackagesFirst.__name__
                   for n in getattr(f, "names", ())})


# the site-packages folders `activate` appended in this process, kept in the process's environment: a reloaded
# plugin's module state starts empty, and its diagnostics said 'none added' of folders still in use
ADDED_FOLDERS_KEY = "RSLAB_ADDED_FOLDERS"


def added_folders() -> List[str]:
    """Every site-packages folder `activate` appended to sys.path in this process (diagnostics)."""
    return [p for p in os.environ.get(ADDED_FOLDERS_KEY, "").split(os.pathsep) if p]


def activate(env_dirs: Sequence[Path]) -> List[str]:
    """Append the site-packages of each existing env to sys.path; return those added.

    Packages an env holds that the system also ships (and that are not
    imported yet) are then imported from the env (see the module docstring).
    """
    added = []
    for env in env_dirs:
        sp = site_packages(Path(env))
        if sp is not None and str(sp) not in sys.path:
            sys.path.append(str(sp))
            added.append(str(sp))
    if added:
        os.environ[ADDED_FOLDERS_KEY] = os.pathsep.join(added_folders() + added)
    if added:
        importlib.invalidate_caches()
    for sp in added:
        names = shadowed_packages(sp)
        if names:
            sys.meta_path.insert(0, EnvPackagesFirst(sp, names))
    return added


def default_envs(private_env: Optional[Path] = None) -> List[Path]:
    """Where the plugin looks: the checkout's .venv, then the plugin-private env."""
    envs = [PLUGIN_DIR / ".venv"]
    if private_env is not None:
        envs.append(Path(private_env))
    return envs


def system_python() -> str:
    """The interpreter QGIS embeds, as a program path (sys.executable is qgis itself inside QGIS)."""
    version = f"{sys.version_info[0]}.{sys.version_info[1]}"
    for folder in (Path(sys.base_exec_prefix) / "bin", Path("/usr/bin")):
        for name in (f"python{version}", "python3"):
            candidate = folder / name
            if candidate.exists():
                return str(candidate)
    return sys.executable


def install_commands(
    env_dir: Path,
    python: Optional[str] = None,
    requirements: Optional[Path] = None,
    constraints: Optional[Path] = None,
    pip_args: Optional[Sequence[str]] = None,
) -> List[List[str]]:
    """Commands that create (if needed) `env_dir` and install the requirements into it.

    `pip_args` (default: the RSLAB_PIP_ARGS environment variable, split like a
    shell line) go to pip, e.g. `--index-url https://download.pytorch.org/whl/cpu`
    for a CPU-only torch, or `--no-index --find-links DIR` offline.
    """
    env_dir = Path(env_dir)
    requirements = Path(requirements or REQUIREMENTS)
    constraints = Path(constraints or CONSTRAINTS)
    if pip_args is None:
        pip_args = shlex.split(os.environ.get("RSLAB_PIP_ARGS", ""))
    commands = []
    if not (env_dir / "bin" / "python").exists():
        commands.append([python or system_python(), "-m", "venv", "--system-site-packages", str(env_dir)])
    commands.append(
        [str(env_dir / "bin" / "python"), "-m", "pip", "install", "--disable-pip-version-check",
         "--no-warn-script-location", *pip_args, "-r", str(requirements), "-c", str(constraints)]
    )
    return commands


CANCELLED = -1  # what run_commands returns when cancelled


def _pump(stream, lines: "queue.Queue[Optional[str]]") -> None:
    """Copy a command's output lines into `lines`, then None at its end, whatever ends it (a thread of
    run_commands: without the None it would wait for ever)."""
    try:
        for line in stream:
            lines.put(line)
    except (OSError, ValueError):  # the pipe closed under it
        pass
    finally:
        lines.put(None)


def _stop(proc: "subprocess.Popen[str]") -> None:
    """Terminate a command and everything it started (its own session), killed if still there 10 s later."""
    def signal_all(sig: int) -> None:
        try:
            if hasattr(os, "killpg"):
                os.killpg(proc.pid, sig)  # pip's build subprocesses too, which may hold the output pipe
            else:
                proc.send_signal(sig)
        except (ProcessLookupError, PermissionError):
            pass

    signal_all(signal.SIGTERM)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        signal_all(getattr(signal, "SIGKILL", signal.SIGTERM))
        proc.wait()


def run_commands(
    commands: Sequence[Sequence[str]],
    log: Callable[[str], None] = print,
    cancelled: Callable[[], bool] = lambda: False,
    poll: float = 0.2,
) -> int:
    """Run commands one after another, streaming their output lines to `log` (from the calling thread).

    Returns the first non-zero exit code (0 when all succeed). A cancel is noticed within `poll` seconds,
    also while a command prints nothing (pip resolving or building a wheel): the command is terminated
    (killed if it has not stopped 10 s later) and CANCELLED is returned.
    """
    for command in commands:
        log("$ " + " ".join(command))
        proc = subprocess.Popen(
            list(command), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
            errors="replace",  # a build's non-UTF-8 output must not stop the reader (the run would hang)
            start_new_session=True,  # a cancel stops the command's own subprocesses too (ignored on Windows)
        )
        assert proc.stdout is not None
        lines: "queue.Queue[Optional[str]]" = queue.Queue()
        reader = threading.Thread(target=_pump, args=(proc.stdout, lines), daemon=True)
        reader.start()
        try:
            while True:
                try:
                    line = lines.get(timeout=poll)
                except queue.Empty:
                    line = ""
                if line is None:
                    break
                if line:
                    log(line.rstrip())
                if cancelled():
                    _stop(proc)
                    log("cancelled")
                    return CANCELLED
            code = proc.wait()
        finally:
            if proc.poll() is None:
                _stop(proc)
            reader.join(timeout=5)
            if not reader.is_alive():  # else a straggler still holds the pipe: the daemon reader closes with it
                proc.stdout.close()
        if code != 0:
            return code
    return 0


def main(argv: Sequence[str]) -> int:
    if len(argv) != 2 or argv[0] != "install":
        print("usage: python3 core/dependencies.py install ENV_DIR", file=sys.stderr)
        return 2
    return run_commands(install_commands(Path(argv[1])))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
