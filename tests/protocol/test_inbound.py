"""The inbound ladder on its own: bodies and headers in, an Inbound or the one
ProtocolError that refuses it out. No server, no log."""

from __future__ import annotations

import base64
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.protocol import (
    HEADER_MISMATCH,
    INVALID_PARAMS,
    INVALID_REQUEST,
    MISSING_PROTOCOL_VERSION,
    PARSE_ERROR,
    UNSUPPORTED_PROTOCOL_VERSION,
    ProtocolError,
)
from gateway.protocol.inbound import (
    CAPABILITIES_KEY,
    CLIENT_INFO_KEY,
    VERSION_KEY,
    classify_post,
    parse_message,
)

MODERN = "2026-07-28"
ENVELOPE = {VERSION_KEY: MODERN, CAPABILITIES_KEY: {}, CLIENT_INFO_KEY: {"name": "t"}}


def body(message: Any) -> bytes:
    return orjson.dumps(message)


def request(method: str, params: Any = None, request_id: Any = 1) -> dict[str, Any]:
    message: dict[str, Any] = {"jsonrpc": "2.0", "id": request_id, "method": method}
    if params is not None:
        message["params"] = params
    return message


def modern(method: str, **params: Any) -> tuple[bytes, list[tuple[str, str]]]:
    headers = [("MCP-Protocol-Version", MODERN), ("Mcp-Method", method)]
    return body(request(method, {**params, "_meta": ENVELOPE})), headers


def refused(raw: bytes, headers: list[tuple[str, str]]) -> ProtocolError:
    with pytest.raises(ProtocolError) as caught:
        classify_post(raw, headers)
    return caught.value


# -- one message --------------------------------------------------------------------------

PARSE_CASES = {
    "not-json": (b"{", 400, PARSE_ERROR),
    "too-deep": (b"[" * 2000 + b"]" * 2000, 400, PARSE_ERROR),
    "batch": (b"[]", 400, INVALID_REQUEST),
    "a-number": (b"5", 400, INVALID_REQUEST),
    "jsonrpc-1": (b'{"jsonrpc": "1.0", "id": 1, "method": "x"}', 400, INVALID_REQUEST),
    "bool-id": (b'{"jsonrpc": "2.0", "id": true, "method": "x"}', 400, INVALID_REQUEST),
    "null-id": (b'{"jsonrpc": "2.0", "id": null, "method": "x"}', 400, INVALID_REQUEST),
    "method-not-string": (b'{"jsonrpc": "2.0", "id": 1, "method": 5}', 400, INVALID_REQUEST),
    "neither": (b'{"jsonrpc": "2.0", "id": 1}', 400, INVALID_REQUEST),
}


@pytest.mark.parametrize(("raw", "status", "code"), PARSE_CASES.values(), ids=PARSE_CASES.keys())
def test_a_body_that_is_not_one_message_is_refused(raw: bytes, status: int, code: int) -> None:
    with pytest.raises(ProtocolError) as caught:
        parse_message(raw)
    assert (caught.value.status, caught.value.code) == (status, code)
    assert orjson.loads(caught.value.body())["error"]["code"] == code


def test_a_message_is_classified_by_its_members() -> None:
    assert parse_message(body(request("ping")))[1] == "request"
    assert parse_message(b'{"jsonrpc": "2.0", "method": "notifications/x"}')[1] == "notification"
    assert parse_message(b'{"jsonrpc": "2.0", "id": "a", "result": {}}')[1] == "response"
    assert parse_message(b'{"jsonrpc": "2.0", "id": 7, "error": {}}')[1] == "response"


@pytest.mark.parametrize(
    ("params", "code"),
    [
        ({"capabilities": {}}, MISSING_PROTOCOL_VERSION),
        (None, MISSING_PROTOCOL_VERSION),
        ({"protocolVersion": "2025-11-25", "capabilities": []}, INVALID_PARAMS),
        ({"protocolVersion": "2025-11-25", "clientInfo": "me"}, INVALID_PARAMS),
    ],
)
def test_a_handshake_initialize_that_cannot_be_recorded_is_refused(params: Any, code: int) -> None:
    """Refused with the request's id, which is known by then."""
    raw = body(request("initialize", params, request_id="init-1"))
    with pytest.raises(ProtocolError) as caught:
        classify_post(raw, [])
    assert (caught.value.status, caught.value.code) == (400, code)
    assert orjson.loads(caught.value.body())["id"] == "init-1"


def test_initialize_in_the_2026_era_is_a_request_like_any_other() -> None:
    """The revision removed it: it passes the ladder, and whoever answers says -32601."""
    raw, headers = modern("initialize")
    assert classify_post(raw, headers).era == "modern"


# -- the handshake era --------------------------------------------------------------------


def test_the_handshake_era_keeps_the_body_as_sent() -> None:
    raw = b'{"jsonrpc":"2.0",  "id":1, "method":"tools/list"}'
    inbound = classify_post(
        raw, [("Mcp-Session-Id", "abc"), ("MCP-Protocol-Version", "2025-06-18")]
    )
    assert (inbound.era, inbound.version, inbound.session_id) == ("handshake", "2025-06-18", "abc")
    assert inbound.body is raw


def test_a_request_without_a_version_header_speaks_2025_03_26() -> None:
    inbound = classify_post(body(request("ping")), [("Mcp-Session-Id", "abc")])
    assert inbound.version == "2025-03-26"


HANDSHAKE_CASES = {
    "no-session": (body(request("ping")), [], 400, INVALID_REQUEST),
    "initialize-with-session": (
        body(request("initialize", {"protocolVersion": "2025-11-25"})),
        [("Mcp-Session-Id", "abc")],
        400,
        INVALID_REQUEST,
    ),
    "unknown-version-with-session": (
        body(request("ping")),
        [("Mcp-Session-Id", "abc"), ("MCP-Protocol-Version", "1999-01-01")],
        400,
        INVALID_REQUEST,
    ),
    "session-id-not-ascii": (
        body(request("ping")),
        [("Mcp-Session-Id", "\xff\xfe")],
        400,
        INVALID_REQUEST,
    ),
    "session-id-too-long": (
        body(request("ping")),
        [("Mcp-Session-Id", "a" * 129)],
        400,
        INVALID_REQUEST,
    ),
}


@pytest.mark.parametrize(
    ("raw", "headers", "status", "code"), HANDSHAKE_CASES.values(), ids=HANDSHAKE_CASES.keys()
)
def test_handshake_rules(
    raw: bytes, headers: list[tuple[str, str]], status: int, code: int
) -> None:
    error = refused(raw, headers)
    assert (error.status, error.code) == (status, code)


# -- the 2026-07-28 era -------------------------------------------------------------------


def test_a_modern_request_carries_its_envelope() -> None:
    raw, headers = modern("tools/call", name="echo")
    inbound = classify_post(raw, [*headers, ("Mcp-Name", "echo")])
    assert (inbound.era, inbound.version, inbound.kind) == ("modern", MODERN, "request")
    assert inbound.envelope is not None and inbound.envelope.client_info == {"name": "t"}


def test_mcp_name_may_be_base64_encoded() -> None:
    raw, headers = modern("tools/call", name="ünïcode")
    encoded = base64.b64encode("ünïcode".encode()).decode()
    inbound = classify_post(raw, [*headers, ("Mcp-Name", f"=?base64?{encoded}?=")])
    assert inbound.era == "modern"


def test_a_session_header_does_not_make_a_modern_request_a_session_one() -> None:
    raw, headers = modern("tools/list")
    assert classify_post(raw, [*headers, ("Mcp-Session-Id", "x")]).era == "modern"


def test_a_modern_notification_is_accepted_without_an_envelope() -> None:
    raw = b'{"jsonrpc": "2.0", "method": "notifications/cancelled"}'
    inbound = classify_post(raw, [("MCP-Protocol-Version", MODERN)])
    assert (inbound.era, inbound.kind) == ("modern", "notification")


def _without(key: str) -> dict[str, Any]:
    return {k: v for k, v in ENVELOPE.items() if k != key}


MODERN_CASES: dict[str, tuple[Any, list[tuple[str, str]], int, int]] = {
    "no-envelope": (
        request("tools/list", {}),
        [("MCP-Protocol-Version", MODERN), ("Mcp-Method", "tools/list")],
        400,
        INVALID_PARAMS,
    ),
    "envelope-without-capabilities": (
        request("tools/list", {"_meta": _without(CAPABILITIES_KEY)}),
        [("MCP-Protocol-Version", MODERN), ("Mcp-Method", "tools/list")],
        400,
        INVALID_PARAMS,
    ),
    "no-version-header": (
        request("tools/list", {"_meta": ENVELOPE}),
        [("Mcp-Method", "tools/list")],
        400,
        HEADER_MISMATCH,
    ),
    "method-header-disagrees": (
        request("tools/list", {"_meta": ENVELOPE}),
        [("MCP-Protocol-Version", MODERN), ("Mcp-Method", "prompts/list")],
        400,
        HEADER_MISMATCH,
    ),
    "no-method-header": (
        request("tools/list", {"_meta": ENVELOPE}),
        [("MCP-Protocol-Version", MODERN)],
        400,
        HEADER_MISMATCH,
    ),
    "name-header-disagrees": (
        request("tools/call", {"name": "echo", "_meta": ENVELOPE}),
        [("MCP-Protocol-Version", MODERN), ("Mcp-Method", "tools/call"), ("Mcp-Name", "rm")],
        400,
        HEADER_MISMATCH,
    ),
    "name-header-bad-base64": (
        request("tools/call", {"name": "echo", "_meta": ENVELOPE}),
        [
            ("MCP-Protocol-Version", MODERN),
            ("Mcp-Method", "tools/call"),
            ("Mcp-Name", "=?base64?!!?="),
        ],
        400,
        HEADER_MISMATCH,
    ),
    "repeated-method-header": (
        request("tools/list", {"_meta": ENVELOPE}),
        [("MCP-Protocol-Version", MODERN), ("Mcp-Method", "tools/list")] * 2,
        400,
        HEADER_MISMATCH,
    ),
    "unknown-version": (
        request("tools/list", {"_meta": {**ENVELOPE, VERSION_KEY: "2099-01-01"}}),
        [("MCP-Protocol-Version", "2099-01-01"), ("Mcp-Method", "tools/list")],
        400,
        UNSUPPORTED_PROTOCOL_VERSION,
    ),
    "unknown-version-header-no-envelope": (
        request("tools/list"),
        [("MCP-Protocol-Version", "2099-01-01")],
        400,
        UNSUPPORTED_PROTOCOL_VERSION,
    ),
    "a-response": (
        {"jsonrpc": "2.0", "id": 1, "result": {}},
        [("MCP-Protocol-Version", MODERN)],
        400,
        INVALID_REQUEST,
    ),
}


@pytest.mark.parametrize(
    ("message", "headers", "status", "code"), MODERN_CASES.values(), ids=MODERN_CASES.keys()
)
def test_modern_rules(message: Any, headers: list[tuple[str, str]], status: int, code: int) -> None:
    error = refused(body(message), headers)
    assert (error.status, error.code) == (status, code)
    if "id" in message and "method" in message:
        assert orjson.loads(error.body())["id"] == message["id"]


def test_an_unsupported_version_names_every_version_served() -> None:
    raw = body(request("tools/list", {"_meta": {**ENVELOPE, VERSION_KEY: "2099-01-01"}}))
    error = refused(raw, [("MCP-Protocol-Version", "2099-01-01"), ("Mcp-Method", "tools/list")])
    assert error.data["requested"] == "2099-01-01"
    # The handshake versions are there so a client that cannot speak 2026 falls back.
    assert MODERN in error.data["supported"] and "2025-11-25" in error.data["supported"]


def test_an_envelope_without_a_version_header_is_modern_and_told_so() -> None:
    error = refused(body(request("tools/list", {"_meta": ENVELOPE})), [])
    assert error.code == HEADER_MISMATCH


# -- anything at all ----------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.text(max_size=10),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=10), children, max_size=3)
    ),
    max_leaves=10,
)
header_names = st.sampled_from(
    ["Mcp-Session-Id", "MCP-Protocol-Version", "Mcp-Method", "Mcp-Name", "X-Other"]
)
header_values = st.sampled_from(
    ["", "abc", MODERN, "2025-11-25", "2099-01-01", "tools/list", "\xff", "=?base64?x?="]
) | st.text(max_size=20)


@given(
    message=st.fixed_dictionaries(
        {"jsonrpc": st.just("2.0")},
        optional={
            "id": json_values,
            "method": st.sampled_from(["initialize", "tools/list", "tools/call", "x"]),
            "params": json_values
            | st.fixed_dictionaries({"_meta": st.just(ENVELOPE) | json_values}),
            "result": json_values,
        },
    ),
    headers=st.lists(st.tuples(header_names, header_values), max_size=5),
)
def test_the_ladder_answers_anything_with_an_inbound_or_a_clear_error(
    message: dict[str, Any], headers: list[tuple[str, str]]
) -> None:
    try:
        inbound = classify_post(body(message), headers)
    except ProtocolError as error:
        assert 400 <= error.status < 500
        reply = orjson.loads(error.body())
        assert reply["error"]["message"] and isinstance(reply["error"]["code"], int)
    else:
        assert inbound.era in ("handshake", "modern")
        assert inbound.body == body(message)
