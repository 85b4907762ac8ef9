"""Reads `perf sched script` on stdin: how long thread PID (a process's main thread, which runs
cartlink's one worker) waited while runnable after being switched out, and who ran in its place.
Prints the summary line, the waits over 0.3 ms with everyone who ran during them (a long wait
is usually two or three threads in a row), and how long each of the busiest threads ran at a
stretch."""
import collections
import re
import sys

worker = sys.argv[1]
switch = re.compile(
    r"\s(\d+\.\d+):\s+sched:sched_switch: prev_comm=(.*?) prev_pid=(\d+) prev_prio=\d+ "
    r"prev_state=(\S+) ==> next_comm=(.*?) next_pid=(\d+)"
)
out_at, first, during = None, None, {}
waits, by_first, long_by = [], collections.Counter(), collections.Counter()
runs = collections.defaultdict(list)
started = None
for line in sys.stdin:
    m = switch.search(line)
    if not m:
        continue
    t, prev_comm, prev_pid, state, next_comm, next_pid = float(m[1]), m[2], m[3], m[4], m[5], m[6]
    if started is not None and prev_pid != worker:
        ms = (t - started) * 1000
        runs[prev_comm].append(ms)
        if out_at is not None:
            during[prev_comm] = during.get(prev_comm, 0) + ms
    started = t
    if prev_pid == worker and state.startswith("R"):
        out_at, first, during = t, next_comm, {}
    elif next_pid == worker and out_at is not None:
        ms = (t - out_at) * 1000
        waits.append(ms)
        by_first[first] += ms
        if ms > 0.3:
            for k, v in during.items():
                long_by[k] += v
        out_at = None


def pct(v, q):
    v = sorted(v)
    return v[min(len(v) - 1, int(len(v) * q))]


n = len(waits)
if not n:
    print("never preempted (or no samples)")
    sys.exit()
top = ", ".join(f"{k} {v:.1f}" for k, v in by_first.most_common(4))
print(f"preempted {n}x, {sum(waits):.1f} ms; waits p50 {pct(waits, .5):.3f} p90 {pct(waits, .9):.3f} "
      f"p99 {pct(waits, .99):.3f} max {max(waits):.3f} ms; ran first (ms): {top}")
longs = [w for w in waits if w > 0.3]
print(f"    waits over 0.3 ms: {len(longs)}, {sum(longs):.1f} ms; who ran in them (ms): "
      + ", ".join(f"{k} {v:.1f}" for k, v in long_by.most_common(5)))
busiest = sorted((k for k in runs if k != "swapper/0"), key=lambda k: -sum(runs[k]))[:4]
print("    stretches (ms, p50/p99/max): "
      + "; ".join(f"{k} {pct(runs[k], .5):.3f}/{pct(runs[k], .99):.3f}/{max(runs[k]):.3f}" for k in busiest))
