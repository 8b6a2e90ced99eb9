// The official TypeScript SDK server (Node 20) as an e2e upstream: stateless streamable HTTP
// on 127.0.0.1, built with the SDK's `createMcpExpressApp`, whose DNS-rebinding protection
// checks only the `Host` header (as the SDK ships it for localhost servers). One tool, `echo`.
//
//   node ts_localhost_server.mjs <port-file>
//
// Listens on a free port and writes it to <port-file> once accepting.
import { writeFileSync } from "node:fs";
import { McpServer } from "@modelcontextprotocol/sdk/server/mcp.js";
import { StreamableHTTPServerTransport } from "@modelcontextprotocol/sdk/server/streamableHttp.js";
import { createMcpExpressApp } from "@modelcontextprotocol/sdk/server/express.js";
import { z } from "zod";

const [portFile] = process.argv.slice(2);

function newServer() {
  const server = new McpServer({ name: "meshgate-e2e-ts-server", version: "0" });
  server.registerTool(
    "echo",
    { description: "Echoes its text", inputSchema: { text: z.string() } },
    async ({ text }) => ({ content: [{ type: "text", text }] }),
  );
  return server;
}

const app = createMcpExpressApp({ host: "127.0.0.1" });
app.post("/mcp", async (req, res) => {
  const server = newServer();
  const transport = new StreamableHTTPServerTransport({ sessionIdGenerator: undefined });
  res.on("close", () => {
    transport.close();
    server.close();
  });
  await server.connect(transport);
  await transport.handleRequest(req, res, req.body);
});
for (const method of ["get", "delete"]) {
  app[method]("/mcp", (_req, res) => {
    res.status(405).set("allow", "POST").end();
  });
}

const listener = app.listen(0, "127.0.0.1", () => {
  writeFileSync(portFile, String(listener.address().port));
});
