"""Build for the Alcor host agent.

The protobuf/gRPC modules are generated from ``proto/`` at build time (never committed)
into ``agent/_pb``, so the code always matches the schema in the tree; the DHCP engine in
``native/`` is compiled into the extension ``agent._native`` (cffi API mode).
"""

from __future__ import annotations

import pathlib

from setuptools import Command, find_packages, setup
from setuptools.command.build_py import build_py
from setuptools.command.develop import develop
from setuptools.command.egg_info import egg_info

ROOT = pathlib.Path(__file__).resolve().parent
PROTO_DIR = ROOT / "proto"
PB_PACKAGE = "agent/_pb"
# The code generator is pinned (pyproject.toml's build requirements say the same), so the
# generated modules' version guards are known: grpcio-tools 1.85.1 writes gRPC stubs that
# require grpcio >= 1.85.1 and protobuf modules (its bundled protoc) that require protobuf >= 7.35.1.
GRPCIO_TOOLS = "1.85.1"
GRPC_VERSION_GUARD = "1.85.1"
PROTOBUF_GENCODE = "7.35.1"


class GenerateProto(Command):
    """Run grpc_tools.protoc over proto/*.proto into agent/_pb."""

    description = "generate protobuf and gRPC modules from proto/"
    user_options: list = []

    def initialize_options(self) -> None:
        pass

    def finalize_options(self) -> None:
        pass

    def run(self) -> None:
        from grpc_tools import protoc

        out = ROOT / PB_PACKAGE
        out.mkdir(parents=True, exist_ok=True)
        (out / "__init__.py").write_text('"""Generated from proto/ at build time; do not edit."""\n')
        include = pathlib.Path(protoc.__file__).parent / "_proto"
        for proto in sorted(PROTO_DIR.glob("*.proto")):
            args = [
                "protoc",
                f"-I{PB_PACKAGE}={PROTO_DIR}",
                f"-I{include}",
                f"--python_out={ROOT}",
                f"--pyi_out={ROOT}",
                f"--grpc_python_out={ROOT}",
                f"{PB_PACKAGE}/{proto.name}",
            ]
            if protoc.main(args) != 0:
                raise RuntimeError(f"protoc failed on {proto}")


class BuildPy(build_py):
    def run(self) -> None:
        self.run_command("generate_proto")
        super().run()


class Develop(develop):
    def run(self) -> None:
        self.run_command("generate_proto")
        super().run()


class EggInfo(egg_info):
    """The file list (SOURCES.txt) names agent/_pb's modules, so they must exist first."""

    def run(self) -> None:
        self.run_command("generate_proto")
        super().run()


setup(
    name="aca-agent",
    version="0.1.0",
    description="Per-host network control agent for Alcor VPCs (Open vSwitch, gRPC/Kafka goal states)",
    python_requires=">=3.11",
    # agent._pb is generated during the build, after this list is made: name it explicitly,
    # or a (non-editable) install ships without it. Only the agent's namespace is installed (the
    # sandbox is agent.sandbox); bench/ runs from the checkout, never from site-packages.
    packages=sorted({*find_packages(include=["agent", "agent.*"]), "agent._pb"}),
    # Floors = the versions agent/_pb is generated for (GRPC_VERSION_GUARD), which
    # tests/unit/test_packaging.py reads back from the generated modules' own version guards.
    install_requires=[
        "ovs>=3.1",
        "pyroute2>=0.7",
        f"grpcio>={GRPC_VERSION_GUARD}",
        f"protobuf>={PROTOBUF_GENCODE}",
        "confluent-kafka>=2.3",
        "cffi>=1.16",
        "prometheus-client>=0.17",  # [metrics]: the exposition format and its HTTP server
        "grpcio-health-checking>=1.60",  # grpc.health.v1 on the agent's gRPC server
    ],
    extras_require={
        "test": [
            "pytest>=8",
            "scapy>=2.5",
            "ruff>=0.5",
            f"grpcio-tools=={GRPCIO_TOOLS}",
            "hypothesis>=6.100",
        ],
        "bench": ["matplotlib>=3.6"],  # bench.scale's plots (bench/ runs from the checkout)
    },
    # What the unit's Documentation= names, under the install prefix (/opt/aca-venv in the unit).
    data_files=[
        ("share/doc/aca-agent", ["README.md"]),
        ("share/doc/aca-agent/docs", sorted(str(p.relative_to(ROOT)) for p in (ROOT / "docs").glob("*.md"))),
    ],
    # The DHCP engine (native/dhcp.c, native/dhcp.h) as the cffi extension agent._native.
    cffi_modules=["native/build_ffi.py:ffibuilder"],
    cmdclass={
        "generate_proto": GenerateProto,
        "build_py": BuildPy,
        "develop": Develop,
        "egg_info": EggInfo,
    },
    entry_points={
        "console_scripts": [
            "aca-agent=agent.daemon:main",
            "acactl=agent.cli.acactl:main",
            "aca-sandbox=agent.sandbox.cli:main",
        ]
    },
)
