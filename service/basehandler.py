"""What every route of service/handler.py shares: `BaseHandler` (the services as typed
properties, the one error→HTTP mapping) and `ApiHandler` (the signed, size-bounded,
encrypted /api/v1 request), with the parameter readers the routes use.

A /api/v1 request goes: `prepare` (signature headers well formed and fresh; a body only
on POST, within its size, and within the `BodyBudget` of unverified bodies) → the body
streams in (bounded in bytes and time) → `_serve`: full signature check (HMAC over the
body, nonce replay) → draining? → the route's `on_<verb>` → `{"ok": true, "data": ...}` as
orjson, encrypted with the request's nonce as associated data.

Every handler streams its body (`stream_request_body`), so each decides in `prepare`,
before a byte of it is read: the routes outside /api/v1 take none (400), a GET or DELETE
takes none (413), and what the unverified bodies hold together is bounded (429). Tornado
never parses a form body here.

Every error goes through the one `write_error`: a `common.errors.TgcError` answers its
`status` and `code` (429 with `retry_after` and `Retry-After`), anything else is a logged
500 INTERNAL without a traceback. A /api/v1 request that never passed the signature check
gets only the plain 401 of the contract, whatever else went wrong. The decisions the
contract leaves open are listed in service/handler.py's docstring.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

import orjson
import tornado.web
from prometheus_client import CollectorRegistry
from tornado.http1connection import HTTP1Connection

from common.errors import (
    AlreadySubscribed,
    BodyTooLarge,
    InvalidArgument,
    InvalidParam,
    NotFound,
    RateLimited,
    ShuttingDown,
    TgcError,
    Unauthorized,
    Unavailable,
)
from common.utils import PeerRef, parse_peer
from service.bodybudget import BodyBudget, Hold, announced_body
from service.cryptor import Cipher, Signer
from service.ports import Pool
from service.queries import MediaQueue

log = logging.getLogger(__name__)

API = "/api/v1"
_UNAUTHORIZED = orjson.dumps({"ok": False, "error": {"code": "UNAUTHORIZED"}})
_INT = re.compile(r"[0-9]{1,10}")
MAX_IDS = 100
# What a POST may carry in its query as well as in its body: what a proxy in front of
# several servers routes by (docs/deploy/nginx-tgc.conf hashes on it).
ROUTING_PARAMS = frozenset({"peer"})
# Methods whose request takes no body (RFC 9110 gives a body on them no meaning): one is
# refused before it is read.
BODYLESS = frozenset({"GET", "HEAD", "DELETE"})
# The defaults of server.body_timeout, server.idle_timeout, server.unverified_body_bytes
# and server.unverified_bodies (common/const.py), for apps and servers built in tests.
BODY_TIMEOUT = 10.0
IDLE_TIMEOUT = 60.0
UNVERIFIED_BODY_BYTES = 16 * 1024 * 1024
UNVERIFIED_BODIES = 64


class Subscriptions(Protocol):
    """The join/leave service behind POST and DELETE /api/v1/subscriptions."""

    async def subscribe(self, peer: PeerRef) -> dict[str, Any]: ...

    async def unsubscribe(self, peer: PeerRef) -> dict[str, Any]: ...


class JoinMapReader(Protocol):
    """What GET /api/v1/subscriptions reads: the join map's list."""

    def subscriptions(self) -> list[dict[str, Any]]: ...


class MethodNotAllowed(TgcError):
    """A route asked with a method it does not serve (HTTP-only, so it lives here)."""

    status, code = 405, "METHOD_NOT_ALLOWED"


class Forbidden(TgcError):
    """An ops page asked from an address outside server.status_allow (HTTP-only)."""

    status, code = 403, "FORBIDDEN"


class BodiesBusy(RateLimited):
    """The budget of unverified request bodies is spent (HTTP-only): the contract's 429
    RATE_LIMITED, "the service's own budget is spent", retry after a body timeout."""


@dataclass
class Lifecycle:
    """Mutable state the Server flips: `draining` makes /api/v1 answer 503 SHUTTING_DOWN
    and /healthz 503, while in-flight requests finish. Whoever builds the app keeps the
    instance it hands to `make_app` and sets `draining` on it (start.py, at stop)."""

    draining: bool = False


def outer_body_limit(max_body_bytes: int) -> int:
    """Tornado's own body limit: above the service's, so that a chunked body over
    `max_body_bytes` reaches `ApiHandler.data_received`, which answers the contract's 413;
    with room for what Tornado reads on after that answer before the connection closes
    (it reads up to 256 KiB between two yields to the loop), so it does not add its own
    400 behind it. It only stops a chunk header announcing more than this."""
    return 2 * max_body_bytes + 1024 * 1024


# --- the one base handler ---------------------------------------------------------------


@tornado.web.stream_request_body
class BaseHandler(tornado.web.RequestHandler):
    """Services as typed properties; one `write_error` for every answer that fails.

    Streams its body: `prepare` runs before any of it is read. Outside /api/v1 no route
    takes a body: one announced is refused there (400 INVALID_PARAM `body`) unread, and so
    is a multipart Content-Type (a multipart body is never empty: Tornado used to parse it
    and fail with a 500)."""

    route: ClassVar[str] = "unmatched"
    # The error this request was answered with: the access line (service/metrics.py, one
    # per request) names it, so an expected error is logged once.
    failure: TgcError | None = None

    @property
    def pool(self) -> Pool:
        pool: Pool = self.settings["tgc_pool"]
        return pool

    @property
    def processor(self) -> MediaQueue | None:
        processor: MediaQueue | None = self.settings["tgc_processor"]
        return processor

    @property
    def joinmap(self) -> JoinMapReader:
        joinmap: JoinMapReader = self.settings["tgc_joinmap"]
        return joinmap

    @property
    def subscriptions(self) -> Subscriptions:
        subscriptions: Subscriptions | None = self.settings["tgc_subscriptions"]
        if subscriptions is None:  # a server built without the subscription flow
            raise Unavailable("joining and leaving chats is not available on this server")
        return subscriptions

    @property
    def signer(self) -> Signer:
        signer: Signer = self.settings["tgc_signer"]
        return signer

    @property
    def cipher(self) -> Cipher:
        cipher: Cipher = self.settings["tgc_cipher"]
        return cipher

    @property
    def registry(self) -> CollectorRegistry:
        registry: CollectorRegistry = self.settings["tgc_registry"]
        return registry

    @property
    def max_body_bytes(self) -> int:
        limit: int = self.settings["tgc_max_body_bytes"]
        return limit

    @property
    def body_timeout(self) -> float:
        timeout: float = self.settings["tgc_body_timeout"]
        return timeout

    @property
    def body_budget(self) -> BodyBudget:
        budget: BodyBudget = self.settings["tgc_body_budget"]
        return budget

    @property
    def draining(self) -> bool:
        lifecycle: Lifecycle = self.settings["tgc_lifecycle"]
        return lifecycle.draining

    def status_allowed(self) -> bool:
        allow: Callable[[str], bool] = self.settings["tgc_status_allow"]
        return allow(self.request.remote_ip or "")

    def prepare(self) -> Awaitable[None] | None:
        if self.request.method not in self.allowed_methods():
            raise MethodNotAllowed(f"{self.request.method} is not served here")
        self.refuse_body()
        return None

    def refuse_body(self) -> None:
        """400 INVALID_PARAM `body` if the request announces a body, before it is read."""
        if announced_body(self.request.headers) is not None:
            raise InvalidParam("body", "this route takes no body")
        if self.request.headers.get("Content-Type", "").lower().startswith("multipart/"):
            raise InvalidParam("body", "a multipart Content-Type announces a body: none here")

    def data_received(self, chunk: bytes) -> Awaitable[None] | None:
        return None  # never called: prepare refused any body before it was read

    @classmethod
    def allowed_methods(cls) -> list[str]:
        """The methods this route serves (the `Allow` header of its 405): those it defines."""
        base = tornado.web.RequestHandler
        return [
            m
            for m in cls.SUPPORTED_METHODS
            if getattr(cls, m.lower()) is not getattr(base, m.lower())
        ]

    def compute_etag(self) -> str | None:
        return None  # answers are fresh ciphertext every time: an ETag is a wasted hash

    def set_default_headers(self) -> None:
        self.clear_header("Server")  # no version banner
        self.set_header("Cache-Control", "no-store")

    def write_json(self, document: Any, status: int = 200) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        self.finish(orjson.dumps(document))

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        """The one place errors become answers."""
        exc = _exception(kwargs)
        error = _as_tgc_error(exc, status_code)
        self.failure = error
        self.set_status(error.status)
        document = {"ok": False, "error": _error_object(error)}
        if error.retry_after is not None:
            self.set_header("Retry-After", str(error.retry_after))
        if error.status == 405:  # RFC 9110: a 405 lists what the route serves
            self.set_header("Allow", ", ".join(self.allowed_methods()))
        self.send_document(document)

    def send_document(self, document: dict[str, Any]) -> None:
        self.set_header("Content-Type", "application/json")
        self.finish(orjson.dumps(document))

    def log_exception(self, typ: Any, value: BaseException | None, tb: Any) -> None:
        # Expected domain errors (and Tornado's own 404/405) are answers, not incidents: the
        # access line reports them, with their code and message. A bare TgcError (a 500) or
        # anything else is a bug and is logged here with its traceback.
        expected = isinstance(value, TgcError) and type(value) is not TgcError
        if not expected and not isinstance(value, tornado.web.HTTPError):
            log.error("%s %s failed", self.request.method, self.route, exc_info=value)


def _exception(kwargs: Mapping[str, Any]) -> BaseException | None:
    exc_info = kwargs.get("exc_info")
    return exc_info[1] if exc_info else None


# Tornado's own HTTPErrors. Its 400 (a malformed request Tornado found before the route ran,
# e.g. a path argument that is not UTF-8) is the contract's 400, never a 500.
_HTTP_ERRORS: dict[int, Callable[[], TgcError]] = {
    400: lambda: InvalidParam("request", "is malformed"),
    404: NotFound,
    405: MethodNotAllowed,
    413: BodyTooLarge,
}


# The model names the argument of its own method it refuses (InvalidArgument); the routes
# hand it the API's parameters under the same names, but for `peer`, parsed into `ref`,
# and search's `from` and `filter` (a keyword and a builtin in Python).
_PARAM_OF_ARGUMENT = {"ref": "peer", "sender": "from", "filter_name": "filter"}


def _as_tgc_error(exc: BaseException | None, status_code: int) -> TgcError:
    if isinstance(exc, InvalidArgument):
        return InvalidParam(_PARAM_OF_ARGUMENT.get(exc.argument, exc.argument), exc.reason)
    if isinstance(exc, TgcError):
        return exc
    if isinstance(exc, tornado.web.HTTPError) and exc.status_code in _HTTP_ERRORS:
        return _HTTP_ERRORS[exc.status_code]()
    if exc is None and status_code in _HTTP_ERRORS:
        return _HTTP_ERRORS[status_code]()
    return TgcError("internal error")


def _error_object(error: TgcError) -> dict[str, Any]:
    if type(error) is TgcError:
        return {"code": error.code, "message": "internal error"}  # details go to the log
    out = error.to_dict()
    if isinstance(error, InvalidParam):
        out["param"] = error.param
    if isinstance(error, AlreadySubscribed) and error.subscription is not None:
        out["subscription"] = error.subscription
    return out


# --- /api/v1: signed, size-bounded, encrypted ------------------------------------------


@tornado.web.stream_request_body
class ApiHandler(BaseHandler):
    """Base of every /api/v1 route. Subclasses implement `on_get`/`on_post`/`on_delete`
    returning the answer's `data` object, and list their accepted parameters."""

    params: ClassVar[frozenset[str]] = frozenset()
    post_params: ClassVar[frozenset[str]] = frozenset()

    def initialize(self) -> None:
        self._chunks: list[bytes] = []
        self._received = 0
        self._verified = False
        self._nonce: bytes | None = None
        self._hold: Hold | None = None  # this body's share of the unverified-body budget

    async def prepare(self) -> None:
        # Headers only: the body has not been read yet. A request that can't be genuine
        # is refused before it costs a read; so is a body where none belongs, one announced
        # as too large, and one beyond the budget of bodies not yet verified.
        self.signer.check_headers(self.request.headers)
        self._nonce = self.request.headers["X-Nonce"].encode()
        # Tornado's own limits for this request's body, whatever the HTTPServer was given
        # (its defaults: 100 MB, no time limit): the outer guard behind the count in
        # data_received, and the time the body may take to arrive.
        connection = self.request.connection
        if isinstance(connection, HTTP1Connection):
            connection.set_max_body_size(outer_body_limit(self.max_body_bytes))
            connection.set_body_timeout(self.body_timeout)
        size = announced_body(self.request.headers)
        if size is None:
            return
        if self.request.method in BODYLESS:
            raise BodyTooLarge(f"a {self.request.method} request takes no body")
        if size > self.max_body_bytes:
            raise BodyTooLarge(f"the body is larger than {self.max_body_bytes} bytes")
        self._hold = self.body_budget.admit(size)
        if self._hold is None:
            raise self._busy()

    def data_received(self, chunk: bytes) -> None:
        # A chunked body (no Content-Length for prepare to check) is counted here: past the
        # limit, or past what the budget can add to its hold, the 413 (429) goes out at once
        # and nothing more is kept. Tornado delivers no more once the answer is finished,
        # and closes the connection after it.
        if self._finished:
            return
        self._received += len(chunk)
        error: TgcError | None = None
        if self._received > self.max_body_bytes:
            error = BodyTooLarge(f"the body is larger than {self.max_body_bytes} bytes")
        elif self._hold is not None and not self._hold.cover(self._received):
            error = self._busy()
        if error is not None:
            self._drop_body()
            self.send_error(error.status, exc_info=(type(error), error, None))
            return
        self._chunks.append(chunk)

    def _busy(self) -> BodiesBusy:
        # Retry once a held body is surely gone: verified, or timed out.
        return BodiesBusy(
            math.ceil(self.body_timeout), "too many request bodies are arriving at once"
        )

    def _drop_body(self) -> None:
        """What this request holds of its body, and its share of the budget, given back."""
        self._chunks = []
        if self._hold is not None:
            self._hold.release()

    def on_finish(self) -> None:
        self._drop_body()

    def on_connection_close(self) -> None:
        # The client left, or the body timed out (Tornado closes the connection then).
        self._drop_body()
        super().on_connection_close()

    @property
    def body(self) -> bytes:
        return b"".join(self._chunks)

    async def get(self, *args: str) -> None:
        await self._serve(self.on_get, args)

    async def post(self, *args: str) -> None:
        await self._serve(self.on_post, args)

    async def delete(self, *args: str) -> None:
        await self._serve(self.on_delete, args)

    async def put(self, *args: str) -> None:
        await self._serve(self._not_allowed, args)

    async def patch(self, *args: str) -> None:
        await self._serve(self._not_allowed, args)

    async def head(self, *args: str) -> None:
        await self._serve(self._not_allowed, args)

    async def options(self, *args: str) -> None:
        await self._serve(self._not_allowed, args)

    async def on_get(self, *args: str) -> dict[str, Any]:
        raise MethodNotAllowed("GET is not served here")

    async def on_post(self, *args: str) -> dict[str, Any]:
        raise MethodNotAllowed("POST is not served here")

    async def on_delete(self, *args: str) -> dict[str, Any]:
        raise MethodNotAllowed("DELETE is not served here")

    async def _not_allowed(self, *args: str) -> dict[str, Any]:
        raise MethodNotAllowed(f"{self.request.method} is not served here")

    @classmethod
    def allowed_methods(cls) -> list[str]:
        """The verbs whose `on_<verb>` the route defines."""
        return [
            verb
            for verb in ("GET", "POST", "DELETE")
            if getattr(cls, f"on_{verb.lower()}") is not getattr(ApiHandler, f"on_{verb.lower()}")
        ]

    async def _serve(
        self, on_verb: Callable[..., Awaitable[dict[str, Any]]], args: tuple[str, ...]
    ) -> None:
        if self._finished:  # answered 413 while the body came in (data_received)
            return
        request = self.request
        try:
            self.signer.verify(request.method or "", request.uri or "", request.headers, self.body)
        finally:
            if self._hold is not None:  # checked: no longer the budget's
                self._hold.release()
        self._verified = True
        if self.draining:
            raise ShuttingDown("the server is shutting down")
        data = await on_verb(*args)
        self.send_document({"ok": True, "data": data})

    def send_document(self, document: dict[str, Any]) -> None:
        if self._nonce is None:  # no nonce: nothing to bind an answer to
            raise RuntimeError("an API answer without a request nonce")
        self.set_header("X-Encryption", self.cipher.name)
        self.set_header("Content-Type", "text/plain; charset=us-ascii")
        self.finish(self.cipher.encrypt(orjson.dumps(document), self._nonce))

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc = _exception(kwargs)
        # BodyTooLarge comes before the body (and so the signature) could be checked;
        # RateLimited from the signer means the signature was right but its nonce can't
        # be remembered now. Any other failure before the check is just a 401.
        unsigned = not self._verified and not isinstance(exc, BodyTooLarge | RateLimited)
        if isinstance(exc, BodyTooLarge | BodiesBusy):
            # The rest of the body is never read: this connection ends with the answer.
            self.set_header("Connection", "close")
        if isinstance(exc, Unauthorized) or unsigned or self._nonce is None:
            # The contract's 401 and nothing else: no hint of what was wrong (the log has it).
            self.failure = exc if isinstance(exc, TgcError) else Unauthorized()
            self.set_status(401)
            self.set_header("Content-Type", "application/json")
            self.finish(_UNAUTHORIZED)
            return
        super().write_error(status_code, **kwargs)

    # --- parameters ---

    def query(self) -> dict[str, str]:
        """The query parameters, each given once, all known to this route.

        An empty value (`offset_id=`, as the contract itself writes the optional ones) is
        left out, as if the parameter were absent: an optional one takes its default, a
        required one is then missing (400 naming it). An unknown name is refused even
        when its value is empty (a typo must not pass)."""
        out: dict[str, str] = {}
        for name, values in self.request.query_arguments.items():
            if name not in self.params:
                raise InvalidParam(name, "unknown parameter")
            if len(values) != 1:
                raise InvalidParam(name, "given more than once")
            if not values[0]:
                continue
            try:
                out[name] = values[0].decode("utf-8")
            except UnicodeDecodeError:
                raise InvalidParam(name, "is not UTF-8") from None
        return out

    def json_body(self) -> dict[str, Any]:
        """The POST body: a JSON object of known parameters.

        `peer` may come in the query instead (CONTRACT section 1: so that a proxy in front
        of several servers can route by it; docs/deploy/); then the body may be empty. Given
        in both places, the two must name the same peer, or 400 naming it. Any other query
        parameter of a POST is unknown."""
        routed = self._routing_query()
        if not self.body and routed:
            document: Any = {}
        else:
            try:
                document = orjson.loads(self.body)
            except orjson.JSONDecodeError:
                raise InvalidParam("body", "is not JSON") from None
        if not isinstance(document, dict):
            raise InvalidParam("body", "must be a JSON object")
        for name in document:
            if name not in self.post_params:
                raise InvalidParam(name, "unknown parameter")
        for name, value in routed.items():
            if name not in document:
                document[name] = value
            elif not same_peer(peer_param(document, name), parse_peer(value, name)):
                raise InvalidParam(name, "the query and the body name different peers")
        return document

    def _routing_query(self) -> dict[str, str]:
        """The routing parameters a POST carries in its query (each once; empty = absent)."""
        out: dict[str, str] = {}
        for name, values in self.request.query_arguments.items():
            if name not in self.post_params or name not in ROUTING_PARAMS:
                raise InvalidParam(name, "unknown parameter")
            if len(values) != 1:
                raise InvalidParam(name, "given more than once")
            try:
                value = values[0].decode("utf-8")
            except UnicodeDecodeError:
                raise InvalidParam(name, "is not UTF-8") from None
            if value:
                out[name] = value
        return out


def same_peer(a: PeerRef, b: PeerRef) -> bool:
    """Whether two spellings name one peer: `@news`, `news` and `t.me/news` do (usernames
    are compared lowercased); an id and a username never do, nor `-100123` and `123` (the
    second may be a user)."""
    return (a.username, a.id, a.kind, a.invite) == (b.username, b.id, b.kind, b.invite)


def peer_param(values: Mapping[str, Any], name: str = "peer") -> PeerRef:
    """The peer named by `values[name]` (a query value or a JSON body's field)."""
    value = values.get(name)
    if isinstance(value, float) and value.is_integer():
        # JSON has one number type: -2201.0 is the id -2201 (JSON Schema, and so the spec's
        # "integer", say so too; some encoders write every number with a fraction).
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, str | int | None):
        raise InvalidParam(name, "must be a string")
    return parse_peer(value, name)


def int_param(values: Mapping[str, str], name: str, default: int, low: int, high: int) -> int:
    """A whole number from low to high; `default` when the parameter is absent."""
    raw = values.get(name)
    if raw is None:
        return default
    if not _INT.fullmatch(raw):
        raise InvalidParam(name, "must be a whole number")
    value = int(raw)
    if not low <= value <= high:
        raise InvalidParam(name, f"must be from {low} to {high}")
    return value


def ids_param(raw: str, name: str = "ids") -> list[int]:
    """1 to MAX_IDS comma-separated message ids."""
    parts = raw.split(",")
    if not raw or len(parts) > MAX_IDS:
        raise InvalidParam(name, f"must be 1 to {MAX_IDS} comma-separated message ids")
    ids = []
    for part in parts:
        if not _INT.fullmatch(part) or not 0 < int(part) < 2**31:
            raise InvalidParam(name, f"{part!r} is not a message id")
        ids.append(int(part))
    return ids


# A numeric UTC offset whose "+" a query string turned into a space ("...T10:00:00 02:00").
_SPACED_OFFSET = re.compile(r"(?<=\d) (\d\d(?::?\d\d)?)$")
# RFC 3339's leap second (23:59:60), which Python's datetime can't hold.
_LEAP_SECOND = re.compile(r"(?<=T\d\d:\d\d):60(?=[.,Z+-]|$)")


def date_param(values: Mapping[str, str], name: str) -> float | None:
    """An ISO 8601 date, or date and time (RFC 3339's `date-time` included, its leap second
    too), as Unix seconds; None when absent. A date alone is its midnight; no UTC offset
    means UTC. A "+" left unencoded in the query arrives as a space: taken back as the
    offset's sign."""
    raw = values.get(name)
    if raw is None:
        return None
    text = _SPACED_OFFSET.sub(r"+\1", raw.strip().upper())
    leap = _LEAP_SECOND.search(text) is not None
    try:
        when = dt.datetime.fromisoformat(_LEAP_SECOND.sub(":59", text))
    except ValueError:
        raise InvalidParam(name, "must be an ISO 8601 date, e.g. 2024-05-01T00:00:00Z") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    # A difference, not .timestamp(): that overflows at the ends of years 1 and 9999.
    return (when - _EPOCH).total_seconds() + leap


_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
