"""Writes deferred to the end of the event loop's pass, for every connection at once.

A connection that has something to send marks itself (its `flush_scheduled`) and joins the pass's list;
one loop callback then flushes them all. Replies decided in one pass leave in one TLS record and one
system call per connection, and a peer's wake-up does not preempt the loop halfway through a pass.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Generic, Protocol, TypeVar


class Flushable(Protocol):
    flush_scheduled: bool

    def flush(self) -> None: ...


T = TypeVar("T", bound=Flushable)


class EndOfPass(Generic[T]):
    """Flush every added connection once, in one callback at the end of this loop pass."""

    __slots__ = ("loop", "on_error", "pending", "scheduled")

    def __init__(self, loop: asyncio.AbstractEventLoop, on_error: Callable[[T], None]) -> None:
        self.loop = loop
        self.on_error = on_error  # called (inside the except) when one connection's flush raises
        self.pending: list[T] = []
        self.scheduled = False

    def add(self, item: T) -> None:
        self.pending.append(item)
        if not self.scheduled:
            self.scheduled = True
            self.loop.call_soon(self._flush)

    def _flush(self) -> None:
        self.scheduled = False
        pending, self.pending = self.pending, []
        for item in pending:
            if item.flush_scheduled:
                try:
                    item.flush()
                except Exception:  # one transport failing must not keep the others' writes
                    self.on_error(item)
