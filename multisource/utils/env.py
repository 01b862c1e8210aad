"""Versions and git commit recorded with every result."""

from __future__ import annotations

import platform
import socket
import subprocess
import sys
from functools import lru_cache
from importlib import metadata

from .. import __version__
from ..paths import PROJECT_ROOT

_PACKAGES = ("torch", "torchvision", "lightning", "timm", "transformers", "peft", "numpy", "scikit-learn", "fvcore")


@lru_cache(maxsize=1)
def git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    commit = out.stdout.strip()
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=no"], cwd=PROJECT_ROOT, capture_output=True, text=True
    ).stdout.strip()
    return commit + ("-dirty" if dirty else "")


def package_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {}
    for name in _PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def ray_node_id() -> str | None:
    """The Ray node this process runs on when it is a Ray task (None otherwise; Ray is never imported here)."""
    ray = sys.modules.get("ray")
    if ray is None or not ray.is_initialized():
        return None
    return ray.get_runtime_context().get_node_id()


def environment(device: str | None = None) -> dict:

    env = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "multisource": __version__,
        "git_commit": git_commit(),
        "packages": package_versions(),
        "device": device,
        "hostname": socket.gethostname(),
        "ray_node_id": ray_node_id(),  # which node of a Ray cluster ran it (None outside Ray)
    }
    env["torch"] = env["packages"].get("torch")
    return env
