// The official TypeScript SDK client (Node 20) as an e2e peer: connects to one MCP endpoint,
// runs the operations it is given, and prints one JSON line per operation with what the SDK
// surfaced (its result, or the error's class, code and message), so a test asserts what a
// user of the SDK would see.
//
//   node ts_client.mjs <url> '<json>'
//   json: {"headers": {...}, "operations": [{"tool": "name", "arguments": {...}} | {"list": "tools" | "prompts" | "resources"}
//          | {"pause": {"ready": "/path", "resume": "/path"}}, ...]}
//   A pause writes `ready` and waits (up to 60 s) until `resume` exists, so a test can change
//   the world (restart a server) between two operations of one client session.
//
// Output: one line per operation, `{"op": "call:<tool>" | "<list>", "ok": true, "result": ...}`
// or `{"op", "ok": false, "stage": "call", "error": {"name", "code", "message"}}`; errors the
// transport reports outside an operation (an event that is not JSON-RPC, an answer for an
// unknown id) as `{"op": "onerror", ...}`. A failed connect prints one line with op
// `connect` and exits 0 (the test reads what was surfaced, not the exit code). Each
// operation has its own timeout, so a hung answer shows up as an error line.
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";
import { existsSync, writeFileSync } from "node:fs";

const [url, specText] = process.argv.slice(2);
const spec = JSON.parse(specText ?? "{}");
const options = { timeout: 15000 };

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
client.onerror = (error) => emit({ op: "onerror", ok: false, stage: "transport", error: describe(error) });
const lists = {
  tools: () => client.listTools(undefined, options),
  prompts: () => client.listPrompts(undefined, options),
  resources: () => client.listResources(undefined, options),
};

try {
  await client.connect(transport);
} catch (error) {
  emit({ op: "connect", ok: false, stage: "connect", error: describe(error) });
  process.exit(0);
}
async function pause({ ready, resume }) {
  writeFileSync(ready, "");
  for (let waited = 0; !existsSync(resume); waited += 100) {
    if (waited > 60000) throw new Error(`no ${resume} after 60 s`);
    await new Promise((done) => setTimeout(done, 100));
  }
}

for (const operation of spec.operations ?? []) {
  if (operation.pause) {
    await pause(operation.pause);
    continue;
  }
  const op = operation.list ?? `call:${operation.tool}`;
  try {
    const result = operation.list
      ? await lists[operation.list]()
      : await client.callTool({ name: operation.tool, arguments: operation.arguments ?? {} }, undefined, options);
    emit({ op, ok: true, result });
  } catch (error) {
    emit({ op, ok: false, stage: "call", error: describe(error) });
  }
}
await client.close().catch(() => {});
process.exit(0);
