// An "everything server" on the official MCP TypeScript SDK v2 (@modelcontextprotocol/server
// 2.x, McpServer), for the conformance suite: the tools, resources and prompts its server
// scenarios call, by their names, in both protocol eras on one endpoint.
//
// SDK v2 serves the 2026-07-28 (stateless) revision with createMcpHandler, one McpServer
// per request. Its own fallback for 2025-era traffic is stateless (no sessions, GET is
// 405), so 2025 requests (isLegacyRequest, the SDK's own routing test) go to a sessionful
// WebStandardStreamableHTTPServerTransport instead, as the SDK documents, with an event
// store so streams can be resumed. The same factory builds the server for both eras.
//
// Written from the suite's scenario descriptions, mirroring ts_everything_server.mjs (SDK
// 1.x) and sdk_everything_server.py (the Python SDK). Protocol behaviour (sessions, SSE,
// the 2026 envelope, requestState sealing, caching hints) is the SDK's; this file adds
// fixtures and the few lines of node:http <-> fetch glue (the SDK's handlers are
// web-standard; its @modelcontextprotocol/node adapter would pull in hono).
//
// Run: node everything-server.mjs PORT, from a directory whose node_modules has the
// SDK (the tests copy it next to their npm install). Serves http://127.0.0.1:PORT/mcp.

import { randomUUID } from 'node:crypto';
import http from 'node:http';

import {
  McpServer,
  ResourceTemplate,
  WebStandardStreamableHTTPServerTransport,
  completable,
  createMcpHandler,
  createRequestStateCodec,
  fromJsonSchema,
  hostHeaderValidationResponse,
  inputRequired,
  inputResponse,
  isInitializeRequest,
  isLegacyRequest,
  localhostAllowedHostnames,
} from '@modelcontextprotocol/server';
import { z } from 'zod';

const PORT = Number(process.argv[2]);

// A 1x1 PNG and a tiny WAV: the smallest valid payloads of each kind.
const PNG_1X1 =
  'iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8DwHwAFBQIAX8jx0gAAAABJRU5ErkJggg==';
const WAV_TINY = 'UklGRiYAAABXQVZFZm10IBAAAAABAAEAQB8AAAB9AAACABAAZGF0YQIAAAA=';

// The inputSchema the json-schema-2020-12 scenario looks for, keyword for keyword.
const SCHEMA_2020_12 = {
  $schema: 'https://json-schema.org/draft/2020-12/schema',
  type: 'object',
  $defs: {
    address: {
      $anchor: 'addressDef',
      type: 'object',
      properties: { street: { type: 'string' }, city: { type: 'string' } },
    },
  },
  properties: {
    name: { type: 'string' },
    address: { $ref: '#/$defs/address' },
    contactMethod: { type: 'string', enum: ['phone', 'email'] },
    phone: { type: 'string' },
    email: { type: 'string' },
  },
  allOf: [{ anyOf: [{ required: ['phone'] }, { required: ['email'] }] }],
  if: { properties: { contactMethod: { const: 'phone' } }, required: ['contactMethod'] },
  then: { required: ['phone'] },
  else: { required: ['email'] },
  additionalProperties: false,
};

const pause = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
const text = (value) => ({ content: [{ type: 'text', text: value }] });
const embedded = (uri, mimeType, body) => ({
  type: 'resource',
  resource: { uri, mimeType, text: body },
});

// A fixed key, so a requestState sealed for one request opens on the next (each 2026
// request gets a fresh server instance).
const codec = createRequestStateCodec({ key: 'sessionlog-conformance-fixture-key!!' });

// Every SSE event of every 2025 session, so a client that lost a stream can resume it
// (server-sse-polling closes a stream mid-call). Event ids are "<stream>::<n>".
const events = [];
const eventStore = {
  async storeEvent(streamId, message) {
    events.push({ streamId, message });
    return `${streamId}::${events.length}`;
  },
  async getStreamIdForEventId(eventId) {
    return eventId.split('::')[0];
  },
  async replayEventsAfter(lastEventId, { send }) {
    const [streamId, position] = lastEventId.split('::');
    for (let index = Number(position); index < events.length; index++) {
      const event = events[index];
      if (event.streamId === streamId && event.message && Object.keys(event.message).length) {
        await send(`${streamId}::${index + 1}`, event.message);
      }
    }
    return streamId;
  },
};

const subscribed = new Set();

const askName = (message = 'What is your name?') =>
  inputRequired.elicit({
    message,
    requestedSchema: { type: 'object', properties: { name: { type: 'string' } }, required: ['name'] },
  });
const confirm = () =>
  inputRequired.elicit({
    message: 'Please confirm',
    requestedSchema: { type: 'object', properties: { ok: { type: 'boolean' } }, required: ['ok'] },
  });
const sample = (value, maxTokens) =>
  inputRequired.createMessage({
    messages: [{ role: 'user', content: { type: 'text', text: value } }],
    maxTokens,
  });
const elicited = (responses, key, field) => {
  const view = inputResponse(responses, key);
  return view.kind === 'elicit' ? view.content?.[field] : undefined;
};

function buildServer({ era }) {
  const server = new McpServer(
    { name: 'sessionlog-conformance-ts2-server', version: '1.0.0' },
    {
      capabilities: {
        tools: { listChanged: true },
        resources: { subscribe: era === 'legacy', listChanged: true },
        prompts: { listChanged: true },
        logging: {},
        completions: {},
      },
      requestState: { verify: codec.verify },
    },
  );

  // Tools returning each kind of content.
  server.registerTool('test_simple_text', { description: 'Returns simple text' }, async () =>
    text('This is a simple text response for testing.'),
  );
  server.registerTool('test_image_content', { description: 'Returns an image' }, async () => ({
    content: [{ type: 'image', data: PNG_1X1, mimeType: 'image/png' }],
  }));
  server.registerTool('test_audio_content', { description: 'Returns audio' }, async () => ({
    content: [{ type: 'audio', data: WAV_TINY, mimeType: 'audio/wav' }],
  }));
  server.registerTool(
    'test_embedded_resource',
    { description: 'Returns an embedded resource' },
    async () => ({
      content: [
        embedded('test://embedded-resource', 'text/plain', 'This is an embedded resource content.'),
      ],
    }),
  );
  server.registerTool(
    'test_multiple_content_types',
    { description: 'Returns text, an image and a resource' },
    async () => ({
      content: [
        { type: 'text', text: 'Multiple content types test:' },
        { type: 'image', data: PNG_1X1, mimeType: 'image/png' },
        embedded(
          'test://mixed-content-resource',
          'application/json',
          JSON.stringify({ test: 'data', value: 123 }),
        ),
      ],
    }),
  );
  server.registerTool('test_error_handling', { description: 'Always fails' }, async () => {
    throw new Error('This tool intentionally returns an error for testing');
  });
  server.registerTool(
    'json_schema_2020_12_tool',
    {
      description: 'Tool with JSON Schema 2020-12 features',
      inputSchema: fromJsonSchema(SCHEMA_2020_12),
    },
    async () => text('ok'),
  );
  server.registerTool(
    'test_x_mcp_header',
    {
      description: 'Mirrors its argument into the Mcp-Param-Region header',
      inputSchema: fromJsonSchema({
        type: 'object',
        properties: { region: { type: 'string', description: 'Region', 'x-mcp-header': 'Region' } },
      }),
    },
    async ({ region }) => text(`region=${region ?? '<none>'}`),
  );
  // Diagnostic tools of the 2026 suite's server-stateless scenario.
  server.registerTool(
    'test_missing_capability',
    { description: "Needs the client's sampling capability" },
    // Asking for sampling the request's capabilities lack: the SDK answers -32021 itself.
    async () => inputRequired({ inputRequests: { sample: sample('Say hello', 50) } }),
  );
  server.registerTool(
    'test_streaming_elicitation',
    { description: 'Asks for input as an input_required result, never a request of its own' },
    async () => inputRequired({ inputRequests: { user_name: askName() } }),
  );
  server.registerTool(
    'test_logging_tool',
    { description: 'Logs at info: only to a request that set a log level' },
    async (ctx) => {
      await ctx.mcpReq.log('info', 'test_logging_tool ran');
      return text('logged');
    },
  );
  server.registerTool(
    'test_trigger_tool_change',
    { description: 'Announces a change of the tool list to subscriptions/listen streams' },
    async () => {
      modern.notify.toolsChanged();
      return text('tools changed');
    },
  );
  server.registerTool(
    'test_trigger_prompt_change',
    { description: 'Announces a change of the prompt list to subscriptions/listen streams' },
    async () => {
      modern.notify.promptsChanged();
      return text('prompts changed');
    },
  );

  // Tools that talk back while they run; the short pauses are what the scenarios
  // exercise (several notifications spread over one call).
  server.registerTool(
    'test_tool_with_logging',
    { description: 'Logs three messages while it runs' },
    async (ctx) => {
      const messages = ['Tool execution started', 'Tool processing data', 'Tool execution completed'];
      for (const [step, data] of messages.entries()) {
        if (step) await pause(50);
        await ctx.mcpReq.notify({ method: 'notifications/message', params: { level: 'info', data } });
      }
      return text('Tool with logging executed successfully');
    },
  );
  server.registerTool(
    'test_tool_with_progress',
    { description: 'Reports progress 0, 50, 100 of 100' },
    async (ctx) => {
      const progressToken = ctx.mcpReq._meta?.progressToken ?? 0;
      for (const [step, progress] of [0, 50, 100].entries()) {
        if (step) await pause(50);
        await ctx.mcpReq.notify({
          method: 'notifications/progress',
          params: { progressToken, progress, total: 100, message: `Completed step ${progress} of 100` },
        });
      }
      return text(String(progressToken));
    },
  );
  server.registerTool(
    'test_reconnection',
    { description: 'Closes its SSE stream mid-call; the client must resume it' },
    async (ctx) => {
      ctx.http?.closeSSE?.();
      await pause(100); // the result is sent after the client came back
      return text('Reconnection test completed');
    },
  );

  // 2025: tools that send requests to the client on the call's stream.
  server.registerTool(
    'test_sampling',
    {
      description: "Asks the client's model to complete a prompt",
      inputSchema: z.object({ prompt: z.string().describe('The prompt to send to the LLM') }),
    },
    async ({ prompt }, ctx) => {
      try {
        const result = await ctx.mcpReq.requestSampling({
          messages: [{ role: 'user', content: { type: 'text', text: prompt } }],
          maxTokens: 100,
        });
        return text(`LLM response: ${result.content?.text ?? 'No response'}`);
      } catch (error) {
        return text(`Sampling not supported or error: ${error.message}`);
      }
    },
  );

  async function elicit(ctx, message, requestedSchema, prefix) {
    try {
      const result = await ctx.mcpReq.elicitInput({ mode: 'form', message, requestedSchema });
      return text(`${prefix}: action=${result.action}, content=${JSON.stringify(result.content ?? {})}`);
    } catch (error) {
      return text(`Elicitation not supported or error: ${error.message}`);
    }
  }

  server.registerTool(
    'test_elicitation',
    {
      description: 'Asks the user for a response',
      inputSchema: z.object({ message: z.string().describe('The message to show the user') }),
    },
    async ({ message }, ctx) =>
      elicit(
        ctx,
        message,
        {
          type: 'object',
          properties: { response: { type: 'string', description: "User's response" } },
          required: ['response'],
        },
        'User response',
      ),
  );
  server.registerTool(
    'test_elicitation_sep1034_defaults',
    { description: 'Elicits a form with a default for every field (SEP-1034)' },
    async (ctx) =>
      elicit(
        ctx,
        'Please review and update the form fields with defaults',
        {
          type: 'object',
          properties: {
            name: { type: 'string', description: 'User name', default: 'John Doe' },
            age: { type: 'integer', description: 'User age', default: 30 },
            score: { type: 'number', description: 'User score', default: 95.5 },
            status: {
              type: 'string',
              description: 'User status',
              enum: ['active', 'inactive', 'pending'],
              default: 'active',
            },
            verified: { type: 'boolean', description: 'Verification status', default: true },
          },
          required: [],
        },
        'Elicitation completed',
      ),
  );
  const titled = (suffix, labels) =>
    labels.map((title, index) => ({ const: `value${index + 1}`, title: `${title} ${suffix}` }));
  server.registerTool(
    'test_elicitation_sep1330_enums',
    { description: 'Elicits a form with every kind of enum (SEP-1330)' },
    async (ctx) =>
      elicit(
        ctx,
        'Please select options from the enum fields',
        {
          type: 'object',
          properties: {
            untitledSingle: {
              type: 'string',
              description: 'Pick one',
              enum: ['option1', 'option2', 'option3'],
            },
            titledSingle: {
              type: 'string',
              description: 'Pick one (titled)',
              oneOf: titled('Option', ['First', 'Second', 'Third']),
            },
            legacyEnum: {
              type: 'string',
              description: 'Pick one (legacy enumNames)',
              enum: ['opt1', 'opt2', 'opt3'],
              enumNames: ['Option One', 'Option Two', 'Option Three'],
            },
            untitledMulti: {
              type: 'array',
              description: 'Pick several',
              minItems: 1,
              maxItems: 3,
              items: { type: 'string', enum: ['option1', 'option2', 'option3'] },
            },
            titledMulti: {
              type: 'array',
              description: 'Pick several (titled)',
              minItems: 1,
              maxItems: 3,
              items: { anyOf: titled('Choice', ['First', 'Second', 'Third']) },
            },
          },
          required: [],
        },
        'Elicitation completed',
      ),
  );

  // 2026-07-28 multi-round-trip tools: instead of sending requests to the client, a call
  // returns input_required and the client calls again with the answers
  // (ctx.mcpReq.inputResponses) and the echoed, sealed requestState.
  const answers = (ctx) => ctx.mcpReq.inputResponses ?? {};
  const state = (ctx) => ctx.mcpReq.requestState();
  server.registerTool(
    'test_input_required_result_elicitation',
    { description: "Needs the user's name" },
    async (ctx) => {
      if ('user_name' in answers(ctx)) {
        return text(`Hello, ${elicited(answers(ctx), 'user_name', 'name') ?? 'stranger'}!`);
      }
      return inputRequired({ inputRequests: { user_name: askName() } });
    },
  );
  server.registerTool(
    'test_input_required_result_sampling',
    { description: 'Needs a model completion' },
    async (ctx) => {
      const view = inputResponse(answers(ctx), 'capital_question');
      if (view.kind === 'sampling') {
        return text(`Model said: ${view.result.content?.text ?? '?'}`);
      }
      return inputRequired({
        inputRequests: { capital_question: sample('What is the capital of France?', 100) },
      });
    },
  );
  server.registerTool(
    'test_input_required_result_list_roots',
    { description: "Needs the client's roots" },
    async (ctx) => {
      const view = inputResponse(answers(ctx), 'client_roots');
      if (view.kind === 'roots') return text(`Client exposed ${view.roots.length} root(s).`);
      return inputRequired({ inputRequests: { client_roots: inputRequired.listRoots() } });
    },
  );
  server.registerTool(
    'test_input_required_result_request_state',
    { description: 'Round-trips a requestState' },
    async (ctx) => {
      if ('confirm' in answers(ctx) && state(ctx) === 'confirm-pending') {
        return text('state-ok: confirmation received');
      }
      return inputRequired({
        inputRequests: { confirm: confirm() },
        requestState: await codec.mint('confirm-pending'),
      });
    },
  );
  server.registerTool(
    'test_input_required_result_multiple_inputs',
    { description: 'Needs a name, a completion and the roots at once' },
    async (ctx) => {
      const got = answers(ctx);
      if (['user_name', 'greeting', 'client_roots'].every((key) => key in got)) {
        return text('All inputs received.');
      }
      return inputRequired({
        inputRequests: {
          user_name: askName(),
          greeting: sample('Generate a greeting', 50),
          client_roots: inputRequired.listRoots(),
        },
        requestState: await codec.mint('all-three'),
      });
    },
  );
  server.registerTool(
    'test_input_required_result_multi_round',
    { description: 'Asks two questions, one round each' },
    async (ctx) => {
      const round = state(ctx) ?? {};
      const got = answers(ctx);
      if (round.round === 2 && 'step2' in got) {
        return text(`${round.name} likes ${elicited(got, 'step2', 'color')}.`);
      }
      if (round.round === 1 && 'step1' in got) {
        return inputRequired({
          inputRequests: {
            step2: inputRequired.elicit({
              message: 'Step 2: What is your favorite color?',
              requestedSchema: {
                type: 'object',
                properties: { color: { type: 'string' } },
                required: ['color'],
              },
            }),
          },
          requestState: await codec.mint({ round: 2, name: elicited(got, 'step1', 'name') }),
        });
      }
      // The first round, or an answer missing: (re)start at step 1.
      return inputRequired({
        inputRequests: { step1: askName('Step 1: What is your name?') },
        requestState: await codec.mint({ round: 1 }),
      });
    },
  );
  server.registerTool(
    'test_input_required_result_tampered_state',
    { description: 'Its requestState must come back untouched' },
    async (ctx) => {
      // The codec seals requestState; a tampered one is rejected before this runs.
      const round = state(ctx);
      if (round === undefined) {
        return inputRequired({
          inputRequests: { confirm: confirm() },
          requestState: await codec.mint('round-1'),
        });
      }
      return text(`state-ok: ${round}`);
    },
  );
  server.registerTool(
    'test_input_required_result_capabilities',
    { description: 'Asks only for what the client can answer' },
    async () => {
      const capabilities = server.server.getClientCapabilities();
      const inputRequests = {};
      if (!capabilities || capabilities.sampling) inputRequests.sample = sample('Say hello', 50);
      if (!capabilities || capabilities.elicitation) inputRequests.ask = askName();
      return inputRequired({ inputRequests, requestState: await codec.mint('capability-gated') });
    },
  );

  // Resources.
  server.registerResource(
    'Static Text Resource',
    'test://static-text',
    { description: 'A static text resource for testing', mimeType: 'text/plain' },
    async (uri) => ({
      contents: [
        { uri: uri.href, mimeType: 'text/plain', text: 'This is the content of the static text resource.' },
      ],
    }),
  );
  server.registerResource(
    'Static Binary Resource',
    'test://static-binary',
    { description: 'A static binary resource (image) for testing', mimeType: 'image/png' },
    async (uri) => ({ contents: [{ uri: uri.href, mimeType: 'image/png', blob: PNG_1X1 }] }),
  );
  server.registerResource(
    'Resource Template',
    new ResourceTemplate('test://template/{id}/data', { list: undefined }),
    { description: 'A resource template with parameter substitution', mimeType: 'application/json' },
    async (uri, { id }) => ({
      contents: [
        {
          uri: uri.href,
          mimeType: 'application/json',
          text: JSON.stringify({ id, templateTest: true, data: `Data for ID: ${id}` }),
        },
      ],
    }),
  );
  server.registerResource(
    'Watched Resource',
    'test://watched-resource',
    { description: 'A resource that can be subscribed to', mimeType: 'text/plain' },
    async (uri) => ({
      contents: [{ uri: uri.href, mimeType: 'text/plain', text: 'Watched resource content' }],
    }),
  );

  // Prompts; the arguments of test_prompt_with_arguments complete (completion-complete).
  const userText = (value) => ({ role: 'user', content: { type: 'text', text: value } });
  server.registerPrompt('test_simple_prompt', { description: 'A prompt without arguments' }, async () => ({
    messages: [userText('This is a simple prompt for testing.')],
  }));
  const suggest = (value) =>
    ['paris', 'park', 'party'].filter((word) => word.startsWith(value ?? ''));
  server.registerPrompt(
    'test_prompt_with_arguments',
    {
      description: 'A prompt with required arguments',
      argsSchema: z.object({
        arg1: completable(z.string().describe('First test argument'), suggest),
        arg2: completable(z.string().describe('Second test argument'), suggest),
      }),
    },
    async ({ arg1, arg2 }) => ({
      messages: [userText(`Prompt with arguments: arg1='${arg1}', arg2='${arg2}'`)],
    }),
  );
  server.registerPrompt(
    'test_prompt_with_embedded_resource',
    {
      description: 'A prompt with an embedded resource',
      argsSchema: z.object({ resourceUri: z.string().describe('URI of the resource to embed') }),
    },
    async ({ resourceUri }) => ({
      messages: [
        {
          role: 'user',
          content: embedded(resourceUri, 'text/plain', 'Embedded resource content for testing.'),
        },
        userText('Please process the embedded resource above.'),
      ],
    }),
  );
  server.registerPrompt('test_prompt_with_image', { description: 'A prompt with an image' }, async () => ({
    messages: [
      { role: 'user', content: { type: 'image', data: PNG_1X1, mimeType: 'image/png' } },
      userText('Please analyze the image above.'),
    ],
  }));
  server.registerPrompt(
    'test_input_required_result_prompt',
    { description: 'A prompt that needs context from the user first' },
    async (ctx) => {
      const view = inputResponse(answers(ctx), 'user_context');
      if (view.kind !== 'missing') {
        const context = view.kind === 'elicit' ? view.content?.context : undefined;
        return { messages: [userText(`Use the following context: ${context ?? '?'}`)] };
      }
      return inputRequired({
        inputRequests: {
          user_context: inputRequired.elicit({
            message: 'What context should the prompt use?',
            requestedSchema: {
              type: 'object',
              properties: { context: { type: 'string' } },
              required: ['context'],
            },
          }),
        },
      });
    },
  );

  // Resource subscriptions are 2025-only (2026-07-28 has subscriptions/listen instead,
  // which the SDK serves itself); McpServer has no API for them.
  if (era === 'legacy') {
    server.server.setRequestHandler('resources/subscribe', async (request) => {
      subscribed.add(request.params.uri);
      return {};
    });
    server.server.setRequestHandler('resources/unsubscribe', async (request) => {
      subscribed.delete(request.params.uri);
      return {};
    });
  }

  return server;
}

// 2026-07-28: one server per request, the SDK's entry; 2025 traffic is not its to serve.
const modern = createMcpHandler(buildServer, { legacy: 'reject' });

// 2025: one server and transport per session, as the SDK's sessionful examples do.
const sessions = new Map(); // session id -> transport
const jsonError = (status, message) =>
  Response.json({ jsonrpc: '2.0', error: { code: -32000, message }, id: null }, { status });

async function legacy(request) {
  const sessionId = request.headers.get('mcp-session-id');
  let transport = sessionId ? sessions.get(sessionId) : undefined;
  if (transport) return transport.handleRequest(request);
  if (sessionId) return jsonError(404, 'Session not found');
  if (request.method !== 'POST') return jsonError(400, 'No session');
  let body;
  try {
    body = await request.json();
  } catch {
    return Response.json(
      { jsonrpc: '2.0', error: { code: -32700, message: 'Parse error' }, id: null },
      { status: 400 },
    );
  }
  if (!isInitializeRequest(body)) return jsonError(400, 'No session');
  transport = new WebStandardStreamableHTTPServerTransport({
    sessionIdGenerator: () => randomUUID(),
    eventStore,
    retryInterval: 100, // ms a client waits before resuming a closed stream
    onsessioninitialized: (id) => sessions.set(id, transport),
    onsessionclosed: (id) => sessions.delete(id),
  });
  await buildServer({ era: 'legacy' }).connect(transport);
  return transport.handleRequest(request, { parsedBody: body });
}

async function serve(request) {
  const rejected = hostHeaderValidationResponse(request, localhostAllowedHostnames());
  if (rejected) return rejected;
  if (new URL(request.url).pathname !== '/mcp') return new Response('Not found', { status: 404 });
  return (await isLegacyRequest(request)) ? legacy(request) : modern.fetch(request);
}

// node:http <-> fetch: the request with its whole body, the response streamed as it comes
// (SSE), the client going away aborting the request.
http
  .createServer(async (req, res) => {
    const chunks = [];
    for await (const chunk of req) chunks.push(chunk);
    const aborted = new AbortController();
    res.on('close', () => aborted.abort());
    const headers = new Headers();
    for (const [name, value] of Object.entries(req.headers)) {
      for (const one of Array.isArray(value) ? value : [value]) headers.append(name, one);
    }
    const hasBody = !['GET', 'HEAD'].includes(req.method);
    let response;
    try {
      const request = new Request(`http://${req.headers.host ?? `127.0.0.1:${PORT}`}${req.url}`, {
        method: req.method,
        headers,
        body: hasBody ? Buffer.concat(chunks) : undefined,
        signal: aborted.signal,
      });
      response = await serve(request);
    } catch (error) {
      res.writeHead(500, { 'content-type': 'text/plain' }).end(String(error?.stack ?? error));
      return;
    }
    res.writeHead(response.status, Object.fromEntries(response.headers));
    res.flushHeaders(); // an SSE stream's headers go now, not with its first event
    if (response.body) {
      try {
        for await (const chunk of response.body) res.write(chunk);
      } catch {
        // the stream was cancelled (the client went away or the server closed it)
      }
    }
    res.end();
  })
  .listen(PORT, '127.0.0.1');
