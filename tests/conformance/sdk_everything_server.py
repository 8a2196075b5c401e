"""An "everything server" on the official MCP Python SDK (``MCPServer``), for the
conformance suite: the tools, resources and prompts its server scenarios call, by the
names they call them (``test_*`` and ``test://...``).

The SDK's repository has such a server, but no package on PyPI ships it, so this is
our own, written from the suite's scenario descriptions. Everything protocol-level
(sessions, SSE, the 2026-07-28 stateless wire, requestState sealing, caching hints) is
the SDK's own behaviour; this file only provides the fixtures.

Run: ``python tests/conformance/sdk_everything_server.py PORT`` (Streamable HTTP at
``http://127.0.0.1:PORT/mcp``).
"""

from __future__ import annotations

import asyncio
import json
import sys
import warnings
from typing import Annotated, Any

from pydantic import BaseModel, Field

warnings.simplefilter("ignore")  # ctx.info and sampling are deprecated at 2026-07-28

from mcp.server import ServerRequestContext  # noqa: E402
from mcp.server.mcpserver import Context, MCPServer, RequestStateSecurity  # noqa: E402
from mcp.server.mcpserver.prompts.base import UserMessage  # noqa: E402
from mcp.server.streamable_http import EventCallback, EventMessage, EventStore  # noqa: E402
from mcp.shared.exceptions import MCPError  # noqa: E402
from mcp.types import (  # noqa: E402
    MISSING_REQUIRED_CLIENT_CAPABILITY,
    AudioContent,
    Completion,
    CreateMessageRequest,
    CreateMessageRequestParams,
    CreateMessageResult,
    ElicitRequest,
    ElicitRequestFormParams,
    ElicitResult,
    EmbeddedResource,
    EmptyResult,
    ImageContent,
    InputRequest,
    InputRequiredResult,
    JSONRPCMessage,
    ListRootsRequest,
    ListRootsResult,
    SamplingMessage,
    SetLevelRequestParams,
    SubscribeRequestParams,
    TextContent,
    TextResourceContents,
    UnsubscribeRequestParams,
)

# A 1x1 PNG and a tiny WAV: the smallest valid payloads of each kind.
PNG_1X1 = (
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8DwHwAFBQIAX8jx0gAAAAB"
    "JRU5ErkJggg=="
)
WAV_TINY = "UklGRiYAAABXQVZFZm10IBAAAAABAAEAQB8AAAB9AAACABAAZGF0YQIAAAA="

# The inputSchema the json-schema-2020-12 scenario looks for, keyword for keyword.
SCHEMA_2020_12: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "$defs": {
        "address": {
            "$anchor": "addressDef",
            "type": "object",
            "properties": {"street": {"type": "string"}, "city": {"type": "string"}},
        }
    },
    "properties": {
        "name": {"type": "string"},
        "address": {"$ref": "#/$defs/address"},
        "contactMethod": {"type": "string", "enum": ["phone", "email"]},
        "phone": {"type": "string"},
        "email": {"type": "string"},
    },
    "allOf": [{"anyOf": [{"required": ["phone"]}, {"required": ["email"]}]}],
    "if": {"properties": {"contactMethod": {"const": "phone"}}, "required": ["contactMethod"]},
    "then": {"required": ["phone"]},
    "else": {"required": ["email"]},
    "additionalProperties": False,
}


class MemoryEventStore(EventStore):
    """Keeps every SSE event so a client that lost its stream can resume it
    (the server-sse-polling scenario closes streams mid-call)."""

    def __init__(self) -> None:
        self._events: list[tuple[str, JSONRPCMessage | None]] = []  # index + 1 = event id

    async def store_event(self, stream_id: str, message: JSONRPCMessage | None) -> str:
        self._events.append((stream_id, message))
        return str(len(self._events))

    async def replay_events_after(
        self, last_event_id: str, send_callback: EventCallback
    ) -> str | None:
        if not last_event_id.isdigit() or not 0 < int(last_event_id) <= len(self._events):
            return None
        stream = self._events[int(last_event_id) - 1][0]
        for index in range(int(last_event_id), len(self._events)):
            stream_id, message = self._events[index]
            if stream_id == stream and message is not None:  # None: a priming event
                await send_callback(EventMessage(message, str(index + 1)))
        return stream


def _form(message: str, properties: dict[str, Any], required: list[str]) -> ElicitRequest:
    schema = {"type": "object", "properties": properties, "required": required}
    return ElicitRequest(params=ElicitRequestFormParams(message=message, requested_schema=schema))


def _ask_name(message: str = "What is your name?") -> ElicitRequest:
    return _form(message, {"name": {"type": "string"}}, ["name"])


def _sampling(text: str, max_tokens: int) -> CreateMessageRequest:
    message = SamplingMessage(role="user", content=TextContent(type="text", text=text))
    return CreateMessageRequest(
        params=CreateMessageRequestParams(messages=[message], max_tokens=max_tokens)
    )


def _elicited(answer: object, field: str) -> Any:
    if isinstance(answer, ElicitResult) and answer.content:
        return answer.content.get(field)
    return None


class Reply(BaseModel):
    response: str = Field(description="User's response")


class Defaults(BaseModel):
    """SEP-1034: a default for every primitive type."""

    name: str = Field(default="John Doe", description="User name")
    age: int = Field(default=30, description="User age")
    score: float = Field(default=95.5, description="User score")
    status: str = Field(
        default="active",
        description="User status",
        json_schema_extra={"enum": ["active", "inactive", "pending"]},
    )
    verified: bool = Field(default=True, description="Verification status")


class Enums(BaseModel):
    """SEP-1330: the five ways to write an enum in an elicitation schema."""

    untitledSingle: str = Field(
        description="Pick one", json_schema_extra={"enum": ["option1", "option2", "option3"]}
    )
    titledSingle: str = Field(
        description="Pick one (titled)",
        json_schema_extra={
            "oneOf": [
                {"const": "value1", "title": "First Option"},
                {"const": "value2", "title": "Second Option"},
                {"const": "value3", "title": "Third Option"},
            ]
        },
    )
    legacyEnum: str = Field(
        description="Pick one (legacy enumNames)",
        json_schema_extra={
            "enum": ["opt1", "opt2", "opt3"],
            "enumNames": ["Option One", "Option Two", "Option Three"],
        },
    )
    untitledMulti: list[str] = Field(
        description="Pick several",
        json_schema_extra={
            "minItems": 1,
            "maxItems": 3,
            "items": {"type": "string", "enum": ["option1", "option2", "option3"]},
        },
    )
    titledMulti: list[str] = Field(
        description="Pick several (titled)",
        json_schema_extra={
            "minItems": 1,
            "maxItems": 3,
            "items": {
                "anyOf": [
                    {"const": "value1", "title": "First Choice"},
                    {"const": "value2", "title": "Second Choice"},
                    {"const": "value3", "title": "Third Choice"},
                ]
            },
        },
    )


def build_server() -> MCPServer:
    server = MCPServer(
        name="sessionlog-conformance-sdk-server",
        version="1.0.0",
        log_level="WARNING",
        # A fixed key so a requestState sealed by one request opens on the next.
        request_state_security=RequestStateSecurity(keys=[b"sessionlog-conformance-fixture-key!!"]),
    )
    subscribed: set[str] = set()

    # Tools returning each kind of content.

    @server.tool(description="Returns simple text")
    def test_simple_text() -> str:
        return "This is a simple text response for testing."

    @server.tool(description="Returns an image")
    def test_image_content() -> list[ImageContent]:
        return [ImageContent(type="image", data=PNG_1X1, mime_type="image/png")]

    @server.tool(description="Returns audio")
    def test_audio_content() -> list[AudioContent]:
        return [AudioContent(type="audio", data=WAV_TINY, mime_type="audio/wav")]

    def embedded(uri: str, mime_type: str, text: str) -> EmbeddedResource:
        contents = TextResourceContents(uri=uri, mime_type=mime_type, text=text)
        return EmbeddedResource(type="resource", resource=contents)

    @server.tool(description="Returns an embedded resource")
    def test_embedded_resource() -> list[EmbeddedResource]:
        return [
            embedded(
                "test://embedded-resource", "text/plain", "This is an embedded resource content."
            )
        ]

    @server.tool(description="Returns text, an image and a resource")
    def test_multiple_content_types() -> list[TextContent | ImageContent | EmbeddedResource]:
        return [
            TextContent(type="text", text="Multiple content types test:"),
            ImageContent(type="image", data=PNG_1X1, mime_type="image/png"),
            embedded(
                "test://mixed-content-resource",
                "application/json",
                json.dumps({"test": "data", "value": 123}),
            ),
        ]

    @server.tool(description="Always fails")
    def test_error_handling() -> str:
        raise RuntimeError("This tool intentionally returns an error for testing")

    # Tools that talk back while they run; the short pauses are what the scenarios
    # exercise (several notifications spread over one call).

    @server.tool(description="Logs three messages while it runs")
    async def test_tool_with_logging(ctx: Context) -> str:
        for step, message in enumerate(
            ("Tool execution started", "Tool processing data", "Tool execution completed")
        ):
            if step:
                await asyncio.sleep(0.05)
            await ctx.info(message)
        return "Tool with logging executed successfully"

    @server.tool(description="Reports progress 0, 50, 100 of 100")
    async def test_tool_with_progress(ctx: Context) -> str:
        for step, progress in enumerate((0, 50, 100)):
            if step:
                await asyncio.sleep(0.05)
            await ctx.report_progress(progress, 100, f"Completed step {progress} of 100")
        meta = ctx.request_context.meta if ctx.request_context else None
        return str((meta or {}).get("progress_token", 0))

    @server.tool(description="Closes its SSE stream mid-call; the client must resume it")
    async def test_reconnection(ctx: Context) -> str:
        await ctx.info("Before disconnect")
        await ctx.close_sse_stream()
        await asyncio.sleep(0.2)  # the result is sent after the client came back
        await ctx.info("After reconnect")
        return "Reconnection test completed"

    # Tools that send requests to the client (server-to-client).

    @server.tool(description="Asks the client's model to complete a prompt")
    async def test_sampling(prompt: str, ctx: Context) -> str:
        try:
            result = await ctx.session.create_message(
                messages=[
                    SamplingMessage(role="user", content=TextContent(type="text", text=prompt))
                ],
                max_tokens=100,
                related_request_id=ctx.request_id,  # on this call's stream, not the GET one
            )
        except Exception as error:
            return f"Sampling not supported or error: {error}"
        text = result.content.text if result.content.type == "text" else "No response"
        return f"LLM response: {text}"

    async def elicit(ctx: Context, message: str, schema: type[BaseModel], prefix: str) -> str:
        try:
            result = await ctx.elicit(message=message, schema=schema)
        except Exception as error:
            return f"Elicitation not supported or error: {error}"
        content = result.data.model_dump_json() if result.action == "accept" else "{}"
        return f"{prefix}: action={result.action}, content={content}"

    @server.tool(description="Asks the user for a response")
    async def test_elicitation(message: str, ctx: Context) -> str:
        return await elicit(ctx, message, Reply, "User response")

    @server.tool(description="Elicits a form with a default for every field (SEP-1034)")
    async def test_elicitation_sep1034_defaults(ctx: Context) -> str:
        message = "Please review and update the form fields with defaults"
        return await elicit(ctx, message, Defaults, "Elicitation completed")

    @server.tool(description="Elicits a form with every kind of enum (SEP-1330)")
    async def test_elicitation_sep1330_enums(ctx: Context) -> str:
        message = "Please select options from the enum fields"
        return await elicit(ctx, message, Enums, "Elicitation completed")

    @server.tool(name="json_schema_2020_12_tool", description="Tool with JSON Schema 2020-12")
    def json_schema_tool() -> str:
        return "ok"

    # MCPServer derives inputSchema from the signature; this fixture needs it verbatim.
    server._tool_manager._tools["json_schema_2020_12_tool"].parameters = SCHEMA_2020_12

    @server.tool(description="Mirrors its argument into the Mcp-Param-Region header")
    def test_x_mcp_header(
        region: Annotated[
            str,
            Field(description="Region", json_schema_extra={"x-mcp-header": "Region"}),
        ] = "<none>",
    ) -> str:
        return f"region={region}"

    @server.tool(description="Needs the client's sampling capability")
    async def test_missing_capability(ctx: Context) -> str:
        capabilities = ctx.session.client_capabilities
        if capabilities is None or capabilities.sampling is None:
            raise MCPError(
                code=MISSING_REQUIRED_CLIENT_CAPABILITY,
                message="This tool requires the client 'sampling' capability",
                data={"requiredCapabilities": {"sampling": {}}},
            )
        return "sampling declared"

    # 2026-07-28 multi-round-trip tools (SEP-2322): instead of sending requests to the
    # client, a call returns InputRequiredResult and the client calls again with the
    # answers (ctx.input_responses) and the echoed requestState.

    @server.tool(description="Needs the user's name")
    async def test_input_required_result_elicitation(ctx: Context) -> str | InputRequiredResult:
        answers = ctx.input_responses or {}
        if "user_name" in answers:
            return f"Hello, {_elicited(answers['user_name'], 'name') or 'stranger'}!"
        return InputRequiredResult(input_requests={"user_name": _ask_name()})

    @server.tool(description="Needs a model completion")
    async def test_input_required_result_sampling(ctx: Context) -> str | InputRequiredResult:
        answers = ctx.input_responses or {}
        answer = answers.get("capital_question")
        if isinstance(answer, CreateMessageResult):
            text = answer.content.text if answer.content.type == "text" else "?"
            return f"Model said: {text}"
        question = _sampling("What is the capital of France?", 100)
        return InputRequiredResult(input_requests={"capital_question": question})

    @server.tool(description="Needs the client's roots")
    async def test_input_required_result_list_roots(ctx: Context) -> str | InputRequiredResult:
        answer = (ctx.input_responses or {}).get("client_roots")
        if isinstance(answer, ListRootsResult):
            return f"Client exposed {len(answer.roots)} root(s)."
        return InputRequiredResult(input_requests={"client_roots": ListRootsRequest()})

    confirm = _form("Please confirm", {"ok": {"type": "boolean"}}, ["ok"])

    @server.tool(description="Round-trips a requestState")
    async def test_input_required_result_request_state(ctx: Context) -> str | InputRequiredResult:
        if "confirm" in (ctx.input_responses or {}) and ctx.request_state == "confirm-pending":
            return "state-ok: confirmation received"
        return InputRequiredResult(
            input_requests={"confirm": confirm}, request_state="confirm-pending"
        )

    @server.tool(description="Needs a name, a completion and the roots at once")
    async def test_input_required_result_multiple_inputs(ctx: Context) -> str | InputRequiredResult:
        wanted = {"user_name", "greeting", "client_roots"}
        if wanted <= (ctx.input_responses or {}).keys():
            return "All inputs received."
        requests: dict[str, InputRequest] = {
            "user_name": _ask_name(),
            "greeting": _sampling("Generate a greeting", 50),
            "client_roots": ListRootsRequest(),
        }
        return InputRequiredResult(input_requests=requests, request_state="all-three")

    @server.tool(description="Asks two questions, one round each")
    async def test_input_required_result_multi_round(ctx: Context) -> str | InputRequiredResult:
        state = json.loads(ctx.request_state) if ctx.request_state else {}
        answers = ctx.input_responses or {}
        if state.get("round") == 2 and "step2" in answers:
            return f"{state.get('name')} likes {_elicited(answers['step2'], 'color')}."
        if state.get("round") == 1 and "step1" in answers:
            name = _elicited(answers["step1"], "name")
            color = _form(
                "Step 2: What is your favorite color?", {"color": {"type": "string"}}, ["color"]
            )
            return InputRequiredResult(
                input_requests={"step2": color},
                request_state=json.dumps({"round": 2, "name": name}),
            )
        # The first round, or an answer missing: (re)start at step 1.
        return InputRequiredResult(
            input_requests={"step1": _ask_name("Step 1: What is your name?")},
            request_state=json.dumps({"round": 1}),
        )

    @server.tool(description="Its requestState must come back untouched")
    async def test_input_required_result_tampered_state(ctx: Context) -> str | InputRequiredResult:
        # The SDK seals requestState; a tampered one is rejected before this runs.
        if ctx.request_state is None:
            return InputRequiredResult(input_requests={"confirm": confirm}, request_state="round-1")
        return f"state-ok: {ctx.request_state}"

    @server.tool(description="Asks only for what the client can answer")
    async def test_input_required_result_capabilities(ctx: Context) -> InputRequiredResult:
        capabilities = ctx.client_capabilities
        requests: dict[str, InputRequest] = {}
        if capabilities is None or capabilities.sampling is not None:
            requests["sample"] = _sampling("Say hello", 50)
        if capabilities is None or capabilities.elicitation is not None:
            requests["ask"] = _ask_name()
        return InputRequiredResult(input_requests=requests, request_state="capability-gated")

    # Resources.

    @server.resource(
        "test://static-text",
        name="Static Text Resource",
        description="A static text resource for testing",
        mime_type="text/plain",
    )
    def static_text() -> str:
        return "This is the content of the static text resource."

    @server.resource(
        "test://static-binary",
        name="Static Binary Resource",
        description="A static binary resource (image) for testing",
        mime_type="image/png",
    )
    def static_binary() -> bytes:
        import base64

        return base64.b64decode(PNG_1X1)

    @server.resource(
        "test://template/{id}/data",
        name="Resource Template",
        description="A resource template with parameter substitution",
        mime_type="application/json",
    )
    def template(id: str) -> str:
        return json.dumps({"id": id, "templateTest": True, "data": f"Data for ID: {id}"})

    @server.resource(
        "test://watched-resource",
        name="Watched Resource",
        description="A resource that can be subscribed to",
        mime_type="text/plain",
    )
    def watched() -> str:
        return "Watched resource content"

    # Prompts.

    @server.prompt(description="A prompt without arguments")
    def test_simple_prompt() -> list[UserMessage]:
        return [
            UserMessage(
                content=TextContent(type="text", text="This is a simple prompt for testing.")
            )
        ]

    @server.prompt(description="A prompt with required arguments")
    def test_prompt_with_arguments(arg1: str, arg2: str) -> list[UserMessage]:
        text = f"Prompt with arguments: arg1='{arg1}', arg2='{arg2}'"
        return [UserMessage(content=TextContent(type="text", text=text))]

    @server.prompt(description="A prompt with an embedded resource")
    def test_prompt_with_embedded_resource(resourceUri: str) -> list[UserMessage]:
        resource = embedded(resourceUri, "text/plain", "Embedded resource content for testing.")
        return [
            UserMessage(content=resource),
            UserMessage(
                content=TextContent(type="text", text="Please process the embedded resource above.")
            ),
        ]

    @server.prompt(description="A prompt with an image")
    def test_prompt_with_image() -> list[UserMessage]:
        return [
            UserMessage(content=ImageContent(type="image", data=PNG_1X1, mime_type="image/png")),
            UserMessage(content=TextContent(type="text", text="Please analyze the image above.")),
        ]

    @server.prompt(description="A prompt that needs context from the user first")
    async def test_input_required_result_prompt(
        ctx: Context,
    ) -> list[UserMessage] | InputRequiredResult:
        answer = (ctx.input_responses or {}).get("user_context")
        if answer is not None:
            text = f"Use the following context: {_elicited(answer, 'context') or '?'}"
            return [UserMessage(content=TextContent(type="text", text=text))]
        question = _form(
            "What context should the prompt use?", {"context": {"type": "string"}}, ["context"]
        )
        return InputRequiredResult(input_requests={"user_context": question})

    # Logging levels, subscriptions and completions: MCPServer has no decorators for
    # the first two, so they go on the low-level server.

    async def set_level(ctx: ServerRequestContext, params: SetLevelRequestParams) -> EmptyResult:
        return EmptyResult()

    async def subscribe(ctx: ServerRequestContext, params: SubscribeRequestParams) -> EmptyResult:
        subscribed.add(str(params.uri))
        return EmptyResult()

    async def unsubscribe(
        ctx: ServerRequestContext, params: UnsubscribeRequestParams
    ) -> EmptyResult:
        subscribed.discard(str(params.uri))
        return EmptyResult()

    lowlevel = server._lowlevel_server
    lowlevel.add_request_handler("logging/setLevel", SetLevelRequestParams, set_level)
    lowlevel.add_request_handler("resources/subscribe", SubscribeRequestParams, subscribe)
    lowlevel.add_request_handler("resources/unsubscribe", UnsubscribeRequestParams, unsubscribe)

    @server.completion()
    async def complete(ref: Any, argument: Any, context: Any) -> Completion:
        return Completion(values=[], total=0, has_more=False)

    return server


def main(port: int) -> None:
    build_server().run(
        transport="streamable-http",
        host="127.0.0.1",
        port=port,
        event_store=MemoryEventStore(),
        retry_interval=100,  # ms a client waits before resuming a closed stream
    )


if __name__ == "__main__":
    main(int(sys.argv[1]))
