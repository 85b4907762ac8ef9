#!/usr/bin/env python3
"""Slowloris + clients that never read, against normal keep-alive traffic.

Phase 1 (clean): LEGIT keep-alive connections send GETs of a signed link at RATE req/s in
total for DURATION s; latency of each request is recorded.
Phase 2 (attack): the same legit load while SLOW connections trickle one header line every
TRICKLE s (never finishing the head) and NOREAD connections pipeline requests and never read.

Verdict: PASS when legit p99 under attack <= 1.2 x clean p99 (+0.5 ms allowance for the
Python client's own jitter), no legit request failed, every slow connection was closed
within header_read_timeout + 1 s of opening, and every no-read connection was closed.

    python3 loadtest/slowloris/slowloris.py --addr 127.0.0.1:8080 --path /kit.SIG --header-timeout 5
"""
import argparse
import asyncio
import json
import os
import resource
import statistics
import sys
import time


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(len(xs) * p))] if xs else float("nan")


async def read_response(reader):
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    if length:
        await reader.readexactly(length)
    return head[9:12]


async def legit(host, port, path, rate, duration, conns):
    lat, errors = [], 0
    req = f"GET {path} HTTP/1.1\r\nHost: x\r\nUser-Agent: Mozilla/5.0 (iPhone) loadtest\r\n\r\n".encode()
    per_conn_interval = conns / rate
    end = time.monotonic() + duration

    async def one():
        nonlocal errors
        r, w = await asyncio.open_connection(host, port)
        nxt = time.monotonic()
        while time.monotonic() < end:
            nxt += per_conn_interval
            t0 = time.perf_counter()
            try:
                w.write(req)
                status = await asyncio.wait_for(read_response(r), 5)
                if status not in (b"302", b"303"):
                    errors += 1
                lat.append(time.perf_counter() - t0)
            except Exception:
                errors += 1
                r, w = await asyncio.open_connection(host, port)
            delay = nxt - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
        w.close()

    await asyncio.gather(*(one() for _ in range(conns)))
    return lat, errors


async def slow_conn(host, port, trickle, results, limit):
    try:
        r, w = await asyncio.open_connection(host, port)
    except OSError:
        results.append(None)
        return
    t0 = time.monotonic()
    w.write(b"GET / HTTP/1.1\r\nHost: x\r\n")
    i = 0
    try:
        while time.monotonic() - t0 < limit:
            try:
                data = await asyncio.wait_for(r.read(1024), trickle)
                if not data:
                    break
            except asyncio.TimeoutError:
                w.write(f"X-{i}: y\r\n".encode())
                i += 1
    except (ConnectionError, OSError):
        pass
    results.append(time.monotonic() - t0)
    w.close()


async def noread_conn(host, port, path, results, limit):
    """Pipelines requests and never reads. Whether the server closed the connection is read from
    the kernel (TCP_INFO state leaves ESTABLISHED on the server's FIN or RST), not from a write
    error, which may never come while our own send buffer is full."""
    import socket

    r, w = await asyncio.open_connection(host, port, limit=1024)
    t0 = time.monotonic()
    sock = w.get_extra_info("socket")
    # A small receive buffer so the server's writes stall quickly.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    # Cheap requests (health checks): the point is the stalled writes, not server CPU.
    batch = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n" * 200
    closed = None
    try:
        while time.monotonic() - t0 < limit:
            if sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 8)[0] != 1:  # 1 = ESTABLISHED
                closed = time.monotonic() - t0
                break
            if w.transport.get_write_buffer_size() < 65536:
                w.write(batch)
            await asyncio.sleep(0.1)
    except (ConnectionError, OSError):
        closed = time.monotonic() - t0
    results.append(closed)
    w.transport.abort()


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--addr", default="127.0.0.1:8080")
    ap.add_argument("--path", required=True)
    ap.add_argument("--rate", type=int, default=500)
    ap.add_argument("--legit", type=int, default=8)
    ap.add_argument("--duration", type=float, default=15)
    ap.add_argument("--slow", type=int, default=1000)
    ap.add_argument("--noread", type=int, default=50)
    ap.add_argument("--trickle", type=float, default=1.0)
    ap.add_argument("--header-timeout", type=float, default=5.0)
    ap.add_argument("--write-timeout", type=float, default=5.0)
    ap.add_argument("--attack-only", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 65536), hard))
    host, port = a.addr.rsplit(":", 1)
    port = int(port)

    if a.attack_only:
        slow_res, noread_res = [], []
        limit = a.header_timeout + 10
        # Attackers keep coming for the whole phase: each slot reconnects after being closed.
        end = time.monotonic() + a.duration

        async def slot(fn, *args):
            while time.monotonic() < end:
                await fn(*args)

        tasks = [slot(slow_conn, host, port, a.trickle, slow_res, limit) for _ in range(a.slow)]
        tasks += [noread_conn(host, port, a.path, noread_res, a.write_timeout + 20) for _ in range(a.noread)]
        await asyncio.gather(*tasks)
        print(json.dumps({"slow": slow_res, "noread": noread_res}))
        return 0

    clean, clean_err = await legit(host, port, a.path, a.rate, a.duration, a.legit)
    # The attack runs in its own process at lower priority, so the measuring client's latency
    # is not its own event loop being busy with 1,000 sockets.
    argv = [sys.executable, __file__, "--attack-only"] + [
        x for x in sys.argv[1:] if x != "--attack-only"
    ]
    proc = await asyncio.create_subprocess_exec(*argv, stdout=asyncio.subprocess.PIPE, preexec_fn=lambda: os.nice(10))
    await asyncio.sleep(1.0)
    attack, attack_err = await legit(host, port, a.path, a.rate, a.duration - 1.0, a.legit)
    out, _ = await proc.communicate()
    res = json.loads(out.decode().strip().splitlines()[-1])
    slow_res, noread_res = res["slow"], res["noread"]

    c99, x99 = pct(clean, 0.99), pct(attack, 0.99)
    total_slow, total_noread = len(slow_res), len(noread_res)
    slow_open = [t for t in slow_res if t is None or t > a.header_timeout + 1]
    noread_open = [t for t in noread_res if t is None]
    print(f"clean : n={len(clean)} errors={clean_err} p50={statistics.median(clean)*1e3:.2f}ms p99={c99*1e3:.2f}ms")
    print(f"attack: n={len(attack)} errors={attack_err} p50={statistics.median(attack)*1e3:.2f}ms p99={x99*1e3:.2f}ms"
          f" ({a.slow} slowloris + {a.noread} never-reading connections)")
    closed = [t for t in slow_res if t is not None]
    if closed:
        print(f"slowloris: {len(closed)}/{total_slow} closed, after {min(closed):.2f}-{max(closed):.2f}s"
              f" (header timeout {a.header_timeout}s)")
    nr = [t for t in noread_res if t is not None]
    if nr:
        print(f"never-read: {len(nr)}/{total_noread} closed, after {min(nr):.2f}-{max(nr):.2f}s")
    ok = (
        x99 <= 1.2 * c99 + 0.0005
        and clean_err == 0
        and attack_err == 0
        and not slow_open
        and not noread_open
    )
    print("VERDICT:", "PASS" if ok else "FAIL",
          f"(p99 ratio {x99 / c99:.2f}, slow still open past timeout+1s: {len(slow_open)},"
          f" never-read not closed: {len(noread_open)})")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
