"""The installed package's version, for ``--version`` of aca-agent and acactl."""

from __future__ import annotations

from importlib import metadata


def version() -> str:
    try:
        return metadata.version("aca-agent")
    except metadata.PackageNotFoundError:  # run from a checkout that was never installed
        return "unknown"
