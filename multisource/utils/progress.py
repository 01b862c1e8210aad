"""Progress bars that read well in a terminal and in a log file (nohup, SLURM, a redirect)."""

from __future__ import annotations

import sys
from typing import Any, Iterable, TextIO

from tqdm import tqdm

LOG_INTERVAL_S = 30.0  # how often a bar writes a line when its output is a file


class LineStream:
    """tqdm's output turned into lines: tqdm redraws its bar with carriage returns, which a log file shows as one
    ever-growing line of every redraw; here each redraw is a line of its own, and blank clears are dropped."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream

    def write(self, text: str) -> None:
        for line in text.replace("\r", "\n").split("\n"):
            if line.strip():
                self.stream.write(line.rstrip() + "\n")

    def flush(self) -> None:
        self.stream.flush()


def progress_bar(iterable: Iterable | None = None, *, enabled: bool = True, stream: TextIO | None = None,
                 **kwargs: Any) -> tqdm:
    """``tqdm(iterable, **kwargs)``; when the output is not a terminal, a plain line every LOG_INTERVAL_S
    instead of a redraw many times a second."""
    stream = stream or sys.stderr
    if not stream.isatty():
        # maxinterval too: tqdm's monitor thread would otherwise redraw every 10 s
        kwargs.update(file=LineStream(stream), mininterval=LOG_INTERVAL_S, maxinterval=LOG_INTERVAL_S,
                      dynamic_ncols=False, ncols=100)
    return tqdm(iterable, disable=not enabled, **kwargs)
