"""The reference client of the HTTP API: signs, sends, decrypts.

Used by the tests, the benchmarks and `python start.py call GET '/api/v1/peer?peer=@x'`,
and a worked example for the crawler team of CONTRACT.md section 1::

    async with ApiClient("http://127.0.0.1:8080", token, aes_key_hex) as api:
        answer = await api.request("GET", "/api/v1/messages?peer=@durov&limit=5")
        if answer.ok:
            print(answer.data["messages"])
        else:
            print(answer.status, answer.error["code"])
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

import orjson
from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest
from tornado.simple_httpclient import HTTPTimeoutError

from service.cryptor import Cipher, DecryptError, Signer

log = logging.getLogger(__name__)

_URI_SAFE = "/?&=:@!$'()*+,;%-._~[]"


@dataclass(frozen=True, slots=True)
class ApiResponse:
    """One answer, decrypted. `error` is the contract's error object when `ok` is false."""

    status: int
    ok: bool
    data: Any = None
    error: dict[str, Any] | None = None
    headers: Mapping[str, str] = field(default_factory=dict)

    @property
    def code(self) -> str | None:
        return None if self.error is None else self.error.get("code")


class ApiError(Exception):
    """The answer could not be read (not decryptable, not the contract's JSON)."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(f"HTTP {status}: {reason}")
        self.status = status


class ApiClient:
    """Signs requests with `token` and decrypts answers with `aes_key_hex` and `cipher`.

    `base_url` may carry a path prefix (a reverse proxy's); the signed URI is the path and
    query the server receives, so the prefix is part of it.
    """

    def __init__(
        self,
        base_url: str,
        token: str,
        aes_key_hex: str,
        cipher: str = "aes-256-gcm",
        *,
        timeout: float = 60.0,
        max_clients: int = 10,
    ) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"base_url must be http(s)://host[:port][/prefix], got {base_url!r}")
        self._origin = f"{parts.scheme}://{parts.netloc}"
        self._prefix = parts.path.rstrip("/")
        self._signer = Signer(token)
        self._cipher = Cipher.create(cipher, aes_key_hex)
        self._timeout = timeout
        self._http = AsyncHTTPClient(force_instance=True, max_clients=max_clients)

    async def __aenter__(self) -> ApiClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    async def request(
        self,
        method: str,
        path_and_query: str,
        body: dict[str, Any] | None = None,
        *,
        params: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> ApiResponse:
        """Sends one signed request and returns its decrypted answer.

        `params` are appended to the query (`urlencode`); `body` is sent as JSON (POST);
        `headers` are extra headers (they may override the signature ones, for tests).
        Raises `ApiError` when the answer can't be decrypted or is not the contract's JSON,
        and an `OSError` when no answer comes: `ConnectionRefusedError`,
        `ConnectionResetError` (closed before answering), or `TimeoutError` after `timeout`
        seconds.
        """
        method = method.upper()
        # What is signed must be what is sent: spaces and non-ASCII typed in a shell
        # (`?q=новости дня`) are percent-encoded here, existing %-escapes kept.
        uri = quote(self._prefix + path_and_query, safe=_URI_SAFE)
        if params:
            uri += ("&" if "?" in uri else "?") + urlencode(params)
        payload = b"" if body is None else orjson.dumps(body)
        sent = self._signer.sign(method, uri, payload)
        if body is not None:
            sent["Content-Type"] = "application/json"
        if headers:
            sent.update(headers)
        # GET and DELETE carry no body; tornado refuses a body on GET and None on POST.
        has_body = method not in ("GET", "HEAD", "DELETE") or bool(payload)
        request = HTTPRequest(
            self._origin + uri,
            method=method,
            headers=sent,
            body=payload if has_body else None,
            allow_nonstandard_methods=True,
            request_timeout=self._timeout,
            decompress_response=True,
        )
        try:
            response = await self._http.fetch(request, raise_error=False)
        except HTTPTimeoutError as e:  # 599: no HTTP answer in time
            raise TimeoutError(f"no answer from {self._origin} in {self._timeout} s") from e
        except HTTPClientError as e:  # 599: the connection closed before an answer
            raise ConnectionResetError(f"no answer from {self._origin}: {e}") from e
        return self._read(response.code, response.headers, response.body or b"", sent["X-Nonce"])

    def _read(self, status: int, headers: Mapping[str, str], raw: bytes, nonce: str) -> ApiResponse:
        encryption = headers.get("X-Encryption")
        if encryption is None:
            plaintext = raw  # a 401, /healthz, or something that is not this service
        elif encryption != self._cipher.name:
            raise ApiError(status, f"answer encrypted with {encryption}, not {self._cipher.name}")
        else:
            try:
                plaintext = self._cipher.decrypt(raw, nonce.encode())
            except DecryptError as e:
                raise ApiError(status, f"can't decrypt the answer: {e}") from e
        try:
            document = orjson.loads(plaintext)
        except orjson.JSONDecodeError as e:
            raise ApiError(status, "the answer is not JSON") from e
        if not isinstance(document, dict) or not isinstance(document.get("ok"), bool):
            raise ApiError(status, "the answer is not the contract's {ok, data|error}")
        return ApiResponse(
            status=status,
            ok=document["ok"],
            data=document.get("data"),
            error=document.get("error"),
            headers=headers,
        )
