-- wrk script for bench/subscribe.py: every request a new contact, spread over 50 SKUs.
-- wrk -s bench/subscribe.lua URL -- <path> <base> <threads> [api-key]
--   base: offset of this run's contact numbers (keeps runs on one database disjoint)
-- Prints one line "BENCH_JSON {...}" with req/s, p50/p99 (ms), non-201 and socket errors.

local threads = {}

function setup(thread)
  thread:set("tid", #threads)
  table.insert(threads, thread)
end

function init(args)
  path, base, nthreads, key = args[1], tonumber(args[2]), tonumber(args[3]), args[4]
  counter, non201 = 0, 0
  headers = { ["Content-Type"] = "application/json" }
  if key then headers["Authorization"] = "Bearer " .. key end
end

function request()
  local n = base + counter * nthreads + tid
  counter = counter + 1
  local body = string.format(
    '{"sku":"TSHIRT-%02d","channel":"sms","contact":"+86138%08d","locale":"zh-CN",'
      .. '"timezone":"Asia/Shanghai","name":"张女士","priority":"standard",'
      .. '"product":{"name":"红色T恤 M","url":"https://shop.example/p/123"}}',
    n % 50, n % 100000000)
  return wrk.format("POST", path, headers, body)
end

function response(status)
  if status ~= 201 then non201 = non201 + 1 end
end

function done(summary, latency, _)
  local non = 0
  for _, t in ipairs(threads) do non = non + t:get("non201") end
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests":%d,"seconds":%.3f,"rps":%.1f,"p50_ms":%.3f,"p99_ms":%.3f,'
      .. '"non201":%d,"socket_errors":%d,"timeouts":%d}\n',
    summary.requests, summary.duration / 1e6, summary.requests / (summary.duration / 1e6),
    latency:percentile(50) / 1000, latency:percentile(99) / 1000, non,
    e.connect + e.read + e.write, e.timeout))
end
