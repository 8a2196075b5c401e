"""The MCP lifecycle requests the gateway answers itself: ``initialize`` (the
version negotiated, the client's info and capabilities recorded in the log) and
``ping``. The registry's handler and the dispatcher both answer with these.
"""

from __future__ import annotations

from typing import Any

from eventlog import CapabilitiesRecorded

from .protocol import (
    METHOD_NOT_FOUND,
    SERVER_INFO,
    error_response,
    errors,
    negotiate_version,
    result_response,
)
from .runtime import WorkerRuntime

__all__ = ["answer", "initialize", "record_client"]


async def initialize(
    runtime: WorkerRuntime | None,
    params: dict[str, Any],
    session_id: str | None,
    capabilities: dict[str, Any],
) -> dict[str, Any]:
    """Negotiate the protocol version, record the client (when there is a session
    and a log), and return the initialize result declaring ``capabilities``.

    Raises:
        errors.ProtocolError: no protocol version (400, -32002).
    """
    requested = params.get("protocol_version") or params.get("protocolVersion")
    if not requested:
        raise errors.missing_protocol_version()
    negotiated = negotiate_version(str(requested))
    if session_id and runtime is not None:
        client_info = params.get("client_info") or params.get("clientInfo") or {}
        await record_client(
            runtime, session_id, negotiated, client_info, params.get("capabilities") or {}
        )
    return {"protocolVersion": negotiated, "capabilities": capabilities, "serverInfo": SERVER_INFO}


async def record_client(
    runtime: WorkerRuntime,
    session_id: str,
    protocol_version: str | None,
    client_info: Any,
    capabilities: Any,
) -> None:
    """Record what a client said of itself; what it does not say (None) is kept
    from what was recorded before."""
    session = runtime.projection.session(session_id)
    # Only objects are recorded: anything else from a client would make a record
    # that no reader can decode.
    if not isinstance(capabilities, dict):
        capabilities = {}
    if client_info is not None and not isinstance(client_info, dict):
        client_info = {}
    if protocol_version is None:
        protocol_version = session.protocol_version if session is not None else None
    if client_info is None:
        client_info = session.client_info if session is not None else {}
    event = CapabilitiesRecorded(
        session_id=session_id,
        protocol_version=protocol_version or "",
        client_info=client_info,
        capabilities=capabilities,
    )
    await runtime.log.append([event], worker=runtime.worker_id)


async def answer(
    message: Any,
    session_id: str,
    runtime: WorkerRuntime | None,
    capabilities: dict[str, Any],
) -> dict[str, Any] | None:
    """``initialize`` and ``ping`` answered here; any other request refused (-32601);
    notifications and responses need no answer."""
    if not isinstance(message, dict) or "id" not in message:
        return None
    request_id, method = message["id"], message.get("method")
    if method == "initialize":
        params = message.get("params")
        try:
            result = await initialize(
                runtime, params if isinstance(params, dict) else {}, session_id, capabilities
            )
        except errors.ProtocolError as exc:
            return error_response(request_id, exc.code, exc.message)
        return result_response(request_id, result)
    if method == "ping":
        return result_response(request_id, {})
    return error_response(request_id, METHOD_NOT_FOUND, f"Method not found: {method}")
