"""Reads `perf sched script` on stdin: how long thread PID (a process's main thread, which runs
cartlink's one worker) waited while runnable after being switched out, and who ran first."""
import collections
import re
import sys

worker = sys.argv[1]
switch = re.compile(
    r"\s(\d+\.\d+):\s+sched:sched_switch: prev_comm=(.*?) prev_pid=(\d+) prev_prio=\d+ "
    r"prev_state=(\S+) ==> next_comm=(.*?) next_pid=(\d+)"
)
out_at, first, waits, by_thread = None, None, [], collections.Counter()
for line in sys.stdin:
    m = switch.search(line)
    if not m:
        continue
    t, prev_pid, state, next_comm, next_pid = float(m[1]), m[3], m[4], m[5], m[6]
    if prev_pid == worker and state.startswith("R"):
        out_at, first = t, next_comm
    elif next_pid == worker and out_at is not None:
        ms = (t - out_at) * 1000
        waits.append(ms)
        by_thread[first] += ms
        out_at = None
waits.sort()
n = len(waits)
if not n:
    print("never preempted (or no samples)")
    sys.exit()
pct = lambda q: waits[min(n - 1, int(n * q))]
top = ", ".join(f"{k} {v:.1f}" for k, v in by_thread.most_common(4))
print(f"preempted {n}x, {sum(waits):.1f} ms; waits p50 {pct(.5):.3f} p90 {pct(.9):.3f} "
      f"p99 {pct(.99):.3f} max {waits[-1]:.3f} ms; ran first (ms): {top}")
