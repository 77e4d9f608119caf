#!/usr/bin/python3
"""Upstream servers for the gateway's end-to-end tests, on the host's loopback.

One HTTPS server (certificate from the test's own CA) answers for every test
name; what it serves depends on the path:

  /echo          JSON: method, path, query, the request's headers, the SHA-256
                 of the Authorization header, and the body's length
  /leak          a body that contains the real secret (the gateway must scrub it)
  /sse           three server-sent events, 300 ms apart
  /files/...     static files below ROOT (a dumb-HTTP git repository, a PyPI
                 simple index with a wheel)

Every request is appended to LOG as one JSON line (host, path, headers), so
the test can see what really arrived. The chosen port is printed on stdout.
"""

import hashlib
import http.server
import json
import os
import socketserver
import ssl
import sys
import threading
import time
import urllib.parse

CERT, KEY, ROOT, LOG, SECRET = sys.argv[1:6]
LOCK = threading.Lock()


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def record(self, body_len):
        with LOCK, open(LOG, "a") as f:
            f.write(json.dumps({
                "method": self.command,
                "host": self.headers.get("Host", ""),
                "path": self.path,
                "headers": {k.lower(): v for k, v in self.headers.items()},
                "body_len": body_len,
            }) + "\n")

    def body(self):
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    def send(self, code, data, ctype="application/json", extra=()):
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        for k, v in extra:
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def handle_any(self):
        body = self.body()
        self.record(len(body))
        url = urllib.parse.urlsplit(self.path)
        if url.path == "/echo":
            auth = self.headers.get("Authorization", "")
            out = {
                "method": self.command,
                "path": url.path,
                "query": url.query,
                "headers": {k.lower(): v for k, v in self.headers.items()},
                "auth_sha256": hashlib.sha256(auth.encode()).hexdigest(),
                "body_len": len(body),
            }
            self.send(200, json.dumps(out).encode())
        elif url.path == "/leak":
            self.send(200, ("the token is " + SECRET + "\n").encode(), "text/plain",
                      [("X-Echo-Token", SECRET)])
        elif url.path == "/sse":
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Cache-Control", "no-cache")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for i in range(3):
                chunk = f"data: event {i} at {time.time():.3f}\n\n".encode()
                self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                self.wfile.flush()
                time.sleep(0.3)
            self.wfile.write(b"0\r\n\r\n")
        elif url.path.startswith("/files/"):
            rel = urllib.parse.unquote(url.path[len("/files/"):])
            full = os.path.realpath(os.path.join(ROOT, rel))
            if not full.startswith(os.path.realpath(ROOT) + "/"):
                self.send(403, b"{}")
                return
            if os.path.isdir(full):
                index = os.path.join(full, "index.html")
                if os.path.isfile(index):
                    full = index
                else:
                    self.send(404, b"not found", "text/plain")
                    return
            if not os.path.isfile(full):
                self.send(404, b"not found", "text/plain")
                return
            with open(full, "rb") as f:
                data = f.read()
            ctype = "text/html" if full.endswith(".html") else "application/octet-stream"
            self.send(200, data, ctype)
        else:
            self.send(404, b"not found", "text/plain")

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = do_PATCH = handle_any


class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True


def main():
    srv = Server(("127.0.0.1", 0), Handler)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(CERT, KEY)
    srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
    print(srv.server_address[1], flush=True)
    srv.serve_forever()


if __name__ == "__main__":
    main()
