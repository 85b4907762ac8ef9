#!/usr/bin/env python3
"""A minimal click collector for the sink-outage load test: stores every POSTed JSON Lines body
(gzip or not) in OUT, answers 200. Stop it (kill) to make the sink refuse connections.
A third argument, DELAY_MS, makes it a slow sink: each POST is answered that much later."""
import gzip
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

PORT, OUT = int(sys.argv[1]), sys.argv[2]
DELAY = int(sys.argv[3]) / 1000 if len(sys.argv) > 3 else 0
LOCK = threading.Lock()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        time.sleep(DELAY)
        if self.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        with LOCK, open(OUT, "ab") as f:
            f.write(body)
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


ThreadingHTTPServer.allow_reuse_address = True
ThreadingHTTPServer(("127.0.0.1", PORT), Handler).serve_forever()
