-- wrk script for bench/flags/run. Everything comes from the environment:
--   BENCH_TOKEN           the Authorization header (a client or frontend token)
--   BENCH_METHOD          GET (default) or POST
--   BENCH_BODY            a JSON request body (POST)
--   BENCH_IF_NONE_MATCH   an ETag to send as If-None-Match (the polling SDK's 304 path)
-- At the end it prints one JSON line: requests, rps, latency percentiles (µs,
-- from wrk's own latency histogram) and error counts. wrk 4 corrects that
-- histogram for coordinated omission: a request that took longer than twice
-- the mean interval between a connection's requests also adds the samples the
-- requests queued behind it would have had, so one long stall moves p99.

wrk.method = os.getenv("BENCH_METHOD") or "GET"
wrk.headers["Authorization"] = os.getenv("BENCH_TOKEN")
local body = os.getenv("BENCH_BODY")
if body and body ~= "" then
  wrk.body = body
  wrk.headers["Content-Type"] = "application/json"
end
local etag = os.getenv("BENCH_IF_NONE_MATCH")
if etag and etag ~= "" then
  wrk.headers["If-None-Match"] = etag
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{"requests":%d,"seconds":%.3f,"rps":%.1f,"bytes":%d,' ..
    '"p50_us":%d,"p90_us":%d,"p99_us":%d,"max_us":%d,' ..
    '"errors_status":%d,"errors_socket":%d}\n',
    summary.requests, summary.duration / 1e6, summary.requests / (summary.duration / 1e6),
    summary.bytes, latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency.max, e.status, e.connect + e.read + e.write + e.timeout))
end
