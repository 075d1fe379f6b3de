-- wrk script: POST /v1/orders with a unique Idempotency-Key per request (so every request is a
-- new order, retried safely), the merchant's API key from the environment (ONECARD_API_KEY).
-- Used by scripts/http-load.sh.
local counter = 0
local thread_id = 0
local threads = {}

function setup(thread)
  thread:set("id", #threads)
  table.insert(threads, thread)
end

function init(args)
  thread_id = id
  key = os.getenv("ONECARD_API_KEY")
  run = os.getenv("ONECARD_RUN") or "run"
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/json"
  wrk.headers["Authorization"] = "Bearer " .. key
  body = '{"amount":"12.50","items":[{"name":"Green tea","quantity":2}],' ..
         '"delivery":{"name":"Alice Example","address":"1 Main Street","phone":"+49 30 123456"},' ..
         '"release":{"on":"receipt"}}'
end

function request()
  counter = counter + 1
  wrk.headers["Idempotency-Key"] = run .. "-" .. thread_id .. "-" .. counter
  return wrk.format(nil, "/v1/orders", nil, body)
end

function done(summary, latency, requests)
  io.write(string.format("non-2xx or errors: %d status, %d connect, %d read, %d write, %d timeout\n",
    summary.errors.status, summary.errors.connect, summary.errors.read,
    summary.errors.write, summary.errors.timeout))
  for _, p in pairs({50, 90, 99, 99.9}) do
    io.write(string.format("latency p%g: %.2f ms\n", p, latency:percentile(p) / 1000))
  end
end
