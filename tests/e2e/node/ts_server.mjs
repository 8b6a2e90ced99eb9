// A real MCP upstream on the official TypeScript SDK behind `express.json()`, as people
// deploy it: express decodes each request body by its declared charset (body-parser +
// iconv-lite), then the SDK's streamable-HTTP transport runs the message. Stateless: a
// fresh server and transport per request, JSON answers.
//
// Every tool execution is appended to the log file as one JSON line
// `{"tool": name, "arguments": {...}, "headers": {...}}`, so a test can prove which tool
// really ran, whatever the gateway decided.
//
//   node ts_server.mjs --port 0 --port-file PATH --log PATH
//
// Tools: get_x, delete_customer (plain), pay_invoice (its `card` argument is mirrored into
// an `Mcp-Param-Card` header by 2026-07-28 clients; recorded with the request's headers).

import fs from "node:fs";
import express from "express";
import { McpServer } from "@modelcontextprotocol/sdk/server/mcp.js";
import { StreamableHTTPServerTransport } from "@modelcontextprotocol/sdk/server/streamableHttp.js";
import { z } from "zod";

function option(name, fallback) {
  const at = process.argv.indexOf(`--${name}`);
  return at >= 0 && at + 1 < process.argv.length ? process.argv[at + 1] : fallback;
}

const logPath = option("log", "ts-server-tools.jsonl");
const portFile = option("port-file", null);
const port = Number(option("port", "0"));

function executed(tool, args, extra) {
  const headers = extra?.requestInfo?.headers ?? {};
  fs.appendFileSync(logPath, JSON.stringify({ tool, arguments: args, headers }) + "\n");
}

function build() {
  const server = new McpServer({ name: "meshgate-e2e-ts", version: "0.0.0" });
  server.registerTool("get_x", { description: "Reads x.", inputSchema: { id: z.string().optional() } }, async (args, extra) => {
    executed("get_x", args, extra);
    return { content: [{ type: "text", text: "x" }] };
  });
  server.registerTool(
    "delete_customer",
    { description: "Deletes a customer.", inputSchema: { id: z.string().optional() } },
    async (args, extra) => {
      executed("delete_customer", args, extra);
      return { content: [{ type: "text", text: "deleted" }] };
    },
  );
  server.registerTool(
    "pay_invoice",
    { description: "Pays an invoice.", inputSchema: { card: z.string(), amount: z.number().optional() } },
    async (args, extra) => {
      executed("pay_invoice", args, extra);
      return { content: [{ type: "text", text: "paid" }] };
    },
  );
  return server;
}

const app = express();
app.use(express.json());
app.post("/mcp", async (req, res) => {
  const server = build();
  const transport = new StreamableHTTPServerTransport({ sessionIdGenerator: undefined, enableJsonResponse: true });
  res.on("close", () => {
    transport.close();
    server.close();
  });
  await server.connect(transport);
  await transport.handleRequest(req, res, req.body);
});
app.all("/mcp", (req, res) => res.status(405).set("allow", "POST").end());
// body-parser's own refusals (415 unsupported charset, 400 unparsable) as JSON-RPC errors.
app.use((err, req, res, next) => {
  res.status(err.status ?? 500).json({ jsonrpc: "2.0", id: null, error: { code: -32600, message: String(err.message) } });
});

const listener = app.listen(port, "127.0.0.1", () => {
  const bound = listener.address().port;
  if (portFile) fs.writeFileSync(portFile, String(bound));
  console.log(`ts_server listening on 127.0.0.1:${bound}`);
});
