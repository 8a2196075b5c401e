// An "everything server" on the official MCP TypeScript SDK (@modelcontextprotocol/sdk
// 1.x, McpServer + StreamableHTTPServerTransport over express), for the conformance
// suite: the tools, resources and prompts its server scenarios call, by their names.
//
// The suite's own reference server (examples/servers/typescript/everything-server.ts in
// its repository) is not published to npm, so this is our own stand-in on the same SDK
// major version, written from the suite's scenario descriptions. Protocol behaviour
// (sessions, SSE, resumability, Host checks) is the SDK's; this file only adds fixtures.
//
// Run: node everything-server.mjs PORT, from a directory whose node_modules has the
// SDK (the tests copy it next to their npm install). Serves http://127.0.0.1:PORT/mcp.

import { randomUUID } from 'node:crypto';

import { createMcpExpressApp } from '@modelcontextprotocol/sdk/server/express.js';
import { completable } from '@modelcontextprotocol/sdk/server/completable.js';
import { McpServer, ResourceTemplate } from '@modelcontextprotocol/sdk/server/mcp.js';
import { StreamableHTTPServerTransport } from '@modelcontextprotocol/sdk/server/streamableHttp.js';
import {
  CreateMessageResultSchema,
  ElicitResultSchema,
  ListToolsRequestSchema,
  SubscribeRequestSchema,
  UnsubscribeRequestSchema,
  isInitializeRequest,
} from '@modelcontextprotocol/sdk/types.js';
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

// Every SSE event of every session, so a client that lost a stream can resume it
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

const transports = new Map(); // session id -> transport
const subscribed = new Set();

function buildServer() {
  const server = new McpServer(
    { name: 'sessionlog-conformance-ts-server', version: '1.0.0' },
    {
      capabilities: {
        tools: { listChanged: true },
        resources: { subscribe: true, listChanged: true },
        prompts: { listChanged: true },
        logging: {},
        completions: {},
      },
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
    { description: 'Tool with JSON Schema 2020-12 features' },
    async () => text('ok'),
  );

  // Tools that talk back while they run; the short pauses are what the scenarios
  // exercise (several notifications spread over one call).
  server.registerTool(
    'test_tool_with_logging',
    { description: 'Logs three messages while it runs', inputSchema: {} },
    async (_args, extra) => {
      const messages = ['Tool execution started', 'Tool processing data', 'Tool execution completed'];
      for (const [step, data] of messages.entries()) {
        if (step) await pause(50);
        await extra.sendNotification({
          method: 'notifications/message',
          params: { level: 'info', data },
        });
      }
      return text('Tool with logging executed successfully');
    },
  );
  server.registerTool(
    'test_tool_with_progress',
    { description: 'Reports progress 0, 50, 100 of 100', inputSchema: {} },
    async (_args, extra) => {
      const progressToken = extra._meta?.progressToken ?? 0;
      for (const [step, progress] of [0, 50, 100].entries()) {
        if (step) await pause(50);
        await extra.sendNotification({
          method: 'notifications/progress',
          params: { progressToken, progress, total: 100, message: `Completed step ${progress} of 100` },
        });
      }
      return text(String(progressToken));
    },
  );
  server.registerTool(
    'test_reconnection',
    { description: 'Closes its SSE stream mid-call; the client must resume it', inputSchema: {} },
    async (_args, extra) => {
      transports.get(extra.sessionId)?.closeSSEStream(extra.requestId);
      await pause(100); // the result is sent after the client came back
      return text('Reconnection test completed');
    },
  );

  // Tools that send requests to the client (server-to-client), on the call's stream.
  server.registerTool(
    'test_sampling',
    {
      description: "Asks the client's model to complete a prompt",
      inputSchema: { prompt: z.string().describe('The prompt to send to the LLM') },
    },
    async ({ prompt }, extra) => {
      try {
        const result = await extra.sendRequest(
          {
            method: 'sampling/createMessage',
            params: {
              messages: [{ role: 'user', content: { type: 'text', text: prompt } }],
              maxTokens: 100,
            },
          },
          CreateMessageResultSchema,
        );
        return text(`LLM response: ${result.content?.text ?? 'No response'}`);
      } catch (error) {
        return text(`Sampling not supported or error: ${error.message}`);
      }
    },
  );

  async function elicit(extra, message, requestedSchema, prefix) {
    try {
      const result = await extra.sendRequest(
        { method: 'elicitation/create', params: { mode: 'form', message, requestedSchema } },
        ElicitResultSchema,
      );
      return text(`${prefix}: action=${result.action}, content=${JSON.stringify(result.content ?? {})}`);
    } catch (error) {
      return text(`Elicitation not supported or error: ${error.message}`);
    }
  }

  server.registerTool(
    'test_elicitation',
    {
      description: 'Asks the user for a response',
      inputSchema: { message: z.string().describe('The message to show the user') },
    },
    async ({ message }, extra) =>
      elicit(
        extra,
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
    { description: 'Elicits a form with a default for every field (SEP-1034)', inputSchema: {} },
    async (_args, extra) =>
      elicit(
        extra,
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
  const titled = (prefix, labels) =>
    labels.map((title, index) => ({ const: `value${index + 1}`, title: `${title} ${prefix}` }));
  server.registerTool(
    'test_elicitation_sep1330_enums',
    { description: 'Elicits a form with every kind of enum (SEP-1330)', inputSchema: {} },
    async (_args, extra) =>
      elicit(
        extra,
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
      argsSchema: {
        arg1: completable(z.string().describe('First test argument'), suggest),
        arg2: completable(z.string().describe('Second test argument'), suggest),
      },
    },
    async ({ arg1, arg2 }) => ({
      messages: [userText(`Prompt with arguments: arg1='${arg1}', arg2='${arg2}'`)],
    }),
  );
  server.registerPrompt(
    'test_prompt_with_embedded_resource',
    {
      description: 'A prompt with an embedded resource',
      argsSchema: { resourceUri: z.string().describe('URI of the resource to embed') },
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

  // McpServer has no API for subscriptions or a verbatim inputSchema: both go on the
  // low-level server (the tools/list handler wrapped, not replaced).
  server.server.setRequestHandler(SubscribeRequestSchema, async (request) => {
    subscribed.add(request.params.uri);
    return {};
  });
  server.server.setRequestHandler(UnsubscribeRequestSchema, async (request) => {
    subscribed.delete(request.params.uri);
    return {};
  });
  const listTools = server.server._requestHandlers.get('tools/list');
  server.server._requestHandlers.set('tools/list', async (request, extra) => {
    const result = await listTools(ListToolsRequestSchema.parse(request), extra);
    for (const tool of result.tools) {
      if (tool.name === 'json_schema_2020_12_tool') tool.inputSchema = SCHEMA_2020_12;
    }
    return result;
  });

  return server;
}

// One McpServer and transport per session, as the SDK's examples do.
const app = createMcpExpressApp({ host: '127.0.0.1' }); // rejects foreign Host headers

app.post('/mcp', async (req, res) => {
  const sessionId = req.headers['mcp-session-id'];
  let transport = sessionId ? transports.get(sessionId) : undefined;
  if (!transport) {
    if (sessionId || !isInitializeRequest(req.body)) {
      res.status(sessionId ? 404 : 400).json({
        jsonrpc: '2.0',
        error: { code: -32000, message: sessionId ? 'Session not found' : 'No session' },
        id: null,
      });
      return;
    }
    transport = new StreamableHTTPServerTransport({
      sessionIdGenerator: () => randomUUID(),
      eventStore,
      retryInterval: 100, // ms a client waits before resuming a closed stream
      onsessioninitialized: (id) => transports.set(id, transport),
    });
    transport.onclose = () => transports.delete(transport.sessionId);
    await buildServer().connect(transport);
  }
  await transport.handleRequest(req, res, req.body);
});

async function existing(req, res) {
  const transport = transports.get(req.headers['mcp-session-id']);
  if (!transport) {
    res.status(404).send('Session not found');
    return;
  }
  await transport.handleRequest(req, res);
}
app.get('/mcp', existing);
app.delete('/mcp', existing);

app.listen(PORT, '127.0.0.1');
