#!/usr/bin/env python3
"""Slowloris + clients that never read, against normal keep-alive traffic measured by oha.

Phase 1 (clean): oha sends GETs of a signed link at a fixed RATE (open loop, latency corrected)
over CONNS keep-alive connections for DURATION s.
Phase 2 (attack): the same oha command while, in a separate process, SLOW connections trickle
one header line every TRICKLE s (never finishing the head) and NOREAD connections pipeline
requests and never read; each slot reconnects as soon as it is closed.
Phase 3 (clean 2): the same oha command again once the attackers are gone.

When is a connection "closed"? A slowloris connection sees the server's FIN. A never-reading
one may not: when the server closes it with its responses still unsent, the FIN waits behind
them in a zero window the client never opens (the server-side socket sits in FIN-WAIT-1,
orphaned); the client sees the close only when it is a reset (the server had unread requests).
So a never-read connection counts as closed at whichever comes first: the client sees FIN or
RST, or the server-side socket leaves ESTABLISHED (read with `ss`, same machine).

Verdict: PASS when the attack p99 <= 1.2 x the clean p99, no legit request failed, every slow
connection was closed within header_read_timeout + TOLERANCE s of opening, and every
never-read connection within write_timeout + TOLERANCE s of opening. The two clean runs bound
the machine's noise: the ratio is judged against both (see judge()), INCONCLUSIVE when they
disagree by more than the 1.2 margin in a way that decides the verdict.

    python3 loadtest/slowloris/slowloris.py --addr 127.0.0.1:8080 --path /kit.SIG
"""
import argparse
import asyncio
import json
import os
import resource
import shutil
import socket
import subprocess
import sys
import time

UA = "Mozilla/5.0 (iPhone) loadtest"


def need_oha():
    if not shutil.which("oha"):
        sys.exit("oha not found: install it with `CARGO_BUILD_JOBS=1 cargo install oha --locked`"
                 " (and put ~/.cargo/bin on PATH)")


def oha(addr, path, rate, duration, conns, http2=False):
    """One fixed-rate open-loop run; returns n, errors and latency percentiles in ms."""
    # One runtime thread: oha shares one core with the attackers (taskset in run.sh).
    cmd = ["oha", "--no-tui", "--output-format", "json", "--worker-threads", "1", "--redirect", "0",
           "--latency-correction", "-q", str(rate), "-n", str(int(rate * duration)), "-c", str(conns),
           "-H", f"User-Agent: {UA}"]
    if http2:
        cmd.append("--http2")
    cmd.append(f"http://{addr}{path}")
    res = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
    codes = {int(k): v for k, v in res["statusCodeDistribution"].items()}
    ok = sum(v for k, v in codes.items() if k in (302, 303))
    failed = sum(res["errorDistribution"].values()) + sum(codes.values()) - ok
    p = res["latencyPercentiles"]
    return {"n": ok + failed, "errors": failed, "codes": codes, "errs": res["errorDistribution"],
            "p50": p["p50"] * 1e3, "p99": p["p99"] * 1e3, "p999": p["p99.9"] * 1e3}


def show(name, r):
    extra = f" {r['codes']} {r['errs']}" if r["errors"] else ""
    return (f"{name}: n={r['n']} errors={r['errors']} p50={r['p50']:.3f}ms p99={r['p99']:.3f}ms"
            f" p99.9={r['p999']:.3f}ms{extra}")


def judge(clean1, under, clean2, limit=1.2):
    """Attack p99 against the two clean runs around it (before and after the attack). PASS when
    it is within LIMIT x even of the better clean p99, FAIL when above LIMIT x even of the worse
    one, INCONCLUSIVE in between: the machine's own noise (the clean runs disagreeing) is then
    larger than the effect to be judged. With equal clean runs this is the plain ratio."""
    lo, hi = sorted((clean1["p99"], clean2["p99"]))
    r_best, r_worst = under["p99"] / lo, under["p99"] / hi
    word = "PASS" if r_best <= limit else "FAIL" if r_worst > limit else "INCONCLUSIVE"
    ratio = f"{r_worst:.2f}" if lo == hi else f"{r_worst:.2f}-{r_best:.2f}"
    return word, f"p99 ratio {ratio} vs <= {limit}"


def attack_child(argv):
    """Starts this script's attack part in its own process, at normal priority (SCHED_OTHER):
    run.sh runs the server and this measuring side SCHED_FIFO, so oha always preempts the
    attackers on the shared client core, while the attackers still get a fair share of the
    CPU against whatever else runs on the machine (under SCHED_IDLE, a busy machine starved
    them and their view of each close came seconds late)."""
    other = lambda: os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))  # noqa: E731
    return subprocess.Popen([sys.executable, *argv], stdout=subprocess.PIPE, text=True, preexec_fn=other)


# ---- the attack (runs in the child process) ----

async def slow_conn(host, port, trickle, limit):
    """Opens, sends a request line and then one header line every TRICKLE s; returns the time
    until the server closed (None: not within LIMIT s, or could not connect)."""
    try:
        r, w = await asyncio.open_connection(host, port)
    except OSError:
        await asyncio.sleep(0.1)
        return None
    t0 = time.monotonic()
    w.write(b"GET / HTTP/1.1\r\nHost: x\r\n")
    closed, i = None, 0
    try:
        while time.monotonic() - t0 < limit:
            try:
                if not await asyncio.wait_for(r.read(1024), trickle):
                    closed = time.monotonic() - t0
                    break
            except asyncio.TimeoutError:
                w.write(f"X-{i}: y\r\n".encode())
                i += 1
    except (ConnectionError, OSError):
        closed = time.monotonic() - t0
    w.transport.abort()
    return closed


class ServerSide:
    """The server-side view of our connections: every POLL s, which client ports the server's
    kernel still holds ESTABLISHED (`ss`)."""

    POLL = 0.2

    def __init__(self, port):
        self.port, self.estab, self.at = port, set(), 0.0

    async def run(self, end):
        while time.monotonic() < end:
            t = time.monotonic()
            ss = ["ss", "-Htn", "state", "established", f"( sport = :{self.port} )"]
            out = (await asyncio.to_thread(subprocess.run, ss, capture_output=True, text=True)).stdout
            self.estab = {int(line.split()[-1].rsplit(":", 1)[1]) for line in out.splitlines() if line}
            self.at = t
            await asyncio.sleep(self.POLL)


async def noread_conn(host, port, server, limit):
    """Pipelines /healthz requests and never reads; returns (seconds until closed or None, how).
    The receive buffer is made small *before* connecting, so the window we advertise is what
    we can hold and closes cleanly (set after connect, the kernel has already advertised a
    large window, then drops the server's segments and the ACKs they carry: both sides end in
    retransmission backoff instead of a clean zero window)."""
    loop = asyncio.get_running_loop()
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    try:
        await loop.sock_connect(sock, (host, port))
    except OSError:
        sock.close()
        await asyncio.sleep(0.1)
        return None, "connect failed"
    t0 = time.monotonic()
    lport = sock.getsockname()[1]
    _, w = await asyncio.open_connection(sock=sock, limit=1024)
    # Cheap requests (health checks): the point is the stalled writes, not server CPU.
    batch = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n" * 200
    seen = False
    closed, how = None, "open"
    try:
        while time.monotonic() - t0 < limit:
            if sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 8)[0] != 1:  # 1 = ESTABLISHED
                closed, how = time.monotonic() - t0, "client saw FIN/RST"
                break
            if server.at > t0:
                if lport in server.estab:
                    seen = True
                elif seen:
                    closed, how = server.at - t0, "server-side socket left ESTABLISHED"
                    break
            if w.transport.get_write_buffer_size() < 65536:
                w.write(batch)
            await asyncio.sleep(0.1)
    except (ConnectionError, OSError):
        closed, how = time.monotonic() - t0, "client saw FIN/RST"
    w.transport.abort()
    return closed, how


async def attack(a, host, port):
    slow_res, noread_res = [], []
    end = time.monotonic() + a.duration
    server = ServerSide(port)
    # Attackers keep coming for the whole phase: each slot reconnects after being closed.
    # A connection opened near the end is still followed until it closes (or its limit).

    async def slow_slot():
        while time.monotonic() < end:
            slow_res.append(await slow_conn(host, port, a.trickle, a.header_timeout + 10))

    async def noread_slot(i):
        # Staggered over one write timeout: one never-reader arrives every WRITE_TIMEOUT/NOREAD s
        # instead of all NOREAD at once (see RESULTS.md for what a synchronized wave does).
        await asyncio.sleep(i * a.write_timeout / a.noread)
        while time.monotonic() < end:
            noread_res.append(await noread_conn(host, port, server, a.write_timeout + 10))

    poller = asyncio.create_task(server.run(end + a.write_timeout + 11))
    await asyncio.gather(*[slow_slot() for _ in range(a.slow)], *[noread_slot(i) for i in range(a.noread)])
    poller.cancel()
    return {"slow": slow_res, "noread": noread_res}


# ---- the measurement and the verdict (parent process) ----

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--addr", default="127.0.0.1:8080")
    ap.add_argument("--path", required=True)
    ap.add_argument("--rate", type=int, default=1000, help="legit requests per second (oha -q)")
    ap.add_argument("--conns", type=int, default=8, help="legit keep-alive connections (oha -c)")
    ap.add_argument("--duration", type=float, default=20, help="seconds per measured phase")
    ap.add_argument("--slow", type=int, default=1000)
    ap.add_argument("--noread", type=int, default=50)
    ap.add_argument("--trickle", type=float, default=1.0)
    ap.add_argument("--header-timeout", type=float, default=5.0)
    ap.add_argument("--write-timeout", type=float, default=5.0)
    ap.add_argument("--tolerance", type=float, default=1.0, help="seconds past a timeout still counted in time")
    ap.add_argument("--attack-only", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 65536), hard))
    host, port = a.addr.rsplit(":", 1)
    port = int(port)

    if a.attack_only:
        print(json.dumps(asyncio.run(attack(a, host, port))))
        return 0

    need_oha()
    clean = oha(a.addr, a.path, a.rate, a.duration, a.conns)
    print(show("clean  ", clean), flush=True)
    # The attack starts one write timeout + 1 s before the measurement (every slot has connected
    # and the staggered never-readers are all in) and ends 2 s after it.
    lead = a.write_timeout + 1
    child = attack_child([__file__, "--attack-only", *sys.argv[1:], "--duration", str(lead + a.duration + 2)])
    time.sleep(lead)
    under = oha(a.addr, a.path, a.rate, a.duration, a.conns)
    print(show("attack ", under) + f" ({a.slow} slowloris + {a.noread} never-reading slots)", flush=True)
    res = json.loads(child.communicate()[0].strip().splitlines()[-1])
    # Once every attacker is gone, the same clean run again: tells the attack from machine noise.
    clean2 = oha(a.addr, a.path, a.rate, a.duration, a.conns)
    print(show("clean 2", clean2), flush=True)

    slow = res["slow"]
    slow_late = [t for t in slow if t is None or t > a.header_timeout + a.tolerance]
    closed = [t for t in slow if t is not None]
    print(f"slowloris: {len(closed)}/{len(slow)} closed, after {min(closed):.2f}-{max(closed):.2f}s"
          f" (header timeout {a.header_timeout}s)" if closed else f"slowloris: 0/{len(slow)} closed")
    nr = [(t, how) for t, how in res["noread"] if how != "connect failed"]
    nr_late = [t for t, _ in nr if t is None or t > a.write_timeout + a.tolerance]
    nr_closed = [t for t, _ in nr if t is not None]
    hows = {}
    for _, how in nr:
        hows[how] = hows.get(how, 0) + 1
    print(f"never-read: {len(nr_closed)}/{len(nr)} closed" +
          (f", after {min(nr_closed):.2f}-{max(nr_closed):.2f}s" if nr_closed else "") +
          f" (write timeout {a.write_timeout}s) {hows}")
    for name, late in (("slowloris", slow_late), ("never-read", nr_late)):
        if late:
            print(f"{name} late (s after opening; None: still open when given up): {late[:10]}")
    word, ratio = judge(clean, under, clean2)
    errors = clean["errors"] + under["errors"] + clean2["errors"]
    closes_ok = (slow or not a.slow) and not slow_late and (nr or not a.noread) and not nr_late
    if errors or not closes_ok:
        word = "FAIL"
    print("VERDICT:", word,
          f"({ratio}; legit errors {errors};"
          f" slow not closed within {a.header_timeout + a.tolerance:g}s: {len(slow_late)}/{len(slow)};"
          f" never-read not closed within {a.write_timeout + a.tolerance:g}s: {len(nr_late)}/{len(nr)})")
    return {"PASS": 0, "FAIL": 1, "INCONCLUSIVE": 3}[word]


if __name__ == "__main__":
    sys.exit(main())
