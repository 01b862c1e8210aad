"""Which bins serve as a target's sources: the evaluation protocol of a sweep or an experiment.

``leave-one-out`` (the paper's): every other bin, earlier and later. ``past``: only the bins before the target,
the setting a deployed system is in. ``window:N``: the N latest bins before the target (fewer when fewer exist).
``stream``: bins arrive one at a time; the model deployed for a bin is built from the model deployed for the bin
before it and that bin's source model only (experiment/stream.py), so its one new source is the previous bin.
Under ``past``, ``window:N`` and ``stream`` the first bin has no sources, so a sweep skips it with a note.
"""

from __future__ import annotations

from typing import Sequence

from ..config import ConfigError

DEFAULT_PROTOCOL = "leave-one-out"
STREAM = "stream"
PROTOCOLS = (DEFAULT_PROTOCOL, "past", "window:N", STREAM)
_ALIASES = {"loo": DEFAULT_PROTOCOL, "leave_one_out": DEFAULT_PROTOCOL, "leave-one-bin-out": DEFAULT_PROTOCOL}


def canonical_protocol(text: str) -> str:
    """The protocol's one spelling (``leave-one-out``, ``past``, ``window:3``); a clear error otherwise."""
    value = _ALIASES.get(str(text).strip().lower(), str(text).strip().lower())
    if value in (DEFAULT_PROTOCOL, "past", STREAM):
        return value
    kind, _, n = value.partition(":")
    if kind == "window" and n.isdigit() and int(n) >= 1:
        return f"window:{int(n)}"
    raise ConfigError(f"--protocol {text!r} is not a protocol; choose one of {', '.join(PROTOCOLS)} "
                      "(N a whole number >= 1).")


def protocol_sources(bins: Sequence[str], target: str, protocol: str) -> list[str]:
    """The target's sources under ``protocol``, in chronological order (``bins`` is the dataset's bin order)."""
    i = list(bins).index(target)
    if protocol == DEFAULT_PROTOCOL:
        return [b for b in bins if b != target]
    earlier = list(bins[:i])
    if protocol == "past":
        return earlier
    if protocol == STREAM:  # the new source; what came before arrives as the model deployed for the bin before
        return earlier[-1:]
    n = int(protocol.split(":")[1])
    return earlier[-n:]


def check_sources(bins: Sequence[str], target: str, sources: Sequence[str], protocol: str) -> None:
    """Explicit ``--sources`` must be allowed by the protocol (a later bin is never a source under ``past``)."""
    allowed = set(protocol_sources(bins, target, protocol))
    outside = [s for s in sources if s not in allowed]
    if outside:
        raise ConfigError(f"--sources {outside} are not allowed for target {target} under --protocol {protocol} "
                          f"(allowed: {sorted(allowed, key=list(bins).index)}); drop them or change the protocol.")
