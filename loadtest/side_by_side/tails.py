#!/usr/bin/env python3
"""../shared/bench/side-by-side, unchanged, with each run's whole latency distribution kept.

The harness reports p50 and p99. At 64 connections on these shared VMs p99 moves by up to 2x
from round to round for every server alike, while p75-p95 are steady and show each server's
own shape. This runs the harness as it is (same arguments, same output) with a wrk `done()`
hook added to its script, and adds to every run in its --json a "pct" map (percentile ->
microseconds: 10, 25, 50, 75, 90, 95, 99, 99.9) and "mean_us". `rounds.py` reads them.

With `--fixed-rate R` (its own option, taken out before the harness sees the rest), each run is
oha at a fixed R requests/s instead of wrk's closed loop, with latency correction (open loop: a
stall delays the requests due after it, and they count it), on the same core with the same
connections, paths, headers and duration; the same fields come out, so the harness's table and
`rounds.py` read it as they read wrk's. At saturation, wrk's p99 is mostly queueing behind 63
other requests; at a fixed rate below it, p99 is what one request meets on its way.

    python3 loadtest/side_by_side/tails.py HARNESS [--fixed-rate R] [side-by-side arguments ...]
"""
import importlib.machinery
import importlib.util
import json
import os
import re
import subprocess
import sys
import types

HOOK = """
done = function(summary, latency, requests)
  for _, p in ipairs({10, 25, 50, 75, 90, 95, 99, 99.9}) do
    io.write(string.format("PCT %g %d\\n", p, latency:percentile(p)))
  end
  io.write(string.format("MEAN %f\\n", latency.mean))
end
"""


def load(path):
    loader = importlib.machinery.SourceFileLoader("side_by_side", path)
    spec = importlib.util.spec_from_loader("side_by_side", loader)
    mod = importlib.util.module_from_spec(spec)
    loader.exec_module(mod)
    return mod


PCTS = ["10", "25", "50", "75", "90", "95", "99", "99.9"]


def oha_run_one(mod, rate, paths_file, headers):
    """The harness's run_one with oha at a fixed rate in place of wrk."""
    urls = {}

    def run_one(port, _script, duration, conns, core):
        if port not in urls:
            urls[port] = f"{paths_file}.{port}.urls"
            with open(paths_file) as src, open(urls[port], "w") as dst:
                dst.writelines(f"http://127.0.0.1:{port}{p}" for p in src if p.strip())
        pids = mod.listening_pids(port)
        before = mod.cpu_ticks(pids)
        cmd = ["taskset", "-c", str(core), "oha", "--no-tui", "--output-format", "json",
               "-z", f"{duration}s", "-q", str(rate), "--latency-correction", "-c", str(conns),
               "--redirect", "0", "--urls-from-file", urls[port]]
        for k, v in headers:
            cmd += ["-H", f"{k}: {v}"]
        done = subprocess.run(cmd, capture_output=True, text=True)
        after = mod.cpu_ticks(pids)
        d = json.loads(done.stdout)
        codes = {int(k): v for k, v in d.get("statusCodeDistribution", {}).items()}
        reqs = sum(codes.values())
        # Requests still in flight when the time is up are cut off by oha, not failed.
        errors = {k: v for k, v in d.get("errorDistribution", {}).items() if "deadline" not in k}
        lp = d["latencyPercentiles"]
        return {
            "rps": d["summary"]["requestsPerSec"],
            "p50_ms": lp["p50"] * 1e3, "p99_ms": lp["p99"] * 1e3,
            "cpu_us_per_req": (after - before) * 1e6 / mod.HZ / reqs if reqs else float("inf"),
            "rss_mib": mod.rss_kib(pids) / 1024, "requests": reqs,
            "socket_errors": ", ".join(f"{k}: {v}" for k, v in errors.items()),
            "non_2xx_3xx": sum(v for c, v in codes.items() if not 200 <= c < 400),
            "pct": {p: int(lp[f"p{p}"] * 1e6) for p in PCTS},
            "mean_us": d["summary"]["average"] * 1e6,
        }

    return run_one


def fixed_rate_args(args):
    """(rate or None, paths file, headers, the other arguments)."""
    rate, rest, i = None, [], 0
    while i < len(args):
        if args[i] == "--fixed-rate":
            rate = int(args[i + 1])
            i += 2
        else:
            rest.append(args[i])
            i += 1
    paths = next(rest[j + 1] for j, a in enumerate(rest) if a == "--paths")
    headers = [tuple(x.strip() for x in rest[j + 1].split(":", 1)) for j, a in enumerate(rest) if a == "--header"]
    return rate, os.path.abspath(paths), headers, rest


def main(harness, args):
    mod = load(harness)
    rate, paths_file, headers, args = fixed_rate_args(args)
    if rate:
        mod.run_one = oha_run_one(mod, rate, paths_file, headers)
        sys.argv = [harness] + args
        return mod.main()
    last = {}

    def run(cmd, **kw):
        done = subprocess.run(cmd, **kw)
        if cmd and cmd[0] == "taskset" and "wrk" in cmd:
            last["out"] = done.stdout or ""
        return done

    mod.subprocess = types.SimpleNamespace(**{**vars(subprocess), "run": run})

    def wrk_script(paths_file, headers):
        name = plain_script(paths_file, headers)
        with open(name, "a") as f:
            f.write(HOOK)
        return name

    def run_one(*a, **kw):
        result = plain_run_one(*a, **kw)
        out = last.pop("out", "")
        result["pct"] = {m[1]: int(m[2]) for m in re.finditer(r"^PCT (\S+) (\d+)$", out, re.M)}
        mean = re.search(r"^MEAN (\S+)$", out, re.M)
        result["mean_us"] = float(mean[1]) if mean else None
        return result

    plain_script, plain_run_one = mod.wrk_script, mod.run_one
    mod.wrk_script, mod.run_one = wrk_script, run_one
    sys.argv = [harness] + args
    return mod.main()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2:]))
