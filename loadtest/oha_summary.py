#!/usr/bin/env python3
"""One oha JSON report (--output-format json) as one line for the load-test scripts:
`answers redirects(302) errors p50_ms p99_ms p999_ms`. Requests still in flight when the run's
time is up are cut off by oha, not failed, so they are not counted as errors."""
import json
import sys

d = json.load(open(sys.argv[1]))
codes = d.get("statusCodeDistribution", {})
errors = {k: v for k, v in d.get("errorDistribution", {}).items() if "deadline" not in k}
lp = d["latencyPercentiles"]
print(sum(codes.values()), codes.get("302", 0), sum(errors.values()),
      *(f"{lp[k] * 1000:.3f}" for k in ("p50", "p99", "p99.9")))
