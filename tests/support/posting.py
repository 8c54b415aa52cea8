"""Requests to a daemon's ingestion API as Segment's clients send them, and its answers
as they read them.

`post` is the short form the pipeline tests use (a /v1/batch from the web source, the
status code back); `call` and `send` are the whole exchange (any path, method, key and
headers; status, headers and the JSON body back). `refused` is how a client reads a
refusal, for answers from a daemon process and from the API served in process alike.
"""

from __future__ import annotations

import base64
import http.client
import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from tests.support.daemon_process import WRITE_KEYS, DaemonProcess

WEB_KEY = WRITE_KEYS["web"]


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    """With lower-case names."""
    body: Any
    """The JSON answer, or the text when it is not JSON."""


def basic_auth(key: str) -> str:
    """The Authorization header Segment's clients send: the write key as user name."""
    return "Basic " + base64.b64encode(f"{key}:".encode()).decode()


def post(daemon: DaemonProcess, batch: list[dict[str, Any]], ascii_only: bool = True) -> int:
    """POST /v1/batch with the web source's key; the status code.
    `ascii_only=False` sends text as raw UTF-8 rather than \\u escapes."""
    request = urllib.request.Request(
        daemon.url + "/v1/batch",
        data=json.dumps({"batch": batch}, ensure_ascii=ascii_only).encode(),
        headers={"Content-Type": "application/json", "Authorization": basic_auth(WEB_KEY)},
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def call(
    daemon: DaemonProcess,
    path: str,
    body: bytes | Iterator[bytes] | None = None,
    *,
    key: str | None = WEB_KEY,
    headers: dict[str, str] | None = None,
    method: str = "POST",
) -> Answer:
    """One request on its own connection, with the write key as Basic auth user name.

    An iterator body is sent with chunked transfer encoding, as a streaming client
    would, so the size limit cannot rely on Content-Length.
    """
    sent = {"Content-Type": "application/json"}
    if key is not None:
        sent["Authorization"] = basic_auth(key)
    sent.update(headers or {})
    connection = http.client.HTTPConnection("127.0.0.1", daemon.http_port, timeout=30)
    try:
        streamed = body is not None and not isinstance(body, bytes)
        connection.request(method, path, body=body, headers=sent, encode_chunked=streamed)
        response = connection.getresponse()
        raw = response.read()
        answer_headers = {k.lower(): v for k, v in response.getheaders()}
    finally:
        connection.close()
    return answer(response.status, answer_headers, raw)


def send(daemon: DaemonProcess, path: str, message: Any, **kwargs: Any) -> Answer:
    """`message` as a JSON body to `path` (the options are `call`'s)."""
    return call(daemon, path, json.dumps(message).encode(), **kwargs)


def answer(status: int, headers: dict[str, str], raw: bytes) -> Answer:
    """An answer as a client reads it: the body parsed when it says it is JSON."""
    text = raw.decode(errors="replace")
    is_json = headers.get("content-type", "").startswith("application/json")
    return Answer(status, headers, json.loads(text) if is_json else text)


def refused(answer: Answer, status: int, message: str) -> None:
    """A refusal as Segment's clients read it: `{success: false, code, message}`."""
    assert answer.status == status, answer.body
    assert answer.body["success"] is False
    assert answer.body["message"] == message
