"""Finding packages for QGIS's Python, and installing missing ones into a private env."""
from __future__ import annotations

import sys

import numpy

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
