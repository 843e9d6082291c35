"""Finding packages for QGIS's Python, and installing missing ones into a private env."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from importlib import metadata
from pathlib import Path

import numpy
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from rslab.core import dependencies
from wheels import build_wheel


def test_requirements_are_parsed_with_import_names(tmp_path):
    req = tmp_path / "requirements.txt"
    req.write_text("# comment\ntorch==2.13.0\ntorch-pruning==1.6.1  # pruning\n\nonnx>=1.15\nno-such-package-rslab==1.0\n")
    parsed = dependencies.read_requirements(req)
    assert [(r.name, r.module, r.spec) for r in parsed] == [
        ("torch", "torch", "torch==2.13.0"),
        ("torch-pruning", "torch_pruning", "torch-pruning==1.6.1"),
        ("onnx", "onnx", "onnx>=1.15"),
        ("no-such-package-rslab", "no_such_package_rslab", "no-such-package-rslab==1.0"),
    ]
    absent = [r.name for r in dependencies.missing(parsed)]
    assert "torch" not in absent and "torch-pruning" not in absent  # installed by make setup
    assert absent == ["no-such-package-rslab"]


def test_project_requirements_are_satisfied_in_the_test_env():
    assert dependencies.missing() == []


def test_install_into_private_env_then_activate(tmp_path):
    wheels = tmp_path / "wheels"
    build_wheel(wheels)
    req = tmp_path / "requirements.txt"
    req.write_text("rslabprobe==1.0\n")
    env = tmp_path / "env"
    reqs = dependencies.read_requirements(req)
    assert [r.name for r in dependencies.missing(reqs)] == ["rslabprobe"]

    commands = dependencies.install_commands(env, requirements=req, pip_args=["--no-index", "--find-links", str(wheels)])
    assert commands[0][1:] == ["-m", "venv", "--system-site-packages", str(env)]
    lines = []
    assert dependencies.run_commands(commands, log=lines.append) == 0
    assert any("Successfully installed rslabprobe-1.0" in line for line in lines)
    # the env sees Debian's numpy, so pip installed nothing else
    assert not list(dependencies.site_packages(env).glob("numpy*"))

    before = list(sys.path)
    try:
        added = dependencies.activate([env, tmp_path / "no-such-env"])
        assert added == [str(dependencies.site_packages(env))]
        assert sys.path[-1] == added[0]  # appended: system packages keep priority
        assert dependencies.missing(reqs) == []
        import rslabprobe

        assert rslabprobe.VERSION == "1.0"
        assert dependencies.activate([env]) == []  # idempotent
        assert numpy.__file__.startswith("/usr/lib/python3/")
    finally:
        sys.path[:] = before
        sys.modules.pop("rslabprobe", None)

    # a second run skips creating the env
    assert len(dependencies.install_commands(env, requirements=req)) == 1


def _system_python(script: str) -> subprocess.CompletedProcess:
    """Run `script` in the system Python (QGIS's interpreter) with core/dependencies.py loaded as `deps`."""
    prelude = textwrap.dedent(f"""
        import importlib.util, sys
        spec = importlib.util.spec_from_file_location("deps", {str(Path(dependencies.__file__))!r})
        deps = importlib.util.module_from_spec(spec)
        sys.modules["deps"] = deps
        spec.loader.exec_module(deps)
    """)
    return subprocess.run([dependencies.system_python(), "-c", prelude + textwrap.dedent(script)],
                          capture_output=True, text=True, timeout=300, cwd="/")


def _package(folder: Path, name: str, where: str) -> None:
    (folder / name).mkdir(parents=True)
    (folder / name / "__init__.py").write_text(f"WHERE = {where!r}\n")
    (folder / name / "sub.py").write_text(f"WHERE = {where!r}\n")


def test_an_envs_copy_of_a_system_package_wins_but_never_numpy(tmp_path):
    """What pip put into the env wins over the system's copy, as in the venv's own Python; numpy stays Debian's."""
    system, env = tmp_path / "system", tmp_path / "env"
    site = env / "lib" / f"python{sys.version_info[0]}.{sys.version_info[1]}" / "site-packages"
    for name in ("rslabshadowed", "rslabimported"):
        _package(system, name, "system")
        _package(site, name, "env")
    _package(site, "rslabenvonly", "env")
    (site / "numpy").mkdir()
    (site / "numpy" / "__init__.py").write_text("raise ImportError('the env numpy was imported')\n")
    done = _system_python(f"""
        import json
        sys.path.insert(0, {str(system)!r})
        import rslabimported  # imported before activation: stays what it is
        added = deps.activate([{str(env)!r}])
        import numpy, rslabshadowed, rslabshadowed.sub, rslabenvonly, rslabimported.sub
        print(json.dumps({{"added": added, "shadowed": rslabshadowed.WHERE, "sub": rslabshadowed.sub.WHERE,
                          "env_only": rslabenvonly.WHERE, "imported": rslabimported.WHERE,
                          "imported_sub": rslabimported.sub.WHERE, "numpy": numpy.__file__,
                          "last": sys.path[-1]}}))
    """)
    assert done.returncode == 0, done.stderr[-2000:]
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen["added"] == [str(site)] and seen["last"] == str(site)
    assert (seen["shadowed"], seen["sub"], seen["env_only"]) == ("env", "env", "env")
    assert (seen["imported"], seen["imported_sub"]) == ("system", "system")
    assert seen["numpy"].startswith("/usr/lib/python3/")


def test_torch_trains_in_the_system_python_with_the_project_env(tmp_path):
    """QGIS's Python plus the env: an optimiser step works although Debian's sympy is too old for torch.

    QGIS depends on Debian's sympy 1.11 (through matplotlib and fonttools);
    torch 2.13 imports `equal_valued` from sympy >= 1.13 at the first
    optimiser step. This is what BSDM, AR-CDNet training and compression do
    inside QGIS and qgis_process.
    """
    done = _system_python(f"""
        deps.activate([{sys.prefix!r}])
        import numpy, sympy, torch
        model = torch.nn.Linear(3, 2)
        optimiser = torch.optim.AdamW(model.parameters(), lr=1e-3)
        model(torch.ones(4, 3)).sum().backward()
        optimiser.step()
        print("stepped", sympy.__file__, numpy.__file__)
    """)
    assert done.returncode == 0, done.stderr[-3000:]
    _, sympy_file, numpy_file = done.stdout.split()
    assert sympy_file.startswith(sys.prefix) and numpy_file.startswith("/usr/lib/python3/")


def test_failed_install_reports_exit_code(tmp_path):
    req = tmp_path / "requirements.txt"
    req.write_text("rslab-package-that-does-not-exist==9.9\n")
    env = tmp_path / "env"
    lines = []
    code = dependencies.run_commands(
        dependencies.install_commands(env, requirements=req, pip_args=["--no-index"]), log=lines.append
    )
    assert code != 0
    assert any("No matching distribution" in line for line in lines)


def test_a_cancel_stops_a_command_that_prints_nothing(tmp_path):
    """pip resolving or building prints nothing for long stretches: the cancel used to wait for its next line
    (here: never, so the command ran to the end and the run counted as a success)."""
    import time

    marker = tmp_path / "finished"
    command = [sys.executable, "-c", f"import time, pathlib; time.sleep(4); pathlib.Path({str(marker)!r}).touch()"]
    start = time.monotonic()
    lines = []
    code = dependencies.run_commands([command, command], log=lines.append,
                                     cancelled=lambda: time.monotonic() - start > 0.5)
    assert code == dependencies.CANCELLED and lines[-1] == "cancelled"
    time.sleep(4)
    assert not marker.exists()  # terminated, not left to finish


def test_output_that_is_not_utf8_and_subprocesses_holding_the_pipe_do_not_hang_a_run(tmp_path):
    """A byte that is not UTF-8 killed the output reader and left the run waiting for ever; a cancel stopped the
    command but not a subprocess it had started (which kept the output pipe open, and the cancel waiting)."""
    import time

    latin1 = [sys.executable, "-c", "import sys; sys.stdout.buffer.write(b'M\\xfcller\\n'); sys.exit(3)"]
    lines = []
    assert dependencies.run_commands([latin1], log=lines.append) == 3 and lines[-1] == "M\ufffdller"

    marker = tmp_path / "straggler_finished"
    start = time.monotonic()
    straggler = ["sh", "-c", f"(sleep 3; touch {marker}) & echo started; sleep 30"]
    code = dependencies.run_commands([straggler], log=lines.append, cancelled=lambda: time.monotonic() - start > 0.5)
    assert code == dependencies.CANCELLED
    time.sleep(4)
    assert not marker.exists()  # the command's own subprocess was stopped with it


def test_setup_pins_every_package_it_installs_at_the_installed_version():
    """make setup installs requirements.txt and requirements-dev.txt with constraints-lock.txt: the three
    must pin, at the version this env has, every package pip put into the env for them (their
    dependencies' dependencies too), so a fresh machine gets the set the suite passes with. Debian's
    packages (numpy, jinja2, ...) are the system's and are not pinned here."""
    root = dependencies.PLUGIN_DIR
    files = {name: dependencies.read_requirements(root / name)
             for name in ("requirements.txt", "requirements-dev.txt", "constraints-lock.txt")}
    pins = {canonicalize_name(r.name): r.spec.split("==", 1)[1].strip()
            for listed in files.values() for r in listed if "==" in r.spec}
    todo = [canonicalize_name(r.name) for name in ("requirements.txt", "requirements-dev.txt") for r in files[name]]
    environment = {"extra": ""}
    seen, unpinned = set(), []
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue  # a marker-less requirement this platform does not install
        if not str(dist.locate_file("")).startswith(sys.prefix):
            continue  # Debian's copy (the venv sees the system's site-packages)
        installed = dist.version.split("+", 1)[0]  # torch's "+cpu": the pin 2.13.0 matches it (PEP 440)
        if pins.get(name) != installed:
            unpinned.append(f"{name}=={installed} (pinned: {pins.get(name)})")
        for requirement in map(Requirement, dist.requires or []):
            if requirement.marker is None or requirement.marker.evaluate(environment):
                todo.append(canonicalize_name(requirement.name))
    assert "torch" in seen and "protobuf" in seen, seen
    assert unpinned == [], "write these into constraints-lock.txt: " + ", ".join(sorted(unpinned))
