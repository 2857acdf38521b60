"""Progress that reads well both on a terminal and in a log file.

On a terminal: a tqdm bar. Written to a file or a CI log (standard error is not a terminal):
a line when the work starts, one every ``every_s`` seconds with the rate and the time left, and
one at the end; never carriage-return redraws. ``terminal_only`` progress (the steps inside
one training epoch) shows a bar on a terminal and nothing in a log.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from typing import IO, Any, Generic, TypeVar

from tqdm import tqdm

T = TypeVar("T")


def duration(seconds: float) -> str:
    """``42 s``, ``3.5 min`` or ``1.2 h``."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


class LineProgress(Generic[T]):
    """tqdm's small interface (iterate, ``update``, ``set_postfix``, ``close``) as log lines."""

    def __init__(
        self,
        iterable: Iterable[T] | None,
        total: int | None,
        desc: str,
        initial: int = 0,
        every_s: float = 30.0,
        stream: IO[str] | None = None,
    ) -> None:
        self.iterable, self.desc, self.every_s = iterable, desc, every_s
        self.total = total if total is not None else _length(iterable)
        self.n = self.start_n = initial
        self.stream = stream or sys.stderr
        self.started = self.last = time.monotonic()
        self.postfix = ""
        self.closed = False
        self._write("started")

    def __iter__(self) -> Iterator[T]:
        assert self.iterable is not None
        try:
            for item in self.iterable:
                yield item
                self.update(1)
        finally:
            self.close()

    def update(self, count: int = 1) -> None:
        self.n += count
        if time.monotonic() - self.last >= self.every_s:
            self._write(self._status())

    def set_postfix(self, **values: Any) -> None:
        self.postfix = ", ".join(f"{name} {value}" for name, value in values.items())

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._write(f"done: {self.n}" + (f"/{self.total}" if self.total else "") + self._took())

    def _took(self) -> str:
        return f" in {duration(time.monotonic() - self.started)}"

    def _status(self) -> str:
        elapsed = time.monotonic() - self.started
        done = self.n - self.start_n
        text = f"{self.n}/{self.total}" if self.total else str(self.n)
        if self.total and done > 0 and self.n < self.total:
            left = elapsed / done * (self.total - self.n)
            text += f", {duration(elapsed)} so far, about {duration(left)} left"
        return text + (f" ({self.postfix})" if self.postfix else "")

    def _write(self, text: str) -> None:
        self.last = time.monotonic()
        print(f"{self.desc}: {text}", file=self.stream, flush=True)


def _length(iterable: Iterable[Any] | None) -> int | None:
    try:
        return len(iterable)  # type: ignore[arg-type]
    except TypeError:
        return None


def on_terminal(stream: IO[str] | None = None) -> bool:
    stream = stream or sys.stderr
    return bool(getattr(stream, "isatty", lambda: False)())


def progress(
    iterable: Iterable[T] | None = None,
    *,
    desc: str,
    total: int | None = None,
    initial: int = 0,
    disable: bool = False,
    leave: bool = True,
    terminal_only: bool = False,
    every_s: float = 30.0,
) -> Any:
    """A tqdm bar on a terminal, log lines elsewhere (see the module's docstring)."""
    if disable or (terminal_only and not on_terminal()):
        return tqdm(iterable, total=total, initial=initial, desc=desc, disable=True)
    if on_terminal():
        return tqdm(iterable, total=total, initial=initial, desc=desc, leave=leave)
    return LineProgress(iterable, total, desc, initial=initial, every_s=every_s)
