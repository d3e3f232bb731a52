"""Helpers shared by the integration tests: config building, a raw HTTP/1.1 client, metrics
parsing, polling, and a small Python upstream server for `http` targets.

Everything here talks to loopback addresses only and every blocking call has a timeout.
"""

from __future__ import annotations

import hashlib
import http.server
import json
import re
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

ADMIN_TOKEN = "integration-admin-token-0123456789"
ADMIN_TOKEN_SHA256 = hashlib.sha256(ADMIN_TOKEN.encode()).hexdigest()
AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}

REQUEST_ID_RE = re.compile(r"^[0-9a-f]{16}$")


# ------------------------------------------------------------------------------------------------
# Polling


def wait_until(predicate: Callable[[], object], timeout: float, interval: float = 0.05,
               what: str = "condition"):
    """Calls `predicate` until it returns a truthy value (returned) or `timeout` passes (fails)."""
    deadline = time.monotonic() + timeout
    last_exc: Optional[BaseException] = None
    while True:
        try:
            value = predicate()
            if value:
                return value
        except (OSError, AssertionError, ValueError, KeyError) as e:  # retried until the deadline
            last_exc = e
        if time.monotonic() >= deadline:
            extra = f" (last error: {last_exc!r})" if last_exc else ""
            raise AssertionError(f"timed out after {timeout}s waiting for {what}{extra}")
        time.sleep(interval)


# ------------------------------------------------------------------------------------------------
# Ports


def reserve_port() -> socket.socket:
    """A socket bound to a free loopback port with SO_REUSEPORT and not listening.

    Keeping it open for the test's lifetime stops other processes (parallel tests) from getting
    the same port from the kernel, while gatehouse (which also sets SO_REUSEPORT) can still bind
    and listen on it. A bound, non-listening socket never receives connections, so once gatehouse
    stops listening connects are refused.
    """
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    s.bind(("127.0.0.1", 0))
    return s


def dead_port() -> socket.socket:
    """A socket bound (not listening) to a loopback port: connecting to it is refused."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    return s


# ------------------------------------------------------------------------------------------------
# Config: a dict rendered as block-style YAML (strings double-quoted with JSON escapes, which
# YAML accepts), so tests can compute the line of any key.


def _scalar(v) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, dict):
        assert not v
        return "{}"
    if isinstance(v, list):
        assert not v
        return "[]"
    return json.dumps(str(v))


def _emit(obj, ind: int, out: list):
    pad = "  " * ind
    if isinstance(obj, dict):
        for k, v in obj.items():
            if isinstance(v, (dict, list)) and v:
                out.append(f"{pad}{k}:")
                _emit(v, ind + 1, out)
            else:
                out.append(f"{pad}{k}: {_scalar(v)}")
    elif isinstance(obj, list):
        for item in obj:
            if isinstance(item, (dict, list)) and item:
                sub: list = []
                _emit(item, ind + 1, sub)
                sub[0] = pad + "- " + sub[0][len(pad) + 2:]
                out.extend(sub)
            else:
                out.append(f"{pad}- {_scalar(item)}")
    else:
        out.append(pad + _scalar(obj))


def to_yaml(obj: dict) -> str:
    out: list = []
    _emit(obj, 0, out)
    return "\n".join(out) + "\n"


def static_route(name: str, method, path: str, body: str, status: int = 200) -> dict:
    return {"name": name, "method": method, "path": path,
            "target": {"static": {"status": status, "body": body}}}


def http_route(name: str, method, path: str, upstream: str) -> dict:
    return {"name": name, "method": method, "path": path, "target": {"http": {"upstream": upstream}}}


def base_config(port: int, state_dir) -> dict:
    """The default test config: short wire timeouts so refusals happen quickly."""
    return {
        "server": {"listen": f"127.0.0.1:{port}", "threads": 2, "shutdown_grace": "5s"},
        "limits": {
            "max_header_bytes": "8KiB",
            "max_body_bytes": "1MiB",
            "header_timeout": "1s",
            "body_timeout": "5s",
            "min_body_rate": 1024,
            "body_grace": "1s",
            "idle_timeout": "5s",
            "max_connections": 10000,
            "max_connections_per_ip": 64,
            "max_pipelined": 32,
        },
        "admin": {"token_sha256": ADMIN_TOKEN_SHA256, "health_path": "/healthz",
                  "metrics_path": "/metrics"},
        "log": {"level": "info", "access_log": "stdout"},
        "store": {"state": f"sqlite://{state_dir}/gh.db"},
        "routes": [
            static_route("hello", "GET", "/hello", "hello\n"),
            static_route("items", ["GET", "POST"], "/items/{id}", "item"),
        ],
    }


# ------------------------------------------------------------------------------------------------
# A raw HTTP/1.1 client over one socket: exact control of bytes, pipelining, closes and resets.


@dataclass
class Response:
    status: int
    reason: str
    headers: list  # [(name, value)] in order, names as sent
    body: bytes
    raw_head: bytes = b""

    def header(self, name: str) -> Optional[str]:
        name = name.lower()
        for k, v in self.headers:
            if k.lower() == name:
                return v
        return None

    def json(self):
        return json.loads(self.body)


class ConnectionClosed(ConnectionError):
    """The peer closed (EOF) before a complete response."""


class RawClient:
    def __init__(self, port: int, source: Optional[str] = None, timeout: float = 5.0,
                 host: str = "127.0.0.1"):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        if source is not None:
            self.sock.bind((source, 0))
        self.sock.connect((host, port))
        self.buf = b""

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def send(self, data: bytes):
        self.sock.sendall(data)

    def _fill(self):
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ConnectionClosed("connection closed by the server")
        self.buf += chunk

    def read_response(self, head: bool = False) -> Response:
        while b"\r\n\r\n" not in self.buf:
            self._fill()
        head_bytes, self.buf = self.buf.split(b"\r\n\r\n", 1)
        lines = head_bytes.decode("latin-1").split("\r\n")
        version, status, *reason = lines[0].split(" ", 2)
        assert version.startswith("HTTP/1."), lines[0]
        headers = []
        for line in lines[1:]:
            k, _, v = line.partition(":")
            headers.append((k.strip(), v.strip()))
        resp = Response(int(status), reason[0] if reason else "", headers, b"", head_bytes)
        if head or resp.status in (204, 304) or 100 <= resp.status < 200:
            return resp
        te = resp.header("transfer-encoding")
        if te and "chunked" in te.lower():
            body = b""
            while True:
                while b"\r\n" not in self.buf:
                    self._fill()
                size_line, self.buf = self.buf.split(b"\r\n", 1)
                size = int(size_line.split(b";")[0], 16)
                while len(self.buf) < size + 2:
                    self._fill()
                body += self.buf[:size]
                self.buf = self.buf[size + 2:]
                if size == 0:
                    break
            resp.body = body
            return resp
        length = resp.header("content-length")
        if length is None:
            # Body until EOF.
            try:
                while True:
                    self._fill()
            except ConnectionClosed:
                pass
            resp.body, self.buf = self.buf, b""
            return resp
        n = int(length)
        while len(self.buf) < n:
            self._fill()
        resp.body, self.buf = self.buf[:n], self.buf[n:]
        return resp

    def request(self, method: str, path: str, headers: Optional[dict] = None, body: bytes = b"",
                ) -> Response:
        self.send(build_request(method, path, headers, body))
        return self.read_response(head=(method == "HEAD"))

    def wait_closed(self, timeout: float) -> Optional[str]:
        """Reads until the server closes: "eof", "reset", or None if still open at `timeout`.
        Bytes received meanwhile are kept in self.buf."""
        deadline = time.monotonic() + timeout
        old = self.sock.gettimeout()
        try:
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self.sock.settimeout(min(left, 0.5))
                try:
                    chunk = self.sock.recv(65536)
                except socket.timeout:
                    continue
                except ConnectionResetError:
                    return "reset"
                if not chunk:
                    return "eof"
                self.buf += chunk
        finally:
            try:
                self.sock.settimeout(old)
            except OSError:
                pass


def build_request(method: str, path: str, headers: Optional[dict] = None, body: bytes = b"") -> bytes:
    h = {"Host": "127.0.0.1"}
    if body or method in ("POST", "PUT", "PATCH"):
        h["Content-Length"] = str(len(body))
    if headers:
        h.update(headers)
    head = f"{method} {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in h.items()) + "\r\n"
    return head.encode("latin-1") + body


def get(port: int, path: str, headers: Optional[dict] = None, source: Optional[str] = None,
        timeout: float = 5.0, method: str = "GET", body: bytes = b"") -> Response:
    """One request on a fresh connection."""
    with RawClient(port, source=source, timeout=timeout) as c:
        return c.request(method, path, headers, body)


# ------------------------------------------------------------------------------------------------
# Metrics


_SAMPLE_RE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)\s*$")
_LABEL_RE = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse_metrics(text: str) -> dict:
    """{(name, frozenset(labels.items())): value} from Prometheus text."""
    out = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = _SAMPLE_RE.match(line)
        assert m, f"malformed metrics line: {line!r}"
        labels = frozenset(_LABEL_RE.findall(m.group(2) or ""))
        out[(m.group(1), labels)] = float(m.group(3))
    return out


def metric(samples: dict, name: str, **labels) -> Optional[float]:
    return samples.get((name, frozenset(labels.items())))


# ------------------------------------------------------------------------------------------------
# A Python upstream for `http` targets.


@dataclass
class Seen:
    method: str
    path: str
    headers: dict  # lower-case name -> value (last one wins)
    header_list: list
    body: bytes


@dataclass
class Upstream:
    """A threaded HTTP/1.1 server on loopback. Paths:
      /api/hold...  : signals `held`, waits for `release` (at most 10 s), answers 200 "released"
      /slow...      : waits up to 3 s (cut short at teardown), then answers 200 "slow"
      /api/chunked  : a chunked response, "chunked-up!"
      /small/...    : a 4 KiB body
      /api/oneshot  : answers 200 "oneshot" (keep-alive announced), then closes the connection
      anything else : echoes the request as JSON with status from X-Want-Status (default 200)
    Every request is appended to `seen`.
    """

    port: int = 0
    seen: list = field(default_factory=list)
    held: threading.Event = field(default_factory=threading.Event)
    release: threading.Event = field(default_factory=threading.Event)
    stopping: threading.Event = field(default_factory=threading.Event)
    server: Optional[http.server.ThreadingHTTPServer] = None
    thread: Optional[threading.Thread] = None

    def start(self) -> "Upstream":
        up = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            timeout = 10

            def log_message(self, *args):
                pass

            def _answer(self, status: int, body: bytes, extra: Optional[dict] = None):
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(body)))
                    self.send_header("X-Upstream", "python")
                    for k, v in (extra or {}).items():
                        self.send_header(k, v)
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(body)
                    self.wfile.flush()
                except OSError:
                    self.close_connection = True

            def _handle(self):
                n = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(n) if n else b""
                hdrs = {k.lower(): v for k, v in self.headers.items()}
                up.seen.append(Seen(self.command, self.path, hdrs, list(self.headers.items()), body))
                if self.path.startswith("/api/hold"):
                    up.held.set()
                    up.release.wait(10)
                    self._answer(200, b"released")
                    return
                if self.path.startswith("/slow"):
                    up.stopping.wait(3)
                    self._answer(200, b"slow")
                    return
                if self.path.startswith("/api/chunked"):
                    try:
                        self.send_response(200)
                        self.send_header("Content-Type", "text/plain")
                        self.send_header("Transfer-Encoding", "chunked")
                        self.end_headers()
                        self.wfile.write(b"5\r\nchunk\r\n6\r\ned-up!\r\n0\r\n\r\n")
                        self.wfile.flush()
                    except OSError:
                        self.close_connection = True
                    return
                if self.path.startswith("/small/"):
                    self._answer(200, b"B" * 4096)
                    return
                if self.path.startswith("/api/oneshot"):
                    # Answers as if keeping the connection, then closes it: the gateway's pooled
                    # connection is dead the next time it is used.
                    self._answer(200, b"oneshot")
                    self.close_connection = True
                    return
                status = int(self.headers.get("X-Want-Status") or 200)
                echo = json.dumps({"method": self.command, "path": self.path,
                                   "body": body.decode("latin-1")}).encode()
                self._answer(status, echo, {"X-Echo-Path": self.path})

            do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = _handle

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05},
                                       daemon=True)
        self.thread.start()
        return self

    def stop(self):
        self.stopping.set()
        self.release.set()
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
        if self.thread is not None:
            self.thread.join(5)
