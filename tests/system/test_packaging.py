"""The front door: facesyncd installs as a Python user installs it, and works from a built wheel.

These tests reach the package index (PyPI) as install.sh does; pip and uv take what they already
downloaded from their caches.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from conftest import API_KEY, API_KEY_ENV, REPO, add_photos, requires_shared, write_config
from fake_immich import FakeImmich

UV = Path(sys.executable).with_name("uv")


def _resolved(what: list[str], platform: str, python: str, given: str | None = None) -> dict[str, str]:
    """What `uv pip compile` resolves `what` to (name -> version) for another platform and Python,
    with wheels only and the pins of constraints.txt; `given`: the requirements read from stdin."""
    result = subprocess.run(
        [
            str(UV),
            "pip",
            "compile",
            *what,
            "--python-platform",
            platform,
            "--python-version",
            python,
            "--only-binary",
            ":all:",
            "-c",
            str(REPO / "constraints.txt"),
            "--no-header",
            "--no-annotate",
            "--quiet",
        ],
        input=given,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
    )
    assert result.returncode == 0, result.stderr
    pins = (line.split("==", 1) for line in result.stdout.splitlines() if "==" in line)
    return {name.strip(): version.split(";")[0].strip() for name, version in pins}


@pytest.mark.parametrize("python", ["3.11", "3.12", "3.13"])
def test_windows_installs_without_a_compiler(python: str) -> None:
    """`pip install "facesyncd[directml]"` on Windows: every dependency must come as a wheel for
    win_amd64 (no compiler there). pip's --platform misreads environment markers, so uv resolves
    for the Windows target; hnswlib has no Windows wheel at all, chroma-hnswlib (the same module)
    has one for Python 3.11 only, and newer Pythons go without (the index then searches exactly)."""
    resolved = _resolved([str(REPO / "pyproject.toml"), "--extra", "directml"], "x86_64-pc-windows-msvc", python)
    pins = set(resolved)
    assert "onnxruntime-directml" in pins
    assert not pins & {"onnxruntime", "onnxruntime-gpu"}, "a second onnxruntime flavour"
    assert "opencv-python-headless" in pins and "opencv-python" not in pins, "OpenCV with libGL"
    assert "insightface" not in pins and "hnswlib" not in pins
    assert ("chroma-hnswlib" in pins) == (python == "3.11")


@pytest.mark.parametrize("python", ["3.11", "3.12", "3.13"])
def test_the_cuda_extra_brings_cuda_and_cudnn_as_pinned(python: str) -> None:
    """`./install.sh --cuda` on Linux: onnxruntime-gpu with NVIDIA's CUDA and cuDNN libraries as
    wheels, at the versions constraints.txt pins (those a CUDA check ran with), so that a machine
    needs only the driver; and no second onnxruntime flavour."""
    extra = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]["cuda"]
    resolved = _resolved(["-"], "x86_64-manylinux_2_28", python, given="\n".join(extra))
    pinned = dict(
        line.split("==")
        for line in (REPO / "constraints.txt").read_text().splitlines()
        if line.startswith(("onnxruntime-gpu==", "nvidia-"))
    )
    assert {"nvidia-cuda-runtime", "nvidia-cudnn-cu13", "nvidia-cublas"} <= pinned.keys()
    assert all(resolved.get(name) == version for name, version in pinned.items()), (resolved, pinned)
    assert not resolved.keys() & {"onnxruntime", "onnxruntime-directml"}, "a second onnxruntime flavour"


def _source_copy(target: Path) -> Path:
    """The working tree without what is not part of the package's source (the venv, caches)."""
    ignored = shutil.ignore_patterns(
        ".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache", "tests", "benchmarks"
    )
    shutil.copytree(REPO, target, ignore=ignored)
    return target


@requires_shared
@pytest.mark.slow
def test_a_built_wheel_installs_into_a_clean_venv_and_syncs(fake: FakeImmich, tmp_path: Path) -> None:
    """Built, then installed with `[cpu]` into a new venv, the wheel must bring everything it needs:
    migrations inside the package, exactly one onnxruntime, a headless OpenCV, no insightface."""
    source = _source_copy(tmp_path / "source")
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path / "dist"), str(source)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert built.returncode == 0, built.stderr
    [wheel] = (tmp_path / "dist").glob("facesyncd-*.whl")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    python = venv / "bin" / "python"
    installed = subprocess.run(
        [str(python), "-m", "pip", "install", "-q", "-c", str(REPO / "constraints.txt"), f"{wheel}[cpu]"],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert installed.returncode == 0, installed.stderr
    listing = subprocess.run([str(python), "-m", "pip", "list", "--format", "json"], capture_output=True, text=True)
    packages = {entry["name"].lower() for entry in json.loads(listing.stdout)}
    assert "onnxruntime" in packages and not packages & {"onnxruntime-gpu", "onnxruntime-directml"}
    assert "opencv-python-headless" in packages and "opencv-python" not in packages
    assert "insightface" not in packages

    add_photos(fake, ["wild/obama", "wild/biden"])
    config = write_config(tmp_path / "run", fake.url)
    environment = {**os.environ, API_KEY_ENV: API_KEY, "PYTHONPATH": ""}
    facesyncd = venv / "bin" / "facesyncd"
    result = subprocess.run(
        [str(facesyncd), "--config", str(config), "sync"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,  # nowhere near the source: nothing can be found beside the package
        env=environment,
    )
    assert result.returncode == 0, result.stderr
    assert len(list((tmp_path / "run" / "facesets").glob("faceset_*/face_*.jpg"))) >= 3
    status = subprocess.run(
        [str(facesyncd), "--config", str(config), "status", "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        env=environment,
    )
    assert status.returncode == 0 and json.loads(status.stdout)["identities"] >= 1
