#!/usr/bin/env python3
"""../shared/bench/side-by-side, unchanged, with each run's whole latency distribution kept.

The harness reports p50 and p99. At 64 connections on these shared VMs p99 moves by up to 2x
from round to round for every server alike, while p75-p95 are steady and show each server's
own shape. This runs the harness as it is (same arguments, same output) with a wrk `done()`
hook added to its script, and adds to every run in its --json a "pct" map (percentile ->
microseconds: 10, 25, 50, 75, 90, 95, 99, 99.9) and "mean_us". `rounds.py` reads them.

    python3 loadtest/side_by_side/tails.py HARNESS [side-by-side arguments ...]
"""
import importlib.machinery
import importlib.util
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


def main(harness, args):
    mod = load(harness)
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
