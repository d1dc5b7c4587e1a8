#!/usr/bin/env python3
"""A tiny HTTP receiver for the quick start's http jobs: answers 200 with
{"ok": true} to any GET or POST and writes a line per request to the log.

    python3 examples/receiver.py PORT LOG

returns once it listens, printing the pid of the receiver it leaves running
in the background (stop it with kill)."""
import http.server
import json
import os
import sys


class Handler(http.server.BaseHTTPRequestHandler):
    def answer(self):
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length).decode("utf-8", "replace")
        key = self.headers.get("Idempotency-Key")
        print(f"{self.command} {self.path} Idempotency-Key={key} {body}", flush=True)
        data = json.dumps({"ok": True}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = answer
    do_POST = answer

    def log_message(self, *args):
        pass


port, log = int(sys.argv[1]), sys.argv[2]
server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
# Listening now: the caller may go on once this process has exited.
pid = os.fork()
if pid:
    print(pid)
    sys.exit(0)
os.setsid()
out = open(log, "a")
os.dup2(out.fileno(), 1)
os.dup2(out.fileno(), 2)
devnull = os.open(os.devnull, os.O_RDONLY)
os.dup2(devnull, 0)
server.serve_forever()
