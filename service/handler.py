"""The HTTP API of CONTRACT.md section 1 on Tornado, plus /healthz, /metrics and /status.

Built once by `make_app(...)` with every long-lived service handed in (start.py builds
them inside the running loop); handlers reach them through typed properties of one
`BaseHandler`, read them from `Application.settings` and nothing else.

A /api/v1 request goes: `prepare` (signature headers well formed and fresh, body size)
→ the body streams in (bounded) → `_serve`: full signature check (HMAC over the body,
nonce replay) → draining? → the route's `on_<verb>` (parse and validate parameters, call
one service function of `service.queries` or the subscriptions service) → `{"ok": true,
"data": ...}` as orjson, encrypted with the request's nonce as associated data.

Every error goes through the one `write_error`: a `common.errors.TgcError` answers its
`status` and `code` (429 with `retry_after` and `Retry-After`), anything else is a logged
500 INTERNAL without a traceback. A /api/v1 request that never passed the signature check
gets only the plain 401 of the contract, whatever else went wrong.

Decisions the contract leaves open (also in docs/openapi.json):
- An unknown query parameter, or a parameter given twice, is 400 INVALID_PARAM naming it:
  a crawler's typo (`offsetid=`) must not silently return another page.
- A known query parameter with an empty value (`offset_id=`) counts as absent: an optional
  one takes its default, a required one (`peer=`, `q=`) is 400 naming it.
- `ids` can't be combined with the paging parameters of /messages; at most 100 ids.
- A body larger than `max_body_bytes` is 413 BODY_TOO_LARGE (encrypted, before the
  signature check: the body it signs was never read whole): with a Content-Length, before
  it is read; a chunked one once `data_received` has counted past the limit (what came is
  dropped, the rest is not delivered, the connection closes after the answer). Tornado's
  own limit (`outer_body_limit`) is only the outer guard: a chunk header announcing more
  than it, before the count reached the limit, still gets Tornado's bare 400.
- A method a route doesn't serve is 405 METHOD_NOT_ALLOWED (after the signature check).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

import orjson
import tornado.web
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from tornado.http1connection import HTTP1Connection
from tornado.httpserver import HTTPServer

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
from service import queries
from service.cryptor import Cipher, Signer
from service.metrics import ServiceMetrics
from service.queries import MediaQueue, Pool
from service.status import ErrorLog, StatusPage

log = logging.getLogger(__name__)

API = "/api/v1"
_UNAUTHORIZED = orjson.dumps({"ok": False, "error": {"code": "UNAUTHORIZED"}})
_INT = re.compile(r"[0-9]{1,10}")
_MEDIA_KEY = re.compile(r"[0-9a-f]{32}")
MAX_IDS = 100


class Subscriptions(Protocol):
    """The join/leave service behind POST and DELETE /api/v1/subscriptions."""

    async def subscribe(self, peer: PeerRef) -> dict[str, Any]: ...

    async def unsubscribe(self, peer: PeerRef) -> dict[str, Any]: ...


class JoinMapReader(Protocol):
    def subscriptions(self) -> list[dict[str, Any]]: ...


class MethodNotAllowed(TgcError):
    """A route asked with a method it does not serve (HTTP-only, so it lives here)."""

    status, code = 405, "METHOD_NOT_ALLOWED"


class Forbidden(TgcError):
    """An ops page asked from an address outside server.status_allow (HTTP-only)."""

    status, code = 403, "FORBIDDEN"


@dataclass
class Lifecycle:
    """Mutable state the Server flips: `draining` makes /api/v1 answer 503 SHUTTING_DOWN
    and /healthz 503, while in-flight requests finish. Whoever builds the app keeps the
    instance it hands to `make_app` and sets `draining` on it (start.py, at stop)."""

    draining: bool = False


def make_app(
    *,
    pool: Pool,
    processor: MediaQueue | None,
    joinmap: JoinMapReader,
    subscriptions: Subscriptions | None,
    signer: Signer,
    cipher: Cipher,
    metrics: CollectorRegistry,
    max_body_bytes: int = 1024 * 1024,
    lifecycle: Lifecycle | None = None,
    status_allow: Callable[[str], bool] | None = None,
    extra_handlers: Sequence[Any] = (),
    publisher: Any = None,
    error_log: ErrorLog | None = None,
) -> tornado.web.Application:
    """The Tornado application. `metrics` is the registry /metrics serves: every family of
    service/metrics.py is registered in it here (the publisher registers its own, start.py
    the subscriber's SubscriberCollector);
    `status_allow(ip)` says who may see the /status page (nobody when not given), which
    shows the pool, the processor, the `publisher`'s outbox, the subscriber's counts and the
    `error_log`."""
    service_metrics = ServiceMetrics(
        metrics, pool=pool, processor=processor, publisher=publisher
    )
    status_page = StatusPage(
        pool=pool,
        processor=processor,
        publisher=publisher,
        subscriber=subscriptions,  # its counters, when it keeps them (the Subscriber does)
        joinmap=joinmap,
        metrics=service_metrics,
        errors=error_log,
    )
    routes: list[Any] = [
        (API + "/peer", PeerHandler),
        (API + "/messages", MessagesHandler),
        (API + "/participants", ParticipantsHandler),
        (API + "/search", SearchHandler),
        (API + "/subscriptions", SubscriptionsHandler),
        (API + "/media/([^/]*)", MediaHandler),
        (API + "/accounts", AccountsHandler),
        ("/healthz", HealthHandler),
        ("/metrics", MetricsHandler),
        ("/status", StatusHandler),
        *extra_handlers,
        (API + "(?:/.*)?", ApiNotFoundHandler),  # /api/v1 itself too: signed like the rest
    ]
    return tornado.web.Application(
        routes,
        default_handler_class=NotFoundHandler,
        log_function=service_metrics.observe_request,
        compress_response=False,  # answers are base64 ciphertext: nothing to gain
        tgc_pool=pool,
        tgc_processor=processor,
        tgc_joinmap=joinmap,
        tgc_subscriptions=subscriptions,
        tgc_signer=signer,
        tgc_cipher=cipher,
        tgc_registry=metrics,
        tgc_status_page=status_page,
        tgc_max_body_bytes=max_body_bytes,
        tgc_lifecycle=lifecycle or Lifecycle(),
        tgc_status_allow=status_allow or (lambda ip: False),
    )


def outer_body_limit(max_body_bytes: int) -> int:
    """Tornado's own body limit: above the service's, so that a chunked body over
    `max_body_bytes` reaches `ApiHandler.data_received`, which answers the contract's 413;
    with room for what Tornado reads on after that answer before the connection closes
    (it reads up to 256 KiB between two yields to the loop), so it does not add its own
    400 behind it. It only stops a chunk header announcing more than this."""
    return 2 * max_body_bytes + 1024 * 1024


def make_server(app: tornado.web.Application, max_body_bytes: int, **kwargs: Any) -> HTTPServer:
    """An HTTPServer with Tornado's own limits set from `max_body_bytes`: the outer guard
    (the API routes count their bodies themselves) and the limit of the non-API routes."""
    return HTTPServer(
        app,
        max_body_size=outer_body_limit(max_body_bytes),
        max_buffer_size=max_body_bytes + 64 * 1024,
        **kwargs,
    )


# --- the one base handler ---------------------------------------------------------------


class BaseHandler(tornado.web.RequestHandler):
    """Services as typed properties; one `write_error` for every answer that fails."""

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
    def draining(self) -> bool:
        lifecycle: Lifecycle = self.settings["tgc_lifecycle"]
        return lifecycle.draining

    def status_allowed(self) -> bool:
        allow: Callable[[str], bool] = self.settings["tgc_status_allow"]
        return allow(self.request.remote_ip or "")

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


_HTTP_ERRORS: dict[int, type[TgcError]] = {
    404: NotFound,
    405: MethodNotAllowed,
    413: BodyTooLarge,
}


# The model names the argument of its own method it refuses (InvalidArgument); the routes
# hand it the API's parameters under the same names, but for `peer`, parsed into `ref`.
_PARAM_OF_ARGUMENT = {"ref": "peer"}


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

    async def prepare(self) -> None:
        # Headers only: the body has not been read yet. A request that can't be genuine
        # is refused before it costs a read; so is a body announced as too large.
        self.signer.check_headers(self.request.headers)
        self._nonce = self.request.headers["X-Nonce"].encode()
        # Tornado's own limit for this request's body, whatever the HTTPServer was given
        # (its default is 100 MB): the outer guard behind the count in data_received.
        connection = self.request.connection
        if isinstance(connection, HTTP1Connection):
            connection.set_max_body_size(outer_body_limit(self.max_body_bytes))
        length = self.request.headers.get("Content-Length")
        if length is not None and length.isdigit() and int(length) > self.max_body_bytes:
            raise BodyTooLarge(f"the body is larger than {self.max_body_bytes} bytes")

    def data_received(self, chunk: bytes) -> None:
        # A chunked body (no Content-Length for prepare to check) is counted here: past the
        # limit, the 413 goes out at once and nothing more is kept. Tornado delivers no more
        # once the answer is finished, and closes the connection after it.
        if self._finished:
            return
        self._received += len(chunk)
        if self._received > self.max_body_bytes:
            self._chunks.clear()
            error = BodyTooLarge(f"the body is larger than {self.max_body_bytes} bytes")
            self.send_error(413, exc_info=(BodyTooLarge, error, None))
            return
        self._chunks.append(chunk)

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

    async def _serve(
        self, on_verb: Callable[..., Awaitable[dict[str, Any]]], args: tuple[str, ...]
    ) -> None:
        if self._finished:  # answered 413 while the body came in (data_received)
            return
        request = self.request
        self.signer.verify(request.method or "", request.uri or "", request.headers, self.body)
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
        if isinstance(exc, BodyTooLarge):
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
        """The POST body: a JSON object of known parameters (no query string)."""
        if self.request.query_arguments:
            raise InvalidParam(next(iter(self.request.query_arguments)), "unknown parameter")
        try:
            document = orjson.loads(self.body)
        except orjson.JSONDecodeError:
            raise InvalidParam("body", "is not JSON") from None
        if not isinstance(document, dict):
            raise InvalidParam("body", "must be a JSON object")
        for name in document:
            if name not in self.post_params:
                raise InvalidParam(name, "unknown parameter")
        return document


def peer_param(values: Mapping[str, Any], name: str = "peer") -> PeerRef:
    value = values.get(name)
    if isinstance(value, bool) or not isinstance(value, str | int | None):
        raise InvalidParam(name, "must be a string")
    return parse_peer(value, name)


def int_param(values: Mapping[str, str], name: str, default: int, low: int, high: int) -> int:
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
    parts = raw.split(",")
    if not raw or len(parts) > MAX_IDS:
        raise InvalidParam(name, f"must be 1 to {MAX_IDS} comma-separated message ids")
    ids = []
    for part in parts:
        if not _INT.fullmatch(part) or not 0 < int(part) < 2**31:
            raise InvalidParam(name, f"{part!r} is not a message id")
        ids.append(int(part))
    return ids


# --- the routes -------------------------------------------------------------------------


class PeerHandler(ApiHandler):
    route = API + "/peer"
    params = frozenset({"peer"})

    async def on_get(self, *args: str) -> dict[str, Any]:
        ref = peer_param(self.query())
        return await queries.peer_info(self.pool, self.processor, ref)


class MessagesHandler(ApiHandler):
    route = API + "/messages"
    params = frozenset({"peer", "ids", "limit", "offset_id", "min_id", "max_id"})
    _paging = ("limit", "offset_id", "min_id", "max_id")

    async def on_get(self, *args: str) -> dict[str, Any]:
        values = self.query()
        ref = peer_param(values)
        if "ids" in values:
            for name in self._paging:
                if name in values:
                    raise InvalidParam(name, "can't be combined with ids")
            return await queries.messages_by_id(
                self.pool, self.processor, ref, ids_param(values["ids"])
            )
        top = 2**31 - 1
        return await queries.history(
            self.pool,
            self.processor,
            ref,
            limit=int_param(values, "limit", 20, 1, 100),
            offset_id=int_param(values, "offset_id", 0, 0, top),
            min_id=int_param(values, "min_id", 0, 0, top),
            max_id=int_param(values, "max_id", 0, 0, top),
        )


class ParticipantsHandler(ApiHandler):
    route = API + "/participants"
    params = frozenset({"peer", "limit", "offset"})

    async def on_get(self, *args: str) -> dict[str, Any]:
        values = self.query()
        ref = peer_param(values)
        return await queries.participants(
            self.pool,
            ref,
            limit=int_param(values, "limit", 100, 1, 200),
            offset=int_param(values, "offset", 0, 0, 1_000_000),
        )


class SearchHandler(ApiHandler):
    route = API + "/search"
    params = frozenset({"q", "limit"})

    async def on_get(self, *args: str) -> dict[str, Any]:
        values = self.query()
        q = values.get("q", "").strip()
        if not q:
            raise InvalidParam("q", "is required")
        if len(q) > 128:
            raise InvalidParam("q", "is longer than 128 characters")
        return await queries.search(self.pool, q, limit=int_param(values, "limit", 20, 1, 100))


class SubscriptionsHandler(ApiHandler):
    route = API + "/subscriptions"
    params = frozenset({"peer"})
    post_params = frozenset({"peer"})

    async def on_get(self, *args: str) -> dict[str, Any]:
        if self.query():
            raise InvalidParam("peer", "GET lists every subscription; it takes no parameter")
        return {"subscriptions": self.joinmap.subscriptions()}

    async def on_post(self, *args: str) -> dict[str, Any]:
        return await self.subscriptions.subscribe(peer_param(self.json_body()))

    async def on_delete(self, *args: str) -> dict[str, Any]:
        return await self.subscriptions.unsubscribe(peer_param(self.query()))


class MediaHandler(ApiHandler):
    route = API + "/media/{key}"

    async def on_get(self, *args: str) -> dict[str, Any]:
        self.query()
        key = args[0]
        if not _MEDIA_KEY.fullmatch(key):
            raise InvalidParam("key", "must be 32 lowercase hex characters")
        return queries.media_state(self.processor, key)


class AccountsHandler(ApiHandler):
    route = API + "/accounts"

    async def on_get(self, *args: str) -> dict[str, Any]:
        self.query()
        return queries.accounts(self.pool)


class ApiNotFoundHandler(ApiHandler):
    """Any other /api/v1 path: signed like the rest, then 404 NOT_FOUND."""

    route = API + "/*"

    async def _serve(
        self, on_verb: Callable[..., Awaitable[dict[str, Any]]], args: tuple[str, ...]
    ) -> None:
        await super()._serve(self._not_found, args)

    async def _not_found(self, *args: str) -> dict[str, Any]:
        raise NotFound(f"no route {self.request.path}")


# --- outside /api/v1: plain, unsigned ---------------------------------------------------


class HealthHandler(BaseHandler):
    """200 when the server serves and an account is usable; 503 with the reason."""

    route = "/healthz"

    def get(self) -> None:
        if self.draining:
            self.write_json({"ok": False, "status": "shutting_down"}, 503)
        elif not self.pool.usable():
            self.write_json({"ok": False, "status": "no_usable_account"}, 503)
        else:
            self.write_json({"ok": True, "status": "ok"})


class MetricsHandler(BaseHandler):
    """Prometheus text format of the registry every module registers its metrics in."""

    route = "/metrics"

    def get(self) -> None:
        self.set_header("Content-Type", CONTENT_TYPE_LATEST)
        self.finish(generate_latest(self.registry))


class StatusHandler(BaseHandler):
    """The ops page (service/status.py): HTML, only to the addresses server.status_allow
    lists; 403 FORBIDDEN to anyone else."""

    route = "/status"

    def get(self) -> None:
        if not self.status_allowed():
            raise Forbidden("the status page is not served to this address")
        page: StatusPage = self.settings["tgc_status_page"]
        self.set_header("Content-Type", "text/html; charset=utf-8")
        # Nothing on the page runs or loads anything: say so to the browser too.
        self.set_header(
            "Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'"
        )
        self.set_header("X-Frame-Options", "DENY")
        self.finish(page.render(draining=self.draining))


class NotFoundHandler(BaseHandler):
    """Tornado's default handler for unmatched paths: plain JSON 404."""

    def prepare(self) -> None:
        raise NotFound(f"no route {self.request.path}")
