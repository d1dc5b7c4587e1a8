#!/usr/bin/env python3
"""A tiny HTTP receiver for the quick start's http jobs: answers 200 with
{"ok": true} to any GET or POST and prints what it got. Usage:
python3 examples/receiver.py [PORT] (default 8080)."""
import http.server
import json
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


port = int(sys.argv[1]) if len(sys.argv) > 1 else 8080
http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()
