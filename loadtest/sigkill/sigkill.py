#!/usr/bin/env python3
"""SIGKILL mid-load, RUNS times (the fault matrix's "SIGKILL mid-load" row).

Each run starts `cartlink serve` on the same data directory and click files, drives it with
THREADS keep-alive clients (each 302's click id and the time it was answered are kept), and
kills it with SIGKILL at a random moment between 1 and 3 s. The next run must start (no crash
loop). After the last run the server is started once more, left to deliver, and stopped with
SIGTERM. Then every click id a client got with a 302 is looked for in the click files:

- missing clicks must all have been answered within WINDOW_MS before their run's kill (the
  in-memory window: the ring, the batch being filled, `batch_max_age_ms`, then the write);
- every line in the click files must be a whole JSON record, except at most one torn last line
  per file (a write cut by the kill); it is counted.

Prints one line per run and a VERDICT. Usage: sigkill.py BIN WORK PORT
"""
import http.client
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
import urllib.parse

BIN, WORK, PORT = sys.argv[1], sys.argv[2], int(sys.argv[3])
RUNS = int(os.environ.get("RUNS", "20"))
THREADS = int(os.environ.get("THREADS", "4"))
AGE_MS = int(os.environ.get("BATCH_MAX_AGE_MS", "200"))
WINDOW_MS = AGE_MS + int(os.environ.get("SLACK_MS", "150"))
ADMIN = PORT + 1

env = dict(os.environ)
env.update({
    "CARTLINK_LISTEN": f"127.0.0.1:{PORT}",
    "CARTLINK_ADMIN_LISTEN": f"127.0.0.1:{ADMIN}",
    "CARTLINK_LINKS": f"{WORK}/links.jsonl",
    "CARTLINK_SINK": f"file://{WORK}/clicks",
    "CARTLINK_DATA_DIR": f"{WORK}/data",
    "CARTLINK_WATCH_LINKS_MS": "0",
    "CARTLINK_PIPELINE_BATCH_MAX_AGE_MS": str(AGE_MS),
    "RUST_LOG": "warn",
})


def start(log):
    p = subprocess.Popen([BIN, "serve"], env=env, stdout=subprocess.DEVNULL, stderr=log)
    for _ in range(200):
        try:
            c = http.client.HTTPConnection("127.0.0.1", PORT, timeout=1)
            c.request("GET", "/healthz")
            if c.getresponse().status == 200:
                return p
        except OSError:
            pass
        if p.poll() is not None:
            return None
        time.sleep(0.05)
    return None


def load(path, stop, out, errors):
    conn = None
    while not stop.is_set():
        try:
            if conn is None:
                conn = http.client.HTTPConnection("127.0.0.1", PORT, timeout=2)
            # Taken before the request: the click is made after it, so a missing click is
            # never taken for younger than it is (the check leans towards FAIL, not PASS).
            at = time.monotonic()
            conn.request("GET", path, headers={"User-Agent": UA})
            r = conn.getresponse()
            r.read()
            if r.status != 302:
                errors.append(f"status {r.status}")
                continue
            q = urllib.parse.parse_qs(urllib.parse.urlsplit(r.getheader("Location")).query)
            out.append((at, q["cl_click"][0]))
        except (OSError, http.client.HTTPException):
            conn = None  # the kill; the run is over for this client
            time.sleep(0.01)
        except Exception as e:  # anything else is the script's failure, not the server's
            errors.append(repr(e))
            return


UA = ("Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) AppleWebKit/605.1.15 "
      "(KHTML, like Gecko) Mobile/15E148 Instagram 305.0.0.0")
path = urllib.parse.urlsplit(open(f"{WORK}/url").read().strip()).path
runs = []
log = open(f"{WORK}/serve.log", "ab")
failed_starts, errors = 0, []
for i in range(RUNS):
    p = start(log)
    if p is None:
        failed_starts += 1
        print(f"run {i + 1}: did not start (see {WORK}/serve.log)")
        break
    stop, got = threading.Event(), []
    threads = [threading.Thread(target=load, args=(path, stop, got, errors)) for _ in range(THREADS)]
    for t in threads:
        t.start()
    time.sleep(random.uniform(1.0, 3.0))
    p.send_signal(signal.SIGKILL)
    killed = time.monotonic()
    p.wait()
    stop.set()
    for t in threads:
        t.join()
    runs.append((killed, got))

final = start(log)
if final is None:
    failed_starts += 1
else:
    time.sleep(2)
    final.send_signal(signal.SIGTERM)
    final.wait(timeout=30)

delivered, torn, bad = set(), 0, 0
for name in sorted(os.listdir(f"{WORK}/clicks")):
    lines = open(f"{WORK}/clicks/{name}", "rb").read().split(b"\n")
    for j, line in enumerate(lines):
        if not line:
            continue
        try:
            delivered.add(json.loads(line)["click_id"])
        except (ValueError, KeyError):
            if j == len(lines) - 1:
                torn += 1
            else:
                bad += 1

total_missing, outside = 0, 0
for i, (killed, got) in enumerate(runs):
    missing = [(at, cid) for at, cid in got if cid not in delivered]
    late = [killed - at for at, _ in missing]
    far = [d for d in late if d * 1000 > WINDOW_MS]
    total_missing += len(missing)
    outside += len(far)
    oldest = f"{max(late) * 1000:.0f} ms" if late else "-"
    print(f"run {i + 1:2}: {len(got):6} clicks, missing {len(missing):4} "
          f"(oldest {oldest} before the kill; outside the {WINDOW_MS} ms window: {len(far)})")
sent = sum(len(g) for _, g in runs)
idle = sum(1 for _, g in runs if not g)
print(f"restarts: {len(runs) + (final is not None)} of {RUNS + 1} started; "
      f"clicks {sent}, missing {total_missing}, outside the window {outside}; "
      f"torn last lines {torn}, bad lines elsewhere {bad}; runs without clicks {idle}; "
      f"client errors {len(errors)}{': ' + errors[0] if errors else ''}")
ok = (failed_starts == 0 and outside == 0 and bad == 0 and len(runs) == RUNS
      and idle == 0 and not errors)
print("VERDICT:", "PASS" if ok else "FAIL")
sys.exit(0 if ok else 1)
