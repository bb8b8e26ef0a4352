-- POST /v1/orders with a new order id per request (thread id + counter).
local threads = {}
local next_id = 0
function setup(thread)
  next_id = next_id + 1
  thread:set("tid", next_id)
  table.insert(threads, thread)
end
function init(args)
  counter = 0
  prefix = args[1] or "b"
end
function request()
  counter = counter + 1
  local body = string.format('{"order_id":"%s-%d-%d","customer_id":"c-%d","currency":"EUR","lines":[{"sku":"SKU-A","quantity":1,"unit_price_minor":1250}],"shipping_address":{"name":"Ada","line1":"1 Main St","city":"Berlin","postal_code":"10115","country":"DE"}}', prefix, tid, counter, counter % 500)
  return wrk.format("POST", "/v1/orders", {["Content-Type"] = "application/json"}, body)
end
function done(summary, latency, requests)
  local non2xx = summary.errors.status
  io.write(string.format("requests %d, non-2xx %d, socket errors connect %d read %d write %d timeout %d\n",
    summary.requests, non2xx, summary.errors.connect, summary.errors.read, summary.errors.write, summary.errors.timeout))
  io.write(string.format("p50 %.2f ms, p90 %.2f ms, p99 %.2f ms, max %.2f ms\n",
    latency:percentile(50)/1000, latency:percentile(90)/1000, latency:percentile(99)/1000, latency.max/1000))
end
