"""docs/openapi.json is kept true: every route make_app serves is documented, with the same
methods and parameters, and nothing else is; its schemas carry the fields the code emits;
what its parameter schemas call valid the handlers take; each error status lists the codes
the errors of that status carry. (tests/service/test_schemathesis.py sends the spec's
requests to the real server and checks its answers against it.)"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import tornado.web
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from common import errors
from common.utils import parse_peer
from model.media import Media
from service.basehandler import (
    ROUTING_PARAMS,
    ApiHandler,
    BaseHandler,
    Forbidden,
    MethodNotAllowed,
    ids_param,
)
from service.cryptor import Cipher, Signer
from service.files import ContentUrls, FileServing
from service.handler import make_app
from service.parser import MESSAGE_FIELDS, PEER_FIELDS

DOC_PATH = Path(__file__).parents[2] / "docs" / "openapi.json"
VERBS = ("get", "post", "delete", "put", "patch")


@pytest.fixture(scope="module")
def doc() -> dict[str, Any]:
    document: dict[str, Any] = json.loads(DOC_PATH.read_text())
    return document


def served_routes() -> dict[str, type[tornado.web.RequestHandler]]:
    app = make_app(
        pool=None,  # type: ignore[arg-type]
        processor=None,
        joinmap=None,  # type: ignore[arg-type]
        subscriptions=None,  # type: ignore[arg-type]
        signer=Signer("t"),
        cipher=Cipher.create("aes-256-gcm", "00" * 32),
        metrics=CollectorRegistry(),
        files=FileServing(ContentUrls("t", 60), Path(".")),
    )
    out: dict[str, type[tornado.web.RequestHandler]] = {}
    for rule in app.wildcard_router.rules:
        target = rule.target
        assert isinstance(target, type) and issubclass(target, BaseHandler)
        if target.route.endswith("*"):  # the /api/v1 catch-all
            continue
        out[target.route] = target
    return out


def methods_of(cls: type[tornado.web.RequestHandler]) -> set[str]:
    if issubclass(cls, ApiHandler):
        return {v for v in ("get", "post", "delete") if f"on_{v}" in _own(cls)}
    return {v for v in VERBS if v in _own(cls)}


def _own(cls: type) -> set[str]:
    names: set[str] = set()
    for klass in cls.__mro__:
        if klass in (ApiHandler, BaseHandler, tornado.web.RequestHandler, object):
            break
        names |= set(vars(klass))
    return names


def test_is_openapi_3_1(doc: dict[str, Any]) -> None:
    assert doc["openapi"].startswith("3.1.")
    assert doc["info"]["title"] and doc["info"]["version"]


def test_every_served_route_is_documented_and_vice_versa(doc: dict[str, Any]) -> None:
    served = {route: methods_of(cls) for route, cls in served_routes().items()}
    documented = {path: set(item) & set(VERBS) for path, item in doc["paths"].items()}
    assert served == documented


def test_query_parameters_match_the_handlers(doc: dict[str, Any]) -> None:
    for route, cls in served_routes().items():
        if not issubclass(cls, ApiHandler):
            continue
        for verb, op in doc["paths"][route].items():
            if verb not in VERBS:
                continue
            query = {p["name"] for p in op.get("parameters", []) if p["in"] == "query"}
            if verb == "post":
                # Only what a proxy routes by may also come in a POST's query.
                assert query == set(cls.post_params) & ROUTING_PARAMS, route
                schema = op["requestBody"]["content"]["application/json"]["schema"]
                assert set(schema["properties"]) == set(cls.post_params), route
            elif route == "/api/v1/subscriptions" and verb == "get":
                assert query == set()
            else:
                assert query == set(cls.params), (route, verb)


def test_optional_query_parameters_allow_an_empty_value(doc: dict[str, Any]) -> None:
    # The handler takes `offset_id=` as no offset_id (ApiHandler.query): said per parameter.
    for route, ops in doc["paths"].items():
        for verb, op in ops.items():
            for param in op.get("parameters", []) if verb in VERBS else []:
                if param["in"] == "query":
                    optional = not param.get("required", False)
                    assert param.get("allowEmptyValue", False) == optional, (route, param)


def test_api_operations_are_signed_and_encrypted(doc: dict[str, Any]) -> None:
    for path, item in doc["paths"].items():
        for op in item.values():
            if not path.startswith("/api/v1/"):
                assert op["security"] == []
                continue
            assert op["security"] == [{"timestamp": [], "nonce": [], "signature": []}]
            assert op["responses"]["401"]["content"]["application/json"]["schema"] == {
                "$ref": "#/components/schemas/Unauthorized"
            }
            assert "x-plaintext" in op["responses"]["200"]["content"]["text/plain"]


def _codes(cls: type[errors.TgcError]) -> set[str]:
    out = set()
    for sub in cls.__subclasses__():
        if sub not in (errors.ConfigError, errors.RetryLater):
            out.add(sub.code)
        out |= _codes(sub)
    return out


def test_every_error_code_is_documented(doc: dict[str, Any]) -> None:
    documented = set(doc["components"]["schemas"]["ErrorCode"]["enum"])
    answered = _codes(errors.TgcError) | {"INTERNAL"}
    assert answered == documented


def test_schemas_carry_what_the_code_emits(doc: dict[str, Any]) -> None:
    schemas = doc["components"]["schemas"]
    assert set(MESSAGE_FIELDS) == set(schemas["Message"]["properties"])
    assert set(PEER_FIELDS) <= set(schemas["Peer"]["properties"])
    media = Media(
        type="photo", kind="photo", file_id=1, access_hash=1, file_reference=b"",
        dc_id=2, size=1, mime_type="image/jpeg",
    )  # fmt: skip
    assert set(media.descriptor()) == set(schemas["MediaDescriptor"]["properties"])


def test_every_reference_resolves(doc: dict[str, Any]) -> None:
    def walk(node: Any) -> None:
        if isinstance(node, dict):
            target = node.get("$ref")
            if target is not None:
                here: Any = doc
                for part in target.removeprefix("#/").split("/"):
                    here = here[part]
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(doc)


def _param(doc: dict[str, Any], path: str, name: str) -> dict[str, Any]:
    found: dict[str, Any] = next(
        p for p in doc["paths"][path]["get"]["parameters"] if p["name"] == name
    )
    return found


_DOC: dict[str, Any] = json.loads(DOC_PATH.read_text())
_PEER = _param(_DOC, "/api/v1/peer", "peer")["schema"]
_BODY_PEER = _DOC["paths"]["/api/v1/subscriptions"]["post"]["requestBody"]["content"][
    "application/json"
]["schema"]["properties"]["peer"]["oneOf"]
_IDS = _param(_DOC, "/api/v1/messages", "ids")["schema"]
_Q = _param(_DOC, "/api/v1/search", "q")["schema"]


def test_every_peer_parameter_has_the_one_peer_schema(doc: dict[str, Any]) -> None:
    for path, item in doc["paths"].items():
        for op in item.values():
            for param in op.get("parameters", []):
                if param["name"] == "peer":
                    assert param["schema"] == _PEER, path
    assert _BODY_PEER[0] == _PEER


@settings(max_examples=300, derandomize=True, deadline=None)
@given(st.from_regex(_PEER["pattern"], fullmatch=True))
def test_a_peer_the_spec_calls_well_formed_parses(peer: str) -> None:
    parse_peer(peer)  # no InvalidParam: the spec is not looser than the parser


@settings(max_examples=300, derandomize=True, deadline=None)
@given(st.integers(_BODY_PEER[1]["minimum"], _BODY_PEER[1]["maximum"]).filter(bool))
def test_a_peer_id_the_spec_takes_parses(peer: int) -> None:
    parse_peer(peer)


def test_the_peer_id_bounds_are_the_parsers() -> None:
    low, high = _BODY_PEER[1]["minimum"], _BODY_PEER[1]["maximum"]
    for outside in (low - 1, high + 1, 0):
        with pytest.raises(errors.InvalidParam):
            parse_peer(outside)


@settings(max_examples=300, derandomize=True, deadline=None)
@given(st.from_regex(_IDS["pattern"], fullmatch=True))
def test_ids_the_spec_calls_valid_are_taken(ids: str) -> None:
    assert len(ids_param(ids)) == ids.count(",") + 1


@pytest.mark.parametrize("outside", ["0", "2147483648", "1," * 100 + "1"])
def test_ids_the_handler_refuses_the_spec_refuses_too(outside: str) -> None:
    assert not re.search(_IDS["pattern"], outside)
    with pytest.raises(errors.InvalidParam):
        ids_param(outside)


@settings(max_examples=300, derandomize=True, deadline=None)
@given(st.text(max_size=_Q["maxLength"]).filter(lambda q: bool(re.search(_Q["pattern"], q))))
def test_a_query_the_spec_calls_valid_is_not_blank_to_the_handler(q: str) -> None:
    assert q.strip()  # SearchHandler strips q and refuses an empty one


def _status_codes() -> dict[int, set[str]]:
    by_status: dict[int, set[str]] = {}

    def walk(cls: type[errors.TgcError]) -> None:
        for sub in cls.__subclasses__():
            if sub not in (errors.ConfigError, errors.RetryLater):
                by_status.setdefault(sub.status, set()).add(sub.code)
            walk(sub)

    walk(errors.TgcError)
    by_status.setdefault(500, set()).add("INTERNAL")
    return by_status


def _allowed_codes(response: dict[str, Any]) -> set[str]:
    schema = response["content"]["text/plain"]["x-plaintext"]
    code = schema["allOf"][1]["properties"]["error"]["properties"]["code"]
    return set(code.get("enum", [code.get("const")]))


def test_each_error_status_lists_the_codes_its_errors_carry(doc: dict[str, Any]) -> None:
    responses = doc["components"]["responses"]
    for status, codes in _status_codes().items():
        if status in (401, Forbidden.status):
            continue  # 401: the plain Unauthorized schema; 403 below
        assert _allowed_codes(responses[f"E{status}"]) == codes, status
    assert _allowed_codes(responses["E403"]) == {"PEER_PRIVATE"}
    assert MethodNotAllowed.code in _allowed_codes(responses["E405"])


def test_every_required_field_is_a_property(doc: dict[str, Any]) -> None:
    def walk(node: Any, where: str) -> None:
        if isinstance(node, dict):
            # (A refinement inside allOf, with no type, may require what its sibling lists.)
            if "type" in node and "required" in node and "properties" in node:
                assert set(node["required"]) <= set(node["properties"]), where
            for key, value in node.items():
                walk(value, f"{where}/{key}")
        elif isinstance(node, list):
            for i, value in enumerate(node):
                walk(value, f"{where}/{i}")

    walk(doc, "#")
