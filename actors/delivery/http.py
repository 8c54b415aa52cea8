"""What the HTTP destinations share: one client session per actor instance, a timeout
on every call, no redirects, and transport failures as Unavailable."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import NamedTuple

import aiohttp

from actors import __version__
from actors.delivery.sender import Sender, Unavailable


class Answer(NamedTuple):
    status: int
    retry_after: str | None
    text: str


class HttpSender(Sender):
    def __init__(
        self,
        timeout: float,
        clock: Callable[[], float] = time.time,
        headers: dict[str, str] | None = None,
    ) -> None:
        self._timeout = timeout
        self._clock = clock
        self._headers = {"User-Agent": f"leadsync/{__version__}", **(headers or {})}
        self._session: aiohttp.ClientSession | None = None

    async def open(self, state: str | None) -> None:
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=self._timeout), headers=self._headers
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def post(self, url: str, body: bytes, headers: dict[str, str]) -> Answer:
        if self._session is None:
            raise RuntimeError(f"{type(self).__name__}.send before open")
        try:
            # No redirects: aiohttp would follow a 301/302 as a GET without the body,
            # and the 200 of that GET would read as delivered.
            async with self._session.post(
                url,
                data=body,
                headers={"Content-Type": "application/json", **headers},
                allow_redirects=False,
            ) as response:
                text = (await response.read()).decode("utf-8", "replace")
        except TimeoutError:
            raise Unavailable(f"no answer within {self._timeout:g} s") from None
        except aiohttp.ClientError as exc:
            raise Unavailable(f"request failed: {type(exc).__name__}: {_said(exc)}") from None
        return Answer(response.status, response.headers.get("Retry-After"), text)


def _said(exc: aiohttp.ClientError) -> str:
    """What went wrong, without what misleads or leaks: a response error's str holds
    the url, whose path may carry a token; a connection error's names aiohttp's SSL
    context ("ssl:default") even for a plain http:// URL."""
    if isinstance(exc, aiohttp.ClientResponseError):
        return exc.message
    if isinstance(exc, aiohttp.ClientConnectorError) and not isinstance(
        exc, aiohttp.ClientSSLError | aiohttp.ClientConnectorCertificateError
    ):
        error = exc.os_error
        why = os.strerror(error.errno) if error.errno and error.errno > 0 else error.strerror
        return f"cannot connect to {exc.host}:{exc.port}: {why or error}"
    return str(exc)
