"""Recent recognition events, and their fan-out to the Live pages that are open.

Events arrive on paho's network thread (``add``); each open Live page holds an asyncio queue
on the web server's loop (``listen``). Events are de-duplicated on ``event_id`` (QoS 1
redeliveries and rounds republished after a lease carry the same id). A page that cannot keep
up (its queue is full) is dropped; its browser reconnects and gets the backlog again.
"""

from __future__ import annotations

import asyncio
import threading
from collections import OrderedDict
from dataclasses import dataclass

from rllfpr.wire.messages import RecognitionEvent

QUEUE_SIZE = 256


@dataclass(frozen=True)
class EventFilter:
    site: str = ""
    camera: str = ""
    decision: str = ""  # "", "match" or "unknown"

    def accepts(self, event: RecognitionEvent) -> bool:
        return (
            (not self.site or event.site == self.site)
            and (not self.camera or event.camera == self.camera)
            and (not self.decision or event.decision == self.decision)
        )


@dataclass(frozen=True)
class Counts:
    events: int
    unknown: int


class Listener:
    """One open Live page: its queue lives on the web server's loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.queue: asyncio.Queue[RecognitionEvent | None] = asyncio.Queue(QUEUE_SIZE)

    def offer(self, event: RecognitionEvent | None) -> None:
        """On the listener's loop: queue the event, or end a listener that fell behind."""
        if self.queue.full():
            self.queue.get_nowait()
            event = None
        self.queue.put_nowait(event)

    async def next(self, timeout_s: float) -> RecognitionEvent | None:
        """The next event; None when this listener fell behind; ``TimeoutError`` when none
        came within ``timeout_s`` (cancelling the wait loses nothing)."""
        return await asyncio.wait_for(self.queue.get(), timeout_s)


class LiveEvents:
    def __init__(self, keep: int) -> None:
        self.keep = keep
        self._events: OrderedDict[str, RecognitionEvent] = OrderedDict()
        self._listeners: set[Listener] = set()
        self._lock = threading.Lock()
        self._total = 0
        self._unknown = 0

    def add(self, event: RecognitionEvent) -> bool:
        """Record an event and hand it to every open page; False for a duplicate."""
        key = str(event.event_id)
        with self._lock:
            if key in self._events:
                return False
            self._events[key] = event
            while len(self._events) > self.keep:
                self._events.popitem(last=False)
            self._total += 1
            self._unknown += event.decision == "unknown"
            listeners = list(self._listeners)
        for listener in listeners:
            try:
                listener.loop.call_soon_threadsafe(listener.offer, event)
            except RuntimeError:  # its loop has closed
                self._drop(listener)
        return True

    def recent(self, only: EventFilter | None = None) -> list[RecognitionEvent]:
        """The kept events, newest first."""
        with self._lock:
            events = list(reversed(self._events.values()))
        return [e for e in events if only is None or only.accepts(e)]

    def counts(self) -> Counts:
        """Events and unknown decisions received since the console started."""
        with self._lock:
            return Counts(self._total, self._unknown)

    def places(self) -> tuple[list[str], list[str]]:
        """Sites and cameras of the kept events (the Live page's filter choices)."""
        with self._lock:
            events = list(self._events.values())
        return sorted({e.site for e in events}), sorted({e.camera for e in events})

    def listen(self) -> Listener:
        """Register an open page (on the calling event loop); ``unlisten`` it when done."""
        listener = Listener(asyncio.get_running_loop())
        with self._lock:
            self._listeners.add(listener)
        return listener

    def unlisten(self, listener: Listener) -> None:
        self._drop(listener)

    def listeners(self) -> int:
        with self._lock:
            return len(self._listeners)

    def _drop(self, listener: Listener) -> None:
        with self._lock:
            self._listeners.discard(listener)
