// The official TypeScript SDK client (Node 20) as an e2e peer: connects to one MCP endpoint,
// makes the calls it is given, and prints one JSON line per call with what the SDK surfaced
// (its result, or the error's class, code and message), so a test asserts what a user of the
// SDK would see.
//
//   node ts_client.mjs <url> '<json>'
//   json: {"headers": {...}, "calls": [{"tool": "name", "arguments": {...}}, ...]}
//
// Output: one line per call, `{"ok": true, "result": ...}` or
// `{"ok": false, "error": {"name", "code", "message"}}`; a failed connect prints one such
// line for the connect and exits 0 (the test reads what was surfaced, not the exit code).
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";

const [url, specText] = process.argv.slice(2);
const spec = JSON.parse(specText ?? "{}");

function describe(error) {
  return {
    name: error?.constructor?.name ?? typeof error,
    code: error?.code ?? null,
    message: String(error?.message ?? error),
  };
}

function emit(line) {
  process.stdout.write(JSON.stringify(line) + "\n");
}

const transport = new StreamableHTTPClientTransport(new URL(url), {
  requestInit: { headers: spec.headers ?? {} },
});
const client = new Client({ name: "meshgate-e2e-ts", version: "0" });
try {
  await client.connect(transport);
} catch (error) {
  emit({ ok: false, stage: "connect", error: describe(error) });
  process.exit(0);
}
for (const call of spec.calls ?? []) {
  try {
    const result = await client.callTool({ name: call.tool, arguments: call.arguments ?? {} });
    emit({ ok: true, result });
  } catch (error) {
    emit({ ok: false, stage: "call", error: describe(error) });
  }
}
await client.close();
