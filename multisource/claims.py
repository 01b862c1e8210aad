"""Who is running a job (an experiment, a source model): claims beside its output, so that two sweeps, or a
sweep and a single command, sharing one results folder never run (or replace) the same job twice.

A claim is a file ``.<output name>.claim`` (``.trial_1.claim``, ``.era_1.ckpt.claim``) holding its owner, ``<host>-<pid>``. It appears with the owner already
written (written aside, then hard-linked into place, which fails if a claim exists), is kept fresh by a
heartbeat while its experiment runs, and is taken over when its owner is gone (this machine) or it has not been
touched for ``STALE_AFTER_S`` (any host: a lost Ray node, a restarted container).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

log = logging.getLogger(__name__)

HOST = socket.gethostname().replace("-", "_")
# Generous against clock skew between hosts sharing the results folder.
HEARTBEAT_S = 30.0
STALE_AFTER_S = 600.0


def process_tag() -> str:
    """``<host>-<pid>``: who owns a staging folder or a claim (hosts differ on a Ray cluster)."""
    return f"{HOST}-{os.getpid()}"


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def owner_is_gone(tag: str) -> bool:
    """The process named by ``tag`` ran on this machine and has ended (unknowable for other hosts: False)."""
    host, _, pid = tag.rpartition("-")
    return host == HOST and pid.isdigit() and not pid_alive(int(pid))


def claim_path(out_dir: Path) -> Path:
    return out_dir.with_name(f".{out_dir.name}.claim")


def read_owner(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8").strip()
    except OSError:
        return ""


def _claim_is_stale(path: Path, owner: str) -> bool:
    """Nobody runs this claim any more: its process on this machine has ended, or (any host) it has not been
    touched for STALE_AFTER_S."""
    try:
        age = time.time() - path.stat().st_mtime
    except FileNotFoundError:
        return True
    return owner_is_gone(owner) or age > STALE_AFTER_S


def try_claim(out_dir: Path) -> bool:
    """Claim an experiment for this process; False when another live process holds it."""
    path = claim_path(out_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    tag = process_tag()
    aside = path.with_name(f"{path.name}.{tag}")
    aside.write_text(tag, encoding="utf-8")
    try:
        for _ in range(2):
            try:
                os.link(aside, path)
                return True
            except FileExistsError:
                owner = read_owner(path)
                # This process's own tag counts like any other: held while its heartbeat keeps it fresh, and taken
                # over once untouched for STALE_AFTER_S (left by an earlier process with the same host and pid, e.g.
                # a restarted container; before, such a claim was refused forever).
                if not _claim_is_stale(path, owner):
                    return False
                log.warning("Taking over the stale claim %s of %s.", path, owner or "an unknown process")
                path.unlink(missing_ok=True)
        return False
    finally:
        aside.unlink(missing_ok=True)


def release_claim(out_dir: Path) -> None:
    path = claim_path(out_dir)
    if read_owner(path) == process_tag():  # never remove a claim another process took over
        path.unlink(missing_ok=True)


def remove_if_stale(out_dir: Path) -> None:
    """Remove a claim its process left behind when it was killed after finishing (between writing its result
    and letting go), so a finished result carries no dead claim; a live claim is left alone."""
    path = claim_path(out_dir)
    owner = read_owner(path) if path.exists() else None
    if owner is not None and owner != process_tag() and owner_is_gone(owner):
        path.unlink(missing_ok=True)


def claimed_elsewhere(out_dir: Path) -> bool:
    """Another process holds the experiment's claim and is still running it."""
    path = claim_path(out_dir)
    if not path.exists():
        return False
    owner = read_owner(path)
    return owner != process_tag() and not _claim_is_stale(path, owner)


class Heartbeat:
    """Touches a claim every ``HEARTBEAT_S`` from a daemon thread while the experiment runs."""

    def __init__(self, path: Path) -> None:
        self.path, self.stop = path, threading.Event()
        self.thread = threading.Thread(target=self._beat, name=f"claim-heartbeat {path.name}", daemon=True)

    def _beat(self) -> None:
        while not self.stop.wait(HEARTBEAT_S):
            try:
                os.utime(self.path)
            except OSError:  # released meanwhile
                return

    def __enter__(self) -> "Heartbeat":
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()


@contextmanager
def holding(out_dir: Path) -> Iterator[bool]:
    """Claim ``out_dir`` for the ``with`` block (heartbeat on, released after); yields False, holding nothing,
    when another live process has it."""
    if not try_claim(out_dir):
        yield False
        return
    try:
        with Heartbeat(claim_path(out_dir)):
            yield True
    finally:
        release_claim(out_dir)
