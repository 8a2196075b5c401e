"""Auth on the gateway's HTTP layer: a static bearer token, JWTs (HS256 with a secret,
RS256/ES256 with a public key), sessions only their identity can use, and
credentials that never reach the log."""

from __future__ import annotations

import hashlib
import hmac
import logging
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import jwt
import msgspec
import pytest
from aiohttp import ClientResponse
from aiohttp.test_utils import TestClient
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from eventlog import Record, SessionOpened, open_log
from gateway.app import build_app
from gateway.settings import Settings
from tests.gateway.test_http_input import (
    JSON_HEADERS,
    SESSION,
    assert_rpc_error,
    initialize,
    initialize_body,
    log_url,
    read_event,
    rpc,
    rpc_answer,
    serving,
    sse_session,
    stream_headers,
)

UNAUTHORIZED = -32001
TOKEN = "s3cret"
SECRET = "a-secret-long-enough-for-hs256-0123456789"


def bearer(credentials: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {credentials}"}


def claims(sub: Any = "alice", **extra: Any) -> dict[str, Any]:
    now = int(time.time())
    return {"sub": sub, "iat": now, "exp": now + 300, **extra}


def hs256(payload: dict[str, Any], key: str = SECRET) -> str:
    return jwt.encode(payload, key, algorithm="HS256")


async def assert_unauthorized(response: ClientResponse, error: str | None = None) -> None:
    """401 with a Bearer challenge (and RFC 6750 ``error``, when given) and a JSON-RPC
    body."""
    await assert_rpc_error(response, 401, UNAUTHORIZED)
    challenge = response.headers["WWW-Authenticate"]
    assert challenge.startswith("Bearer "), challenge
    assert 'realm="sessionlog"' in challenge
    if error is not None:
        assert f'error="{error}"' in challenge, challenge


# -- a static token ------------------------------------------------------------------------


@pytest.fixture
async def token_client(tmp_path: Path) -> AsyncIterator[TestClient]:
    async with serving(Settings(log_url=log_url(tmp_path), auth_token=TOKEN)) as client:
        yield client


@pytest.mark.parametrize(
    ("authorization", "error"),
    [
        pytest.param(None, None, id="none"),
        pytest.param(f"Bearer {TOKEN}x", "invalid_token", id="wrong-token"),
        pytest.param(f"Bearer {TOKEN[:-1]}", "invalid_token", id="token-prefix"),
        pytest.param("Bearer", "invalid_request", id="no-credentials"),
        pytest.param(TOKEN, "invalid_request", id="no-scheme"),
        pytest.param("Basic czNjcmV0Og==", "invalid_request", id="basic"),
        pytest.param("Bearer é", "invalid_token", id="non-ascii"),
    ],
)
async def test_a_static_token_is_required(
    token_client: TestClient, authorization: str | None, error: str | None
) -> None:
    headers = dict(JSON_HEADERS)
    if authorization is not None:
        headers["Authorization"] = authorization
    async with token_client.post("/mcp", json=initialize_body(), headers=headers) as response:
        await assert_unauthorized(response, error)
        if authorization is None:
            assert "error=" not in response.headers["WWW-Authenticate"]
        assert TOKEN not in await response.text()


@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", "/mcp"), ("DELETE", "/mcp"), ("GET", "/sse"), ("POST", "/messages/")],
)
async def test_every_mcp_endpoint_needs_the_token(
    token_client: TestClient, method: str, path: str
) -> None:
    headers = {**stream_headers("0" * 32), "Content-Type": "application/json"}
    async with token_client.request(
        method, path, headers=headers, params={"session_id": "0" * 32}, data=b"{}"
    ) as response:
        await assert_unauthorized(response)


@pytest.mark.parametrize("scheme", ["Bearer", "bearer", "BEARER"])
async def test_the_right_token_opens_and_uses_a_session(
    token_client: TestClient, scheme: str
) -> None:
    auth = {"Authorization": f"{scheme} {TOKEN}"}
    session_id = await initialize(token_client, auth)
    headers = {**JSON_HEADERS, **auth, SESSION: session_id}
    async with token_client.post("/mcp", json=rpc("ping"), headers=headers) as response:
        assert response.status == 200
        assert (await rpc_answer(response))["result"] == {}


@pytest.mark.parametrize("path", ["/healthz", "/readyz", "/metrics"])
async def test_operator_endpoints_need_no_credentials(token_client: TestClient, path: str) -> None:
    async with token_client.get(path) as response:
        assert response.status == 200


# -- JWTs -----------------------------------------------------------------------------------


@pytest.fixture
async def jwt_client(tmp_path: Path) -> AsyncIterator[TestClient]:
    async with serving(Settings(log_url=log_url(tmp_path), jwt_secret=SECRET)) as client:
        yield client


def _bad_tokens() -> Iterator[Any]:
    now = int(time.time())
    yield pytest.param(hs256(claims(exp=now - 60)), id="expired")
    yield pytest.param(
        hs256(claims(), "another-secret-long-enough-for-hs256-0123"), id="bad-signature"
    )
    yield pytest.param(hs256({"exp": now + 300}), id="no-sub")
    yield pytest.param(hs256({"sub": "alice"}), id="no-exp")
    yield pytest.param(hs256(claims(sub="")), id="empty-sub")
    yield pytest.param(hs256(claims(sub=42)), id="sub-not-a-string")
    yield pytest.param(hs256(claims(nbf=now + 3600)), id="not-yet-valid")
    yield pytest.param(jwt.encode(claims(), None, algorithm="none"), id="alg-none")
    yield pytest.param(hs256(claims()) + "x", id="tampered")
    yield pytest.param(hs256(claims())[:-10], id="truncated")
    yield pytest.param("not.a.jwt", id="garbage")


@pytest.mark.parametrize("token", list(_bad_tokens()))
async def test_a_bad_jwt_is_401(jwt_client: TestClient, token: str) -> None:
    headers = {**JSON_HEADERS, **bearer(token)}
    async with jwt_client.post("/mcp", json=initialize_body(), headers=headers) as response:
        await assert_unauthorized(response, "invalid_token")
        assert token not in await response.text()


async def test_a_valid_hs256_jwt_opens_a_session(jwt_client: TestClient) -> None:
    token = hs256(claims())
    session_id = await initialize(jwt_client, bearer(token))
    headers = {**JSON_HEADERS, **bearer(token), SESSION: session_id}
    async with jwt_client.post("/mcp", json=rpc("tools/list"), headers=headers) as response:
        assert response.status == 200
        assert (await rpc_answer(response))["result"]["tools"]


async def test_a_jwt_cannot_take_the_static_token_identity(tmp_path: Path) -> None:
    settings = Settings(log_url=log_url(tmp_path), auth_token=TOKEN, jwt_secret=SECRET)
    async with serving(settings) as client:
        impostor = {**JSON_HEADERS, **bearer(hs256(claims(sub="token")))}
        async with client.post("/mcp", json=initialize_body(), headers=impostor) as response:
            await assert_unauthorized(response, "invalid_token")
        assert await initialize(client, bearer(hs256(claims()))) is not None
        assert await initialize(client, bearer(TOKEN)) is not None


async def test_audience_and_issuer_are_checked(tmp_path: Path) -> None:
    settings = Settings(
        log_url=log_url(tmp_path), jwt_secret=SECRET, jwt_audience="gw", jwt_issuer="idp"
    )
    async with serving(settings) as client:
        for wrong in (claims(), claims(aud="other", iss="idp"), claims(aud="gw", iss="other")):
            headers = {**JSON_HEADERS, **bearer(hs256(wrong))}
            async with client.post("/mcp", json=initialize_body(), headers=headers) as response:
                await assert_unauthorized(response, "invalid_token")
        await initialize(client, bearer(hs256(claims(aud="gw", iss="idp"))))


def _public_pem(private: Any) -> str:
    return (
        private.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


@pytest.fixture(scope="module")
def key_pairs() -> dict[str, list[Any]]:
    """Two private keys per algorithm: the gateway's, and a stranger's."""
    return {
        "RS256": [rsa.generate_private_key(public_exponent=65537, key_size=2048) for _ in "ab"],
        "ES256": [ec.generate_private_key(ec.SECP256R1()) for _ in "ab"],
    }


@pytest.mark.parametrize("algorithm", ["RS256", "ES256"])
@pytest.mark.parametrize("given_as", ["pem", "path"])
async def test_a_jwt_signed_with_a_private_key_is_checked_with_its_public_key(
    tmp_path: Path, key_pairs: dict[str, list[Any]], algorithm: str, given_as: str
) -> None:
    key, stranger = key_pairs[algorithm]
    other_algorithm = "ES256" if algorithm == "RS256" else "RS256"
    pem = _public_pem(key)
    public_key = pem
    if given_as == "path":
        path = tmp_path / "public.pem"
        path.write_text(pem)
        public_key = str(path)
    settings = Settings(log_url=log_url(tmp_path), jwt_public_key=public_key)
    async with serving(settings) as client:
        bad = [
            jwt.encode(claims(), stranger, algorithm=algorithm),
            jwt.encode(claims(), key_pairs[other_algorithm][0], algorithm=other_algorithm),
            jwt.encode(claims(exp=int(time.time()) - 60), key, algorithm=algorithm),
            jwt.encode({"exp": int(time.time()) + 60}, key, algorithm=algorithm),
            # Algorithm confusion: the public key used as an HMAC secret.
            _hmac_with(pem),
        ]
        for token in bad:
            headers = {**JSON_HEADERS, **bearer(token)}
            async with client.post("/mcp", json=initialize_body(), headers=headers) as response:
                await assert_unauthorized(response, "invalid_token")
        await initialize(client, bearer(jwt.encode(claims(), key, algorithm=algorithm)))


def _hmac_with(pem: str) -> str:
    """An HS256 token whose secret is the public key's PEM text, forged by hand
    (pyjwt refuses to make one)."""
    header = jwt.utils.base64url_encode(msgspec.json.encode({"alg": "HS256", "typ": "JWT"}))
    body = jwt.utils.base64url_encode(msgspec.json.encode(claims()))
    signing_input = header + b"." + body
    signature = hmac.new(pem.encode(), signing_input, hashlib.sha256).digest()
    return (signing_input + b"." + jwt.utils.base64url_encode(signature)).decode()


@pytest.mark.parametrize(
    "settings",
    [
        pytest.param(Settings(jwt_secret=SECRET, jwt_public_key="/no/such.pem"), id="both"),
        pytest.param(Settings(jwt_public_key="/no/such/key.pem"), id="unreadable-key"),
    ],
)
def test_auth_settings_that_cannot_work_are_refused(settings: Settings) -> None:
    with pytest.raises(ValueError):
        build_app(settings)


# -- sessions belong to their identity -----------------------------------------------------


async def test_a_session_is_unknown_to_another_identity(jwt_client: TestClient) -> None:
    alice, bob = bearer(hs256(claims("alice"))), bearer(hs256(claims("bob")))
    session_id = await initialize(jwt_client, alice)

    # Streamable HTTP: POST, GET, DELETE look exactly like an unknown session to bob.
    posted = {**JSON_HEADERS, SESSION: session_id}
    async with jwt_client.post("/mcp", json=rpc("ping"), headers={**posted, **bob}) as response:
        await assert_rpc_error(response, 404)
    async with jwt_client.get("/mcp", headers={**stream_headers(session_id), **bob}) as response:
        await assert_rpc_error(response, 404)
    async with jwt_client.delete("/mcp", headers={SESSION: session_id, **bob}) as response:
        await assert_rpc_error(response, 404)

    # ... and all of it works for alice, whose session bob's DELETE did not end.
    async with jwt_client.post("/mcp", json=rpc("ping"), headers={**posted, **alice}) as response:
        assert response.status == 200
        assert (await rpc_answer(response))["result"] == {}
    async with jwt_client.get("/mcp", headers={**stream_headers(session_id), **alice}) as stream:
        assert stream.status == 200
        await read_event(stream)  # the priming event: the stream is held
    async with jwt_client.delete("/mcp", headers={SESSION: session_id, **alice}) as response:
        assert response.status == 200


async def test_an_sse_session_is_unknown_to_another_identity(jwt_client: TestClient) -> None:
    alice, bob = bearer(hs256(claims("alice"))), bearer(hs256(claims("bob")))
    async with sse_session(jwt_client, alice) as (stream, endpoint):
        async with jwt_client.post(endpoint, json=rpc("ping", 5), headers=bob) as response:
            await assert_rpc_error(response, 404)
        session_id = endpoint.rpartition("=")[2]
        async with jwt_client.get(f"/sse?session_id={session_id}", headers=bob) as response:
            await assert_rpc_error(response, 404)
        async with jwt_client.post(endpoint, json=rpc("ping", 6), headers=alice) as response:
            assert response.status == 202
        answer = await read_event(stream)
        assert msgspec.json.decode(answer["data"]) == {"jsonrpc": "2.0", "id": 6, "result": {}}


async def test_no_credentials_cannot_reach_a_session_opened_with_credentials(
    tmp_path: Path,
) -> None:
    # Token and JWTs at once: each identity keeps to its own sessions.
    settings = Settings(log_url=log_url(tmp_path), auth_token=TOKEN, jwt_secret=SECRET)
    async with serving(settings) as client:
        by_token = await initialize(client, bearer(TOKEN))
        by_jwt = await initialize(client, bearer(hs256(claims("alice"))))
        for session_id, other in ((by_token, hs256(claims("alice"))), (by_jwt, TOKEN)):
            headers = {**JSON_HEADERS, SESSION: session_id, **bearer(other)}
            async with client.post("/mcp", json=rpc("ping"), headers=headers) as response:
                await assert_rpc_error(response, 404)


# -- credentials never reach the log --------------------------------------------------------


def _stored(record: Record) -> list[bytes]:
    """Everything a record stores: its JSON, and its bytes fields (JSON-RPC payloads)
    as they are, since JSON holds them as base64."""
    stored = [msgspec.json.encode(record.event), msgspec.json.encode(record)]
    for name in record.event.__struct_fields__:
        value = getattr(record.event, name)
        if isinstance(value, bytes):
            stored.append(value)
    return stored


async def test_credentials_never_reach_the_log(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    url = log_url(tmp_path)
    token = hs256(claims("alice"))
    wrong = hs256(claims("mallory"), "wrong-secret-long-enough-for-hs256-01234567")
    async with serving(Settings(log_url=url, auth_token=TOKEN, jwt_secret=SECRET)) as client:
        for given in (TOKEN, token):
            session_id = await initialize(client, bearer(given))
            headers = {**JSON_HEADERS, SESSION: session_id, **bearer(given)}
            call = rpc("tools/call", name="echo", arguments={"text": "hi"})
            async with client.post("/mcp", json=call, headers=headers) as response:
                assert (await rpc_answer(response))["result"]["isError"] is False
            async with client.post(
                "/mcp",
                json={"jsonrpc": "2.0", "method": "notifications/initialized"},
                headers=headers,
            ) as response:
                assert response.status == 202
        async with sse_session(client, bearer(token)) as (stream, endpoint):
            async with client.post(endpoint, json=rpc("ping", 3), headers=bearer(token)) as posted:
                assert posted.status == 202
            await read_event(stream)
        for given in (f"{TOKEN}x", wrong):
            headers = {**JSON_HEADERS, **bearer(given)}
            async with client.post("/mcp", json=initialize_body(), headers=headers) as response:
                await assert_unauthorized(response)

    log = await open_log(url)
    try:
        records = await log.read(0, 100_000)
    finally:
        await log.close()
    assert records
    credentials = [TOKEN.encode(), token.encode(), wrong.encode(), SECRET.encode()]
    # The JWT's parts too: a log holding its signature or payload would hold a copy.
    credentials += [part.encode() for part in token.split(".")]
    for record in records:
        for stored in _stored(record):
            for secret in credentials:
                assert secret not in stored, (record, secret)
    users = {
        (event.transport, event.user)
        for record in records
        if isinstance(event := record.event, SessionOpened)
    }
    assert users == {("streamable-http", "token"), ("streamable-http", "alice"), ("sse", "alice")}
    for secret in credentials:
        assert secret.decode() not in caplog.text
