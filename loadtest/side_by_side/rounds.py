#!/usr/bin/env python3
"""Per-round ratios from a side-by-side run's JSON (`--json` of ../shared/bench/side-by-side).

The medians the harness prints hide how often each comparison holds; on a shared VM one round
says little. For each cartlink target this prints, over the rounds, the median of its ratio to
nginx and to the floor (CPU µs per request, p50, p99) and in how many rounds the ratio was at
or below the goal (1.0 for nginx, 1.25 for the floor's CPU); with two cartlinks, the first
against the second as well. Where the runs carry wrk's whole distribution (`tails.py`), it
also prints each target's median latency at p75-p99.9 and, per percentile, cartlink's ratio to
nginx's: the shape, which at 64 connections is far steadier from round to round than p99.
With `NGINX_LOG=1` (an `nginx-log` target), each comparison with nginx is made with it too.
With `NGINX_AA=1` (an `nginx-aa` target, a second identical nginx), the same counts for nginx
against itself: the A/A control that says how often a server equal to nginx is at or below it.

    python3 loadtest/side_by_side/rounds.py /tmp/cartlink-side-by-side.json
"""
import json
import statistics
import sys

KEYS = [("cpu_us_per_req", "CPU"), ("p50_ms", "p50"), ("p99_ms", "p99")]


def ratios(runs, a, b, key):
    return [x[key] / y[key] for x, y in zip(runs[a], runs[b]) if y[key] > 0]


def line(label, rs, goal):
    if not rs:
        return f"  {label}: no rounds"
    held = sum(1 for r in rs if r <= goal)
    return f"  {label}: median {statistics.median(rs):.3f}x, at or below {goal}x in {held} of {len(rs)} rounds"


def main(path):
    runs = json.load(open(path))["runs"]
    cartlinks = [t for t in runs if t.startswith("cartlink")]
    for c in cartlinks + [t for t in runs if t == "nginx-aa"]:
        print(f"{c}, per round:")
        for ref in (t for t in ("nginx", "nginx-log") if t in runs):
            for key, name in KEYS:
                print(line(f"{name} vs {ref}", ratios(runs, c, ref, key), 1.0))
        if "floor" in runs:
            print(line("CPU vs floor", ratios(runs, c, "floor", "cpu_us_per_req"), 1.25))
    tails(runs, cartlinks)
    if len(cartlinks) == 2:
        a, b = cartlinks
        print(f"{a} against {b}, per round:")
        for key, name in KEYS:
            print(line(name, ratios(runs, a, b, key), 1.0))


def tails(runs, cartlinks):
    pcts = ["75", "90", "95", "99", "99.9"]
    if not all(r.get("pct") for rs in runs.values() for r in rs):
        return
    print("latency by percentile, median over rounds (ms):")
    print(f"  {'target':<12}" + "".join(f"{'p' + p:>8}" for p in pcts))
    for t, rs in runs.items():
        print(f"  {t:<12}" + "".join(f"{statistics.median(r['pct'][p] for r in rs) / 1000:>8.3f}" for p in pcts))
    for c in cartlinks + [t for t in runs if t == "nginx-aa"]:
        for ref in (t for t in ("nginx", "nginx-log") if t in runs):
            print(f"{c} against {ref} by percentile, per round (median ratio, rounds at or below):")
            cells = []
            for p in pcts:
                rs = [x["pct"][p] / y["pct"][p] for x, y in zip(runs[c], runs[ref]) if y["pct"][p] > 0]
                cells.append(f"p{p} {statistics.median(rs):.2f}x {sum(r <= 1.0 for r in rs)}/{len(rs)}" if rs else f"p{p} -")
            print("  " + ", ".join(cells))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "/tmp/cartlink-side-by-side.json")
