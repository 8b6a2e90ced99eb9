// The official TypeScript MCP client (Node 20) as a peer for the e2e suite: connects to a
// URL with extra request headers, runs the given operations and prints one JSON line per
// operation with what the client read (or the error it raised), then exits.
//
//   node ts_list_client.mjs <url> '<headers as JSON>' tools | prompts | resources | call:<tool>
//
// Each operation has its own timeout, so a hung answer shows up as an error line.
import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js';

const [url, headersJson, ...operations] = process.argv.slice(2);
const headers = JSON.parse(headersJson || '{}');
const transport = new StreamableHTTPClientTransport(new URL(url), { requestInit: { headers } });
const client = new Client({ name: 'meshgate-e2e-ts', version: '0' });
// Transport-level errors (an event that is not JSON-RPC, a response for an unknown id) are
// reported, not fatal: the operations say what the client ended up reading.
client.onerror = (error) => console.log(JSON.stringify({ op: 'onerror', error: String(error?.message ?? error) }));

const options = { timeout: 15000 };
const run = {
  tools: () => client.listTools(undefined, options),
  prompts: () => client.listPrompts(undefined, options),
  resources: () => client.listResources(undefined, options),
};

try {
  await client.connect(transport);
  for (const op of operations) {
    try {
      const result = op.startsWith('call:')
        ? await client.callTool({ name: op.slice(5), arguments: {} }, undefined, options)
        : await run[op]();
      console.log(JSON.stringify({ op, result }));
    } catch (error) {
      console.log(JSON.stringify({ op, error: String(error?.message ?? error) }));
    }
  }
} catch (error) {
  console.log(JSON.stringify({ op: 'connect', error: String(error?.message ?? error) }));
} finally {
  await client.close().catch(() => {});
  process.exit(0);
}
