"""A bounded queue for one agent stream (the messages it sends, the batches it parked), in order: what
`asyncio.Queue` does, for less memory.

A server keeps one per connected agent for as long as the agent stays connected. `asyncio.Queue` holds three
deques of 64 slots each (items, getters, putters; about 2.2 KB together) for at most a few dozen messages and one
reader; this keeps a list of messages and, only while someone waits, a list of their wake-up futures.
"""

from __future__ import annotations

import asyncio
from typing import Generic, TypeVar

T = TypeVar("T")


class Outbox(Generic[T]):
    """`put` waits while `limit` messages are queued; `join` waits until every message taken was `task_done`."""

    __slots__ = ("_limit", "_messages", "_unfinished", "_waiters")

    def __init__(self, limit: int) -> None:
        self._messages: list[T] = []  # a handful at a time: pop(0) is cheap, and an empty list is small
        self._limit = limit
        self._unfinished = 0  # queued, or taken and not yet done
        self._waiters: list[asyncio.Future[None]] | None = None  # woken when anything above changes

    def __len__(self) -> int:
        return len(self._messages)

    async def put(self, message: T) -> None:
        while len(self._messages) >= self._limit:
            await self._changed()
        self._messages.append(message)
        self._unfinished += 1
        self._wake()

    async def get(self) -> T:
        while not self._messages:
            await self._changed()
        message = self._messages.pop(0)
        self._wake()
        return message

    def task_done(self) -> None:
        if self._unfinished <= 0:
            raise ValueError("task_done() called more often than messages were taken")
        self._unfinished -= 1
        self._wake()

    async def join(self) -> None:
        while self._unfinished:
            await self._changed()

    def clear(self) -> list[T]:
        """Take every message still queued, as they stand, when nobody will read them any more."""
        left, self._messages = self._messages, []
        self._unfinished -= len(left)
        self._wake()
        return left

    async def _changed(self) -> None:
        """Wait until the outbox changed; each waiter then checks again what it waits for, in the order they came."""
        waiter = asyncio.get_running_loop().create_future()
        if self._waiters is None:
            self._waiters = []
        self._waiters.append(waiter)
        try:
            await waiter
        finally:
            if self._waiters is not None and waiter in self._waiters:  # cancelled before it was woken
                self._waiters.remove(waiter)

    def _wake(self) -> None:
        waiters, self._waiters = self._waiters, None
        for waiter in waiters or ():
            if not waiter.done():
                waiter.set_result(None)
