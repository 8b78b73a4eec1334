"""Packaging hygiene: the declared dependency floors are the versions the generated code
demands, the generator is pinned, the default C flags do not fail an install on a warning,
only the agent's namespace is installed, and the unit's Documentation= is a file pip installs."""

from __future__ import annotations

import ast
import configparser
import pathlib
import re
import tomllib

import agent._pb.goalstate_pb2 as gencode
import agent._pb.goalstate_pb2_grpc as stubs

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _setup_constants() -> dict[str, str]:
    tree = ast.parse((ROOT / "setup.py").read_text())
    return {
        node.targets[0].id: node.value.value
        for node in tree.body
        if isinstance(node, ast.Assign)
        and isinstance(node.targets[0], ast.Name)
        and isinstance(node.value, ast.Constant)
        and isinstance(node.value.value, str)
    }


def test_dependency_floors_match_the_generated_code() -> None:
    consts = _setup_constants()
    guard = re.search(
        r"ValidateProtobufRuntimeVersion\(\s*_runtime_version\.Domain\.PUBLIC,\s*(\d+),\s*(\d+),\s*(\d+),",
        pathlib.Path(gencode.__file__).read_text(),
    )
    assert guard is not None
    assert consts["PROTOBUF_GENCODE"] == ".".join(guard.groups())
    assert consts["GRPC_VERSION_GUARD"] == stubs.GRPC_GENERATED_VERSION
    setup_text = (ROOT / "setup.py").read_text()
    assert 'f"grpcio>={GRPC_VERSION_GUARD}"' in setup_text
    assert 'f"protobuf>={PROTOBUF_GENCODE}"' in setup_text


def test_the_generator_is_pinned_at_build() -> None:
    consts = _setup_constants()
    build = tomllib.loads((ROOT / "pyproject.toml").read_text())["build-system"]["requires"]
    assert f"grpcio-tools=={consts['GRPCIO_TOOLS']}" in build
    assert consts["GRPCIO_TOOLS"] == stubs.GRPC_GENERATED_VERSION  # its stubs guard its own version


def test_werror_only_in_the_sanitize_build() -> None:
    flags = re.search(r"^CFLAGS = \[(.*)\]$", (ROOT / "native/build_ffi.py").read_text(), re.M)
    assert flags is not None and "-Werror" not in flags.group(1)
    assert 'ACA_NATIVE_CFLAGS="-Werror ' in (ROOT / "scripts/sanitize.sh").read_text()


def test_only_the_agent_namespace_is_installed() -> None:
    text = (ROOT / "setup.py").read_text()
    packages = re.search(r"packages=(.*),\n", text)
    assert packages is not None and "bench" not in packages.group(1)
    assert (ROOT / "agent/sandbox/__init__.py").exists()


def test_the_units_documentation_is_installed_by_pip() -> None:
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.read(ROOT / "systemd/aca-agent.service")
    doc = unit["Unit"]["Documentation"].removeprefix("file://")
    prefix = unit["Service"]["ExecStart"].split("/bin/aca-agent")[0]
    assert doc.startswith(prefix + "/"), (doc, prefix)
    relative = pathlib.PurePosixPath(doc).relative_to(prefix)
    data_files = (ROOT / "setup.py").read_text()
    assert f'("{relative.parent}", ["{relative.name}"])' in data_files
    assert (ROOT / relative.name).exists()
    assert relative.name in (ROOT / "MANIFEST.in").read_text()  # and in the sdist
