-- wrk script for Meshgate's load benchmark (benches/load/run.py, `make bench`).
--
-- POSTs one realistic ~1 KB MCP `tools/call` over and over and checks every response:
-- HTTP 200, the upstream's marker in the body, and the e-mail address the upstream puts in
-- every result either in clear (expect = "plain") or masked (expect = "masked": "[EMAIL]"
-- present, the address absent). At the end it prints one `WRK_RESULT {json}` line and exits
-- non-zero when any response failed a check, so a fast but wrong configuration cannot pass.
--
--   wrk -t1 -c32 -d10s -s mcp.lua http://127.0.0.1:PORT/mcp/bench -- plain|masked [BEARER_TOKEN] [PAUSE_MS]
--
-- PAUSE_MS > 0 paces the load: each connection waits a random time after a response
-- before its next request (wrk's `delay()` hook; exponential with mean PAUSE_MS, in whole
-- milliseconds), so -c4 with 3 ms offers about 4 / (3 ms + latency) requests per second
-- whatever the configuration's capacity, at random moments. wrk starts a request's latency
-- clock when it writes the request, after the pause. Without
-- PAUSE_MS no `delay()` is defined and wrk runs closed-loop as fast as answers come.

local MARKER = "meshgate-bench-ok"
local EMAIL = "alice@example.com"
local MASKED = "[EMAIL]"

-- Per-thread globals (read back from each thread in done()).
failures = 0
first_failure = nil
local expect = "plain"

local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  expect = args[1] or "plain"
  local token = args[2]
  local pause_ms = tonumber(args[3] or "") or 0
  if pause_ms > 0 then
    -- Defined here, not at the top level: wrk looks for it after init(), and a top-level
    -- delay() returning 0 would still send every request through wrk's timer.
    -- Exponentially distributed pauses (mean PAUSE_MS, in wrk's whole milliseconds): the
    -- connections' requests arrive at random moments, as independent clients' do. A fixed
    -- pause lines the connections up on the same millisecond tick of wrk's timer, so they
    -- send together and every request queues behind the others: latency then grows with
    -- about 2.5x the per-request cost instead of 1x (measured, BENCHMARKS.md).
    math.randomseed(os.time())
    delay = function() return math.floor(-math.log(1 - math.random()) * pause_ms + 0.5) end
  end
  local note = string.rep("Customer asked about the delivery window and invoice copy. ", 13)
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/json"
  wrk.headers["Accept"] = "application/json, text/event-stream"
  if token ~= nil and token ~= "" then
    wrk.headers["Authorization"] = "Bearer " .. token
  end
  wrk.body = '{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"get_item","arguments":'
    .. '{"id":"c-001","fields":["name","status","owner","orders"],"include_history":false,'
    .. '"note":"' .. note .. '"},"_meta":{"progressToken":"bench-1"}}}'
end

local function check(status, body)
  if status ~= 200 then return false end
  if not body:find(MARKER, 1, true) then return false end
  if expect == "masked" then
    return body:find(MASKED, 1, true) ~= nil and body:find(EMAIL, 1, true) == nil
  end
  return body:find(EMAIL, 1, true) ~= nil
end

function response(status, headers, body)
  if not check(status, body) then
    failures = failures + 1
    if first_failure == nil then
      first_failure = status .. " " .. string.sub(body, 1, 300)
    end
  end
end

function done(summary, latency, requests)
  local failed, example = 0, ""
  for _, thread in ipairs(threads) do
    failed = failed + (thread:get("failures") or 0)
    local f = thread:get("first_failure")
    if f ~= nil and example == "" then example = f end
  end
  local e = summary.errors
  io.write(string.format(
    'WRK_RESULT {"requests":%d,"duration_us":%d,"failures":%d,"connect_errors":%d,"read_errors":%d,'
      .. '"write_errors":%d,"status_errors":%d,"timeouts":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,'
      .. '"mean_us":%.1f,"max_us":%d}\n',
    summary.requests, summary.duration, failed, e.connect, e.read, e.write, e.status, e.timeout,
    math.floor(latency:percentile(50)), math.floor(latency:percentile(90)), math.floor(latency:percentile(99)),
    latency.mean, math.floor(latency.max)))
  if failed > 0 or e.connect > 0 or e.read > 0 or e.write > 0 or e.timeout > 0 then
    io.write("WRK_FAILED " .. failed .. " responses failed the checks; first: " .. example .. "\n")
    os.exit(1)
  end
end
