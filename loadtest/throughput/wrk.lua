-- Random signed paths from PATHS (one per line), an in-app browser User-Agent and a CDN's
-- X-Forwarded-For; prints the latency percentiles wrk's own report leaves out.
local paths = {}
for line in io.lines(os.getenv("PATHS")) do paths[#paths + 1] = line end
local ua = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Mobile/15E148 Instagram 305.0.0.0"
math.randomseed(os.time())
request = function()
  local ip = "203.0." .. math.random(0, 255) .. "." .. math.random(1, 254)
  return wrk.format("GET", paths[math.random(#paths)], { ["User-Agent"] = ua, ["X-Forwarded-For"] = ip })
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("WRK requests=%d seconds=%.2f p50_ms=%.3f p99_ms=%.3f p999_ms=%.3f errors=%d non3xx=%d\n",
    summary.requests, summary.duration / 1e6, latency:percentile(50) / 1000, latency:percentile(99) / 1000,
    latency:percentile(99.9) / 1000, e.connect + e.read + e.write + e.timeout, e.status))
end
