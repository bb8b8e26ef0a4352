-- GET one order; with ETAG set in the environment, conditionally (expects 304s).
local etag = os.getenv("ETAG")
if etag and etag ~= "" then
  wrk.headers["If-None-Match"] = etag
end
function done(summary, latency, requests)
  io.write(string.format("requests %d, non-2xx/3xx %d\n", summary.requests, summary.errors.status))
  io.write(string.format("p50 %.2f ms, p90 %.2f ms, p99 %.2f ms, max %.2f ms\n",
    latency:percentile(50)/1000, latency:percentile(90)/1000, latency:percentile(99)/1000, latency.max/1000))
end
