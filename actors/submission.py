"""A source's request to the log writer, and the slot its reply lands in; and the
error that says the log could not take it."""

from __future__ import annotations

import anyio

from storage.log import AppendRequest, AppendResult


class NotLogged(Exception):
    """The database refused the write (locked, disk full, read-only): retry later."""


class Submission:
    """One request's work and the slot its reply lands in."""

    def __init__(self, request: AppendRequest) -> None:
        self.request = request
        self.result: AppendResult | None = None
        self.error: Exception | None = None
        self._done = anyio.Event()

    def resolve(self, result: AppendResult | None, error: Exception | None = None) -> None:
        self.result, self.error = result, error
        self._done.set()

    async def wait(self) -> AppendResult:
        await self._done.wait()
        if self.error is not None:
            raise self.error
        assert self.result is not None
        return self.result
