"""Real servers on 127.0.0.1 for the remote-storage tests and benchmarks/bench_remote.py.

* :class:`RangeServer`: an HTTP/1.1 file server (GET with ``Range``, HEAD) over a local
  folder, counting the requests and body bytes it serves, and able to break off mid-
  response (``break_after``) to play a connection lost during a load, or to pace each
  response to a rate (as object stores limit each connection).  :class:`ServerProcess`
  runs one in a child process.
* :class:`MotoS3`: moto's S3-compatible server in a child process (``moto[server]``),
  for ``s3://`` through s3fs.

Both listen on a free port and are stopped by :meth:`stop` (the fixtures always call it).
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, *args):  # quiet
        pass

    def setup(self):
        super().setup()
        # Headers and body go out in separate writes: without this, Nagle's algorithm
        # and the client's delayed ACK stall each response by ~40 ms.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with self.server.lock:
            self.server.connections.add(self.connection)

    def finish(self):
        with self.server.lock:
            self.server.connections.discard(self.connection)
        super().finish()

    def _file(self) -> Path | None:
        rel = self.path.split("?", 1)[0].lstrip("/")
        path = (self.server.root / rel).resolve()
        if self.server.root not in path.parents and path != self.server.root:
            return None
        return path if path.is_file() else None

    def _missing(self):
        self.send_response(HTTPStatus.NOT_FOUND)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_HEAD(self):
        self.server.count(self.command, 0)
        path = self._file()
        if path is None:
            return self._missing()
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Length", str(path.stat().st_size))
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Accept-Ranges", "bytes")
        self.end_headers()

    def do_GET(self):
        if self.path in ("/_stats", "/_reset"):  # counters for a server in a child process
            return self._control()
        path = self._file()
        if path is None:
            self.server.count(self.command, 0)
            return self._missing()
        size = path.stat().st_size
        start, end = 0, size
        status = HTTPStatus.OK
        header = self.headers.get("Range")
        if header:
            m = _RANGE.match(header.strip())
            if not m or (not m[1] and not m[2]):
                self.server.count(self.command, 0)
                self.send_response(HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            if m[1]:
                start = int(m[1])
                end = min(size, int(m[2]) + 1) if m[2] else size
            else:  # suffix range: the last N bytes
                start, end = max(0, size - int(m[2])), size
            if start >= size and size:
                self.server.count(self.command, 0)
                self.send_response(HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE)
                self.send_header("Content-Range", f"bytes */{size}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            status = HTTPStatus.PARTIAL_CONTENT
        n = end - start
        cut = self.server.cut(n)
        self.server.count(self.command, n if cut is None else cut)
        self.send_response(status)
        self.send_header("Content-Length", str(n))
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Accept-Ranges", "bytes")
        if status == HTTPStatus.PARTIAL_CONTENT:
            self.send_header("Content-Range", f"bytes {start}-{end - 1}/{size}")
        self.end_headers()
        with open(path, "rb") as f:
            if cut is None and self.server.rate:
                self._send_paced(f, start, n)
            elif cut is None:
                self.connection.sendfile(f, start, n)
            else:  # the connection breaks after `cut` bytes of the body
                if cut:
                    self.connection.sendfile(f, start, cut)
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)


    def _send_paced(self, f, start: int, n: int):
        """Send at most ``server.rate`` bytes per second on this connection (as object
        stores limit each connection), in 256 KiB steps."""
        step = 256 << 10
        began = time.monotonic()
        sent = 0
        while sent < n:
            k = min(step, n - sent)
            self.connection.sendfile(f, start + sent, k)
            sent += k
            ahead = sent / self.server.rate - (time.monotonic() - began)
            if ahead > 0:
                time.sleep(ahead)

    def _control(self):
        import json

        with self.server.lock:
            body = json.dumps({"requests": len(self.server.requests),
                               "bytes": sum(n for _, n in self.server.requests)}).encode()
            if self.path == "/_reset":
                self.server.requests.clear()
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, root: Path, rate: float | None = None):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.rate = rate            # bytes per second per response (None: unlimited)
        self.root = root.resolve()
        self.lock = threading.Lock()
        self.requests: list = []    # (method, body bytes)
        self.budget = None          # bytes left before connections break (None: never)
        self.connections: set = set()   # open client connections (kept alive)

    def count(self, method: str, nbytes: int):
        with self.lock:
            self.requests.append((method, nbytes))

    def cut(self, n: int):
        """None to send all ``n`` bytes; else how many to send before breaking off."""
        with self.lock:
            if self.budget is None:
                return None
            send = max(0, min(n - 1, self.budget))
            self.budget -= send
            return send


class RangeServer:
    """An HTTP server with Range support over ``root`` on 127.0.0.1 (see module doc)."""

    def __init__(self, root, rate: float | None = None):
        self._server = _Server(Path(root), rate)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"

    def url_of(self, rel) -> str:
        return f"{self.url}/{str(rel).lstrip('/')}"

    @property
    def requests(self) -> int:
        return len(self._server.requests)

    @property
    def bytes_served(self) -> int:
        return sum(n for _, n in self._server.requests)

    @property
    def log(self) -> list:
        return list(self._server.requests)

    def reset(self):
        with self._server.lock:
            self._server.requests.clear()

    def break_after(self, nbytes: int | None):
        """Break every response off once ``nbytes`` more body bytes have gone out
        (None: serve normally again)."""
        with self._server.lock:
            self._server.budget = nbytes

    def stop(self):
        """Stop listening and drop every open connection (kept-alive ones too), as a
        server that goes away does."""
        self._server.shutdown()
        self._server.server_close()
        with self._server.lock:
            connections = list(self._server.connections)
        for conn in connections:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self._thread.join(10)


def _stop_process(proc) -> None:
    """End a server's child process: terminate, and kill it if it lingers."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


class MotoS3:
    """moto's S3 server in a child process on 127.0.0.1; ``options`` are s3fs's
    storage_options for it."""

    def __init__(self, startup_timeout: float = 60.0):
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        env = dict(os.environ, AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing",
                   AWS_DEFAULT_REGION="us-east-1")
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
        deadline = time.monotonic() + startup_timeout
        while True:
            if self._proc.poll() is not None:
                raise RuntimeError(f"moto server exited with {self._proc.returncode}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError("moto server did not start") from None
                time.sleep(0.1)
        self.options = {"key": "testing", "secret": "testing",
                        "client_kwargs": {"endpoint_url": self.endpoint,
                                          "region_name": "us-east-1"}}

    def create_bucket(self, name: str):
        import boto3

        boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1",
                     aws_access_key_id="testing",
                     aws_secret_access_key="testing").create_bucket(Bucket=name)

    def filesystem(self):
        import s3fs

        return s3fs.S3FileSystem(**self.options)

    def stop(self):
        _stop_process(self._proc)


class ServerProcess:
    """A :class:`RangeServer` in a child process (so a benchmark's client and server do
    not share one interpreter); ``stats()`` and ``reset()`` read its counters."""

    def __init__(self, root, rate: float | None = None):
        self._proc = subprocess.Popen(
            [sys.executable, __file__, str(root), *([str(rate)] if rate else [])],
            stdout=subprocess.PIPE, text=True)
        line = self._proc.stdout.readline().strip()
        if not line.startswith("http://"):
            self.stop()
            raise RuntimeError(f"the HTTP server did not start: {line!r}")
        self.url = line

    def url_of(self, rel) -> str:
        return f"{self.url}/{str(rel).lstrip('/')}"

    def _get(self, what: str) -> dict:
        import json
        import urllib.request

        with urllib.request.urlopen(f"{self.url}/_{what}", timeout=30) as r:
            return json.loads(r.read())

    def stats(self) -> dict:
        return self._get("stats")

    def reset(self) -> dict:
        return self._get("reset")

    def stop(self):
        _stop_process(self._proc)


if __name__ == "__main__":  # python remote_servers.py ROOT [RATE]: serve ROOT until stopped
    server = RangeServer(sys.argv[1], float(sys.argv[2]) if len(sys.argv) > 2 else None)
    print(server.url, flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
