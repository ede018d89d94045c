"""Packaging: what `pip install .` and its extras install on each platform, and that the wheel and sdist work.

The slow tests build the wheel and sdist once (`python -m build`, which gets hatchling from PyPI), ask PyPI
what the wheel resolves to on other platforms (`pip install --dry-run --report`), and install the wheel into
a fresh virtual environment. They need PyPI and fail, saying so, when it cannot be reached.

pip evaluates environment markers (platform_system, platform_machine...) for the machine it runs on even with
--platform, so the resolution runs pip with the target's marker environment put in place of the host's;
the report's `environment` shows which one pip used, and the tests check it.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tarfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from email.parser import Parser
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
SERVER_ONLY = {
    "onnxruntime",
    "onnxruntime-gpu",
    "onnx",
    "onnxconverter-common",
    "prometheus-client",
    "uvloop",
    "grpcio-reflection",
    "pycocotools",
}
COMMANDS = (
    "segstream-server",
    "segstream-client",
    "segstream-models",
    "segstream-eval",
    "segstream-bench",
    "segstream-ros2-bridge",
)

# Runs pip with the target platform's environment markers instead of this machine's.
_PIP_FOR_TARGET = """
import json, sys
from pip._vendor.packaging import markers
target = json.loads(sys.argv[1])
host = markers.default_environment
markers.default_environment = lambda: {**host(), **target}
from pip._internal.cli.main import main
sys.exit(main(sys.argv[2:]))
"""


@dataclass(frozen=True)
class Target:
    name: str
    platforms: tuple[str, ...]
    markers: dict[str, str]
    onnxruntime: str  # the ONNX Runtime distribution the `server` extra must bring there


def _markers(sys_platform: str, system: str, machine: str) -> dict[str, str]:
    return {
        "sys_platform": sys_platform,
        "platform_system": system,
        "platform_machine": machine,
        "os_name": "nt" if system == "Windows" else "posix",
        "python_version": "3.12",
        "python_full_version": "3.12.0",
    }


def _manylinux(arch: str) -> tuple[str, ...]:
    """What a glibc 2.28 Linux installs: pip does not widen an explicit --platform to older manylinux tags."""
    return (*(f"manylinux_2_{minor}_{arch}" for minor in range(28, 16, -1)), f"manylinux2014_{arch}")


TARGETS = (
    Target("linux-x86_64", _manylinux("x86_64"), _markers("linux", "Linux", "x86_64"), "onnxruntime-gpu"),
    Target("linux-aarch64", _manylinux("aarch64"), _markers("linux", "Linux", "aarch64"), "onnxruntime"),
    Target("macos-arm64", ("macosx_14_0_arm64",), _markers("darwin", "Darwin", "arm64"), "onnxruntime"),
    Target("windows-amd64", ("win_amd64",), _markers("win32", "Windows", "AMD64"), "onnxruntime-gpu"),
)


@dataclass(frozen=True)
class Dist:
    wheel: Path
    sdist: Path


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _tail(text: str, lines: int = 15) -> str:
    # This machine's pip configuration may name local indexes that do not exist; their warnings are noise here.
    kept = [line for line in text.splitlines() if "is ignored: it is neither a file nor a directory" not in line]
    return "\n".join(kept[-lines:])


def _run(args: list[str], timeout: float = 240, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout, env=env, stdin=subprocess.DEVNULL)


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Dist:
    """The sdist, and the wheel built from it, once for this module."""
    out = tmp_path_factory.mktemp("dist")
    result = _run([sys.executable, "-m", "build", "--outdir", str(out), str(ROOT)], timeout=300)
    if result.returncode != 0:
        pytest.fail(
            "python -m build failed (it installs hatchling from PyPI into an isolated environment, so it needs "
            f"PyPI):\n{_tail(result.stdout + result.stderr)}"
        )
    wheels, sdists = sorted(out.glob("segstream-*.whl")), sorted(out.glob("segstream-*.tar.gz"))
    assert len(wheels) == 1 and len(sdists) == 1, sorted(p.name for p in out.iterdir())
    return Dist(wheel=wheels[0], sdist=sdists[0])


def _resolve(target: Target, requirement: str) -> dict[str, Any]:
    """pip's --dry-run report of installing `requirement` on `target` from PyPI, binary wheels only."""
    args = [sys.executable, "-c", _PIP_FOR_TARGET, json.dumps(target.markers), "install", "--dry-run"]
    args += ["--ignore-installed", "--only-binary=:all:", "--python-version", "3.12", "--quiet", "--report", "-"]
    for platform in target.platforms:
        args += ["--platform", platform]
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    result = _run([*args, requirement], env=env)
    if result.returncode != 0:
        pytest.fail(
            f"pip could not resolve {requirement} for {target.name}: a requirement without a wheel for that "
            f"platform, or PyPI out of reach (these tests need it):\n"
            f"{_tail(result.stderr)}"
        )
    report: dict[str, Any] = json.loads(result.stdout)
    environment = report["environment"]
    assert (environment["platform_system"], environment["platform_machine"]) == (
        target.markers["platform_system"],
        target.markers["platform_machine"],
    ), "pip did not evaluate the markers for the target platform"
    return report


def _names(report: dict[str, Any]) -> set[str]:
    return {_canonical(item["metadata"]["name"]) for item in report["install"]}


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize("target", TARGETS, ids=lambda t: t.name)
def test_the_client_installs_no_onnx_runtime_nor_server_packages(dist: Dist, target: Target) -> None:
    names = _names(_resolve(target, str(dist.wheel)))
    assert {"segstream", "grpcio", "grpcio-health-checking", "protobuf", "numpy", "opencv-python-headless"} <= names
    assert names & SERVER_ONLY == set()
    assert "opencv-python" not in names  # one OpenCV build only


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize("target", TARGETS, ids=lambda t: t.name)
def test_the_server_extra_brings_the_onnx_runtime_the_platform_has(dist: Dist, target: Target) -> None:
    names = _names(_resolve(target, f"{dist.wheel}[server]"))
    other = ({"onnxruntime", "onnxruntime-gpu"} - {target.onnxruntime}).pop()
    assert target.onnxruntime in names and other not in names, sorted(names)
    assert {"onnx", "grpcio-reflection", "prometheus-client", "onnxconverter-common", "pycocotools"} <= names
    assert ("uvloop" in names) == (target.markers["platform_system"] != "Windows")
    assert "opencv-python-headless" in names and "opencv-python" not in names


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_server_cpu_brings_the_cpu_onnx_runtime_even_where_the_gpu_one_exists(dist: Dist) -> None:
    names = _names(_resolve(TARGETS[0], f"{dist.wheel}[server-cpu]"))
    assert "onnxruntime" in names and "onnxruntime-gpu" not in names
    assert {"onnx", "grpcio-reflection", "prometheus-client"} <= names


def _requirements(metadata: str) -> dict[str, set[str]]:
    """Extra ("" for none) -> the canonical names of what it requires, from a wheel's METADATA."""
    found: dict[str, set[str]] = {}
    for line in Parser().parsestr(metadata).get_all("Requires-Dist") or []:
        name = _canonical(re.split(r"[\s;<>=!~\[(]", line, maxsplit=1)[0])
        extra = re.search(r"extra == ['\"]([^'\"]+)['\"]", line)
        found.setdefault(extra.group(1) if extra else "", set()).add(name)
    return found


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_the_wheel_holds_the_packages_the_proto_and_every_command(dist: Dist) -> None:
    with zipfile.ZipFile(dist.wheel) as wheel:
        files = set(wheel.namelist())
        info = f"{dist.wheel.name.split('-py3')[0]}.dist-info"
        entry_points = wheel.read(f"{info}/entry_points.txt").decode()
        metadata = wheel.read(f"{info}/METADATA").decode()
    for module in (
        "segstream/v1/segmentation.proto",
        "segstream/v1/segmentation_pb2.py",
        "segstream/wire/codec.py",
        "segstream/wire/extras.py",
        "segstream/client/cli.py",
        "segstream/client/_live_view.html",
        "segstream/ros2/node.py",
        "segstream/server/cli.py",
        "segstream/models/__main__.py",
        "segstream/evaluation/cli.py",
        "segstream/bench/cli.py",
    ):
        assert module in files, module
    for command in COMMANDS:
        assert re.search(rf"^{command} = ", entry_points, re.MULTILINE), command
    requires = _requirements(metadata)
    assert requires[""] & SERVER_ONLY == set() and "opencv-python-headless" in requires[""]
    assert not requires["dev"] & {"onnxruntime", "onnxruntime-gpu"}  # dev goes with server or server-cpu
    assert requires["gui"] == {"opencv-python"}
    assert {"server", "server-cpu", "server-base", "eval", "video", "foxglove", "dev"} <= requires.keys()


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_the_sdist_holds_the_proto_and_every_source_root(dist: Dist) -> None:
    with tarfile.open(dist.sdist) as sdist:
        top = dist.sdist.name.removesuffix(".tar.gz")
        names = {name.removeprefix(f"{top}/") for name in sdist.getnames()}
    for path in (
        "pyproject.toml",
        "README.md",
        "PKG-INFO",
        "protos/segstream/v1/segmentation.proto",
        "protos/segstream/wire/codec.py",
        "client/segstream/client/cli.py",
        "client/segstream/ros2/node.py",
        "server/segstream/server/cli.py",
        "models/segstream/models/cli.py",
        "tools/segstream/evaluation/cli.py",
        "tools/segstream/bench/cli.py",
    ):
        assert path in names, path
    assert not any(name.startswith((".venv/", ".hypothesis/", ".git/")) for name in names)


@pytest.fixture(scope="module")
def client_venv(dist: Dist, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A fresh virtual environment with the wheel installed without extras: its bin directory."""
    venv = tmp_path_factory.mktemp("venv") / "client"
    created = _run([sys.executable, "-m", "venv", str(venv)])
    assert created.returncode == 0, created.stderr
    bin_dir = venv / ("Scripts" if os.name == "nt" else "bin")
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    installed = _run(
        [str(bin_dir / "python"), "-m", "pip", "install", "--quiet", str(dist.wheel)], timeout=280, env=env
    )
    if installed.returncode != 0:
        pytest.fail(f"pip install {dist.wheel.name} failed (it needs PyPI):\n{_tail(installed.stderr)}")
    yield bin_dir


def _command(bin_dir: Path, command: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("SEGSTREAM_")}
    return _run([str(bin_dir / command), *args], timeout=60, env=env)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_the_installed_wheel_has_no_onnx_runtime(client_venv: Path) -> None:
    probe = "import importlib.util as u; print([m for m in ('onnxruntime', 'onnx', 'cv2') if u.find_spec(m)])"
    result = _run([str(client_venv / "python"), "-c", probe])
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "['cv2']"


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize("command", ["segstream-client", "segstream-server", "segstream-bench", "segstream-eval"])
def test_help_works_in_a_client_install(client_venv: Path, command: str) -> None:
    result = _command(client_venv, command, "--help")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"usage: {command}")
    assert result.stderr == ""


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize(
    ("command", "args"),
    [
        ("segstream-server", ["--model", "m.onnx"]),
        ("segstream-models", ["--help"]),
        ("segstream-bench", ["--model", "m.onnx"]),
        ("segstream-eval", ["--images", ".", "--annotations", "a.json", "--model", "m.onnx"]),
    ],
)
def test_server_commands_without_the_server_extra_say_what_to_install(
    client_venv: Path, command: str, args: list[str]
) -> None:
    result = _command(client_venv, command, *args)
    assert result.returncode == 2
    assert result.stdout == ""
    line = result.stderr.strip()
    assert "\n" not in line and "Traceback" not in line
    assert line.startswith(f"{command}: error: ") and "install segstream[server]" in line
    assert "onnx" in line


# Fast: the same promises in this environment, with the server extra's packages hidden from the import system.
_HIDE_SERVER_EXTRA = """
import sys
for name in ("onnxruntime", "onnx", "onnxconverter_common", "prometheus_client", "grpc_reflection", "uvloop"):
    sys.modules[name] = None  # `import` raises ModuleNotFoundError; importlib.util.find_spec answers None
module, *argv = sys.argv[1:]
import importlib
sys.exit(importlib.import_module(module).main(argv))
"""


def _without_server_extra(module: str, *argv: str) -> subprocess.CompletedProcess[str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("SEGSTREAM_")}
    return _run([sys.executable, "-c", _HIDE_SERVER_EXTRA, module, *argv], timeout=60, env=env)


@pytest.mark.parametrize(
    ("module", "prog"),
    [
        ("segstream.server.cli", "segstream-server"),
        ("segstream.bench.cli", "segstream-bench"),
        ("segstream.evaluation.cli", "segstream-eval"),
        ("segstream.client.cli", "segstream-client"),
    ],
)
def test_help_needs_no_server_extra(module: str, prog: str) -> None:
    result = _without_server_extra(module, "--help")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"usage: {prog}")


_ALL = "onnxruntime, onnx, grpcio-reflection and prometheus-client"


@pytest.mark.parametrize(
    ("module", "argv", "missing"),
    [
        ("segstream.server.cli", ["--model", "m.onnx"], f"{_ALL} are"),
        ("segstream.bench.cli", ["--model", "m.onnx"], f"{_ALL} are"),
        ("segstream.models.__main__", ["build", "tiny"], "onnx is"),
        (
            "segstream.evaluation.cli",
            ["--images", ".", "--annotations", "a.json", "--model", "m"],
            "onnxruntime and onnx are",
        ),
    ],
)
def test_running_without_the_server_extra_is_one_line_naming_it(module: str, argv: list[str], missing: str) -> None:
    result = _without_server_extra(module, *argv)
    assert result.returncode == 2
    line = result.stderr.strip()
    assert "\n" not in line, result.stderr
    assert f"{missing} not installed" in line
    assert "install segstream[server]" in line and "'.[server-cpu]'" in line


def test_eval_against_a_server_needs_no_server_extra() -> None:
    result = _without_server_extra(
        "segstream.evaluation.cli", "--images", ".", "--annotations", "missing.json", "--server", "localhost:1"
    )
    assert result.returncode == 2
    assert "missing.json" in result.stderr and "segstream[server]" not in result.stderr
