"""The HTTP API of CONTRACT.md section 1 on Tornado, plus /healthz, /metrics and /status.

Built once by `make_app(...)` with every long-lived service handed in (start.py builds
them inside the running loop); handlers reach them through typed properties of one
`BaseHandler`, read them from `Application.settings` and nothing else.

What every route shares (the signature check, the body bound, the encryption, parameter
reading and the one error→HTTP mapping) is in service/basehandler.py; here are
`make_app`, `make_server` and the routes, each an `on_<verb>` that parses and validates
its parameters and calls one service function of `service.queries` or the subscriptions
service.

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
- A method a route doesn't serve is 405 METHOD_NOT_ALLOWED (after the signature check),
  with `Allow` naming the route's methods.
- A GET or DELETE with a body is 413 BODY_TOO_LARGE (their limit is 0 bytes), before the
  body is read, like any 413.
- Bodies not yet verified hold at most `unverified_body_bytes` and `unverified_bodies`
  together (`BodyBudget`); a new one beyond that is 429 RATE_LIMITED (the service's own
  budget), `retry_after` the body timeout, before it is read. A body must arrive within
  `body_timeout` or its connection is closed.
- Outside /api/v1 no route takes a body: one announced (or a multipart Content-Type) is
  400 INVALID_PARAM `body`, unread.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import tornado.web
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from tornado import httputil
from tornado.httpserver import HTTPServer

from common.errors import InvalidParam, NotFound
from service import queries
from service.basehandler import (
    API,
    BODY_TIMEOUT,
    IDLE_TIMEOUT,
    UNVERIFIED_BODIES,
    UNVERIFIED_BODY_BYTES,
    ApiHandler,
    BaseHandler,
    Forbidden,
    JoinMapReader,
    Lifecycle,
    Subscriptions,
    date_param,
    ids_param,
    int_param,
    outer_body_limit,
    peer_param,
)
from service.bodybudget import BodyBudget, BudgetCollector, MemoryTrim
from service.cryptor import Cipher, Signer
from service.files import FILES, FileServing, FilesHandler, LinkedMedia
from service.metrics import DescribedFleet, ObservedPublisher, ServiceMetrics
from service.ports import Pool
from service.queries import DateRange, MediaQueue
from service.status import ErrorLog, StatusPage

_MEDIA_KEY = re.compile(r"[0-9a-f]{32}")
# More routes for make_app: (path pattern, handler class), matched before the /api/v1
# catch-all.
Route = tuple[str, type[tornado.web.RequestHandler]]


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
    body_timeout: float = BODY_TIMEOUT,
    unverified_body_bytes: int = UNVERIFIED_BODY_BYTES,
    unverified_bodies: int = UNVERIFIED_BODIES,
    lifecycle: Lifecycle | None = None,
    status_allow: Callable[[str], bool] | None = None,
    extra_handlers: Sequence[Route] = (),
    publisher: ObservedPublisher | None = None,
    error_log: ErrorLog | None = None,
    files: FileServing | None = None,
    fleet: DescribedFleet | None = None,
) -> tornado.web.Application:
    """The Tornado application. `metrics` is the registry /metrics serves: every family of
    service/metrics.py is registered in it here (the publisher registers its own, start.py
    the subscriber's SubscriberCollector);
    `status_allow(ip)` says who may see the /status page (nobody when not given), which
    shows the pool, the processor, the `publisher`'s outbox, the subscriber's counts and the
    `error_log`. An /api/v1 body must arrive within `body_timeout` seconds; those not yet
    verified hold at most `unverified_body_bytes` and `unverified_bodies` together (the
    app's one `BodyBudget`, whose state /metrics shows). With `files`, stored media carry
    a signed `content_url` in the API's answers and GET /files/KEY serves them. With
    `fleet`, /status shows the reloads of the accounts (start.py registers its metrics)."""
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
        fleet=fleet,
    )
    budget = BodyBudget(unverified_body_bytes, unverified_bodies, on_drained=MemoryTrim().soon)
    metrics.register(BudgetCollector(budget))
    routes: list[Route] = [
        (API + "/peer", PeerHandler),
        (API + "/messages", MessagesHandler),
        (API + "/messages/search", MessageSearchHandler),
        (API + "/participants", ParticipantsHandler),
        (API + "/replies", RepliesHandler),
        (API + "/search", SearchHandler),
        (API + "/subscriptions", SubscriptionsHandler),
        (API + "/media/([^/]*)", MediaHandler),
        (API + "/accounts", AccountsHandler),
        ("/healthz", HealthHandler),
        ("/metrics", MetricsHandler),
        ("/status", StatusHandler),
        *([(FILES + "/([^/]*)", FilesHandler)] if files is not None else []),
        *extra_handlers,
        (API + "(?:/.*)?", ApiNotFoundHandler),  # /api/v1 itself too: signed like the rest
    ]
    return tornado.web.Application(
        routes,
        default_handler_class=NotFoundHandler,
        log_function=service_metrics.observe_request,
        compress_response=False,  # answers are base64 ciphertext: nothing to gain
        tgc_pool=pool,
        tgc_processor=(
            LinkedMedia(processor, files.urls) if files and processor else processor
        ),
        tgc_files=files,
        tgc_joinmap=joinmap,
        tgc_subscriptions=subscriptions,
        tgc_signer=signer,
        tgc_cipher=cipher,
        tgc_registry=metrics,
        tgc_status_page=status_page,
        tgc_max_body_bytes=max_body_bytes,
        tgc_body_timeout=body_timeout,
        tgc_body_budget=budget,
        tgc_lifecycle=lifecycle or Lifecycle(),
        tgc_status_allow=status_allow or (lambda ip: False),
    )


def make_server(
    app: httputil.HTTPServerConnectionDelegate,
    max_body_bytes: int,
    *,
    body_timeout: float = BODY_TIMEOUT,
    idle_timeout: float = IDLE_TIMEOUT,
    **kwargs: Any,
) -> HTTPServer:
    """An HTTPServer with Tornado's own limits set from `max_body_bytes`: the outer guard
    (the API routes count their bodies themselves) and the limit of the non-API routes; a
    body must arrive within `body_timeout` s (the API routes set it again on their
    connection), a connection that sends no request headers for `idle_timeout` s is closed.
    `app` is the Application, or a delegate that wraps it (start.py's request counter);
    `kwargs` go to HTTPServer as they are."""
    return HTTPServer(
        app,
        max_body_size=outer_body_limit(max_body_bytes),
        max_buffer_size=max_body_bytes + 64 * 1024,
        body_timeout=body_timeout,
        idle_connection_timeout=idle_timeout,
        **kwargs,
    )


# --- the routes -------------------------------------------------------------------------


class PeerHandler(ApiHandler):
    route = API + "/peer"
    params = frozenset({"peer"})

    async def on_get(self, *args: str) -> dict[str, Any]:
        ref = peer_param(self.query())
        return await queries.peer_info(self.pool, self.processor, ref)


class MessagesHandler(ApiHandler):
    route = API + "/messages"
    params = frozenset(
        {"peer", "ids", "limit", "offset_id", "min_id", "max_id", "since", "until"}
    )
    _paging = ("limit", "offset_id", "min_id", "max_id", "since", "until")

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
            dates=dates_param(values),
        )


def dates_param(values: dict[str, str]) -> DateRange:
    """[since, until) of /messages; 400 naming `until` when it is not after `since`."""
    since, until = date_param(values, "since"), date_param(values, "until")
    if since is not None and until is not None and until <= since:
        raise InvalidParam("until", "must be later than since")
    return DateRange(since, until)


class MessageSearchHandler(ApiHandler):
    """One chat's messages matching `q`, sent by `from`, of the kind `filter`."""

    route = API + "/messages/search"
    params = frozenset({"peer", "q", "from", "filter", "limit", "offset_id"})

    async def on_get(self, *args: str) -> dict[str, Any]:
        values = self.query()
        ref = peer_param(values)
        q = values.get("q", "").strip()
        if len(q) > 128:
            raise InvalidParam("q", "is longer than 128 characters")
        sender = peer_param(values, "from") if "from" in values else None
        if sender is not None and sender.invite is not None:
            raise InvalidParam("from", "must name a user, not an invite link")
        kind = values.get("filter")
        if kind is not None and kind not in queries.SEARCH_FILTER_NAMES:
            names = ", ".join(queries.SEARCH_FILTER_NAMES)
            raise InvalidParam("filter", f"must be one of {names}")
        if not q and sender is None and kind is None:
            raise InvalidParam("q", "is required unless from or filter is given")
        return await queries.search_messages(
            self.pool,
            self.processor,
            ref,
            q=q,
            sender=sender,
            filter_name=kind,
            limit=int_param(values, "limit", 20, 1, 100),
            offset_id=int_param(values, "offset_id", 0, 0, 2**31 - 1),
        )


class RepliesHandler(ApiHandler):
    route = API + "/replies"
    params = frozenset({"peer", "msg_id", "limit", "offset_id"})

    async def on_get(self, *args: str) -> dict[str, Any]:
        values = self.query()
        ref = peer_param(values)
        if "msg_id" not in values:
            raise InvalidParam("msg_id", "is required")
        top = 2**31 - 1
        return await queries.replies(
            self.pool,
            self.processor,
            ref,
            msg_id=int_param(values, "msg_id", 0, 1, top),
            limit=int_param(values, "limit", 20, 1, 100),
            offset_id=int_param(values, "offset_id", 0, 0, top),
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
        return queries.media_state(self.processor, _media_key(args[0]))

    async def on_post(self, *args: str) -> dict[str, Any]:
        # No parameter but the key: an empty body, or an empty JSON object.
        self.query()
        if self.body.strip():
            self.json_body()
        return queries.queue_media(self.processor, _media_key(args[0]))


def _media_key(key: str) -> str:
    if not _MEDIA_KEY.fullmatch(key):
        raise InvalidParam("key", "must be 32 lowercase hex characters")
    return key


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
    """Tornado's default handler for unmatched paths: plain JSON 404 (400 first for a body,
    which no route here takes)."""

    def prepare(self) -> None:
        self.refuse_body()
        raise NotFound(f"no route {self.request.path}")
