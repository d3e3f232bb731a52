"""`http` targets (proxying to a Python upstream) and the SIGTERM drain."""

import signal
import socket
import threading
import time

import pytest

import gh_helpers as h


def _proxy_config(upstream_port: int, down_port: int, stages: bool):
    def make(port, state_dir):
        cfg = h.base_config(port, state_dir)
        if stages:
            cfg["stages"] = [{"name": "prod"}]
        cfg["upstreams"] = [
            {"name": "up", "url": f"http://127.0.0.1:{upstream_port}", "timeout": "5s"},
            {"name": "based", "url": f"http://127.0.0.1:{upstream_port}/base", "timeout": "5s"},
            {"name": "hasty", "url": f"http://127.0.0.1:{upstream_port}", "timeout": "500ms"},
            {"name": "down", "url": f"http://127.0.0.1:{down_port}", "timeout": "2s"},
            {"name": "small", "url": f"http://127.0.0.1:{upstream_port}", "timeout": "5s",
             "max_response_bytes": "1KiB"},
        ]
        cfg["routes"] += [
            h.http_route("api", "ANY", "/api/{proxy+}", "up"),
            h.http_route("based", "GET", "/based/{proxy+}", "based"),
            h.http_route("slow", "GET", "/slow/{proxy+}", "hasty"),
            h.http_route("down", "GET", "/down", "down"),
            h.http_route("small", "GET", "/small/{proxy+}", "small"),
            {"name": "keep", "method": "GET", "path": "/keep/{rest+}",
             "target": {"http": {"upstream": "up", "path_prefix": "/pre", "strip_stage": False}}},
        ]
        return cfg
    return make


@pytest.mark.deadline(40)
def test_http_target_forwards_request_and_response(start_gatehouse, upstream):
    dead = h.dead_port()
    try:
        g = start_gatehouse(config=_proxy_config(upstream.port, dead.getsockname()[1], stages=True))
        body = b'{"hello":"upstream"}'
        with h.RawClient(g.port, timeout=10) as c:
            r = c.request("POST", "/prod/api/things/42?x=1&y=two%20words", {
                "Content-Type": "application/json",
                "X-Custom": "abc",
                "X-Want-Status": "201",
                "X-Forwarded-For": "10.1.2.3",
                "X-Request-Id": "client-chosen-id",
            }, body)
            assert r.status == 201, (r, r.body)
            assert r.header("x-upstream") == "python"
            assert r.header("content-type") == "application/json"
            echo = r.json()
            assert echo == {"method": "POST", "path": "/api/things/42?x=1&y=two%20words",
                            "body": body.decode()}
            rid = r.header("x-request-id")
            assert h.REQUEST_ID_RE.match(rid)

            seen = upstream.seen[-1]
            assert seen.method == "POST"
            assert seen.path == "/api/things/42?x=1&y=two%20words"  # stage stripped, query kept
            assert seen.body == body
            assert seen.headers["x-custom"] == "abc"
            assert seen.headers["content-type"] == "application/json"
            assert seen.headers["content-length"] == str(len(body))
            assert seen.headers["x-forwarded-for"] == "10.1.2.3, 127.0.0.1"
            assert seen.headers["x-request-id"] == rid  # the gateway's id, not the client's
            assert seen.headers["host"] == f"127.0.0.1:{upstream.port}"
            assert [k for k, _ in seen.header_list if k.lower() == "x-request-id"] == ["X-Request-Id"]

            # Same client connection, more methods; upstream keep-alive connections get reused.
            for method in ("GET", "PUT", "DELETE", "GET"):
                r = c.request(method, "/prod/api/m", {"X-Want-Status": "202"},
                              b"data" if method == "PUT" else b"")
                assert r.status == 202, (method, r)
                assert r.json()["method"] == method
                assert upstream.seen[-1].method == method
                assert upstream.seen[-1].headers["x-forwarded-for"] == "127.0.0.1"

            # HEAD through the proxy: headers, no body.
            c.send(h.build_request("HEAD", "/prod/api/head"))
            r = c.read_response(head=True)
            assert r.status == 200 and r.header("x-upstream") == "python"
            assert int(r.header("content-length")) > 0
            r = c.request("GET", "/prod/api/after-head")
            assert r.status == 200 and r.json()["path"] == "/api/after-head"

        # Upstream url with a base path: prepended.
        r = g.get("/prod/based/x/y?q=1")
        assert r.status == 200
        assert r.json()["path"] == "/base/based/x/y?q=1"

        # path_prefix is prepended; strip_stage: false keeps the stage.
        r = g.get("/prod/keep/a/b?z=9")
        assert r.status == 200
        assert r.json()["path"] == "/pre/prod/keep/a/b?z=9"

        # A response over the upstream's max_response_bytes: 502, the gateway carries on.
        r = g.get("/prod/small/x")
        assert r.status == 502
        assert r.json()["error"]["code"] == "BadGateway"

        # Upstream error statuses are passed through, not rewritten.
        r = g.get("/prod/api/err", headers={"X-Want-Status": "503"})
        assert r.status == 503 and r.json()["path"] == "/api/err"

        # No stage prefix: no route.
        assert g.get("/api/things/1").status == 404

        # Upstream down: 502 BadGateway.
        r = g.get("/prod/down")
        assert r.status == 502
        err = r.json()["error"]
        assert err["code"] == "BadGateway"
        assert err["request_id"] == r.header("x-request-id")

        # Upstream slower than its 500 ms timeout: 504 GatewayTimeout, within a bounded time.
        t0 = time.monotonic()
        r = g.get("/prod/slow/thing", timeout=10)
        elapsed = time.monotonic() - t0
        assert r.status == 504
        assert r.json()["error"]["code"] == "GatewayTimeout"
        assert elapsed < 2.5, elapsed
        # The gateway is fine afterwards.
        assert g.get("/prod/api/ok").status == 200
    finally:
        dead.close()


@pytest.mark.deadline(40)
def test_http_target_upstream_framing_and_dead_pooled_connections(start_gatehouse, upstream):
    dead = h.dead_port()
    try:
        g = start_gatehouse(config=_proxy_config(upstream.port, dead.getsockname()[1], stages=False))
        with h.RawClient(g.port, timeout=10) as c:
            # A chunked upstream response is relayed with a Content-Length.
            r = c.request("GET", "/api/chunked")
            assert r.status == 200 and r.body == b"chunked-up!"
            assert r.header("content-length") == "11"
            assert r.header("transfer-encoding") is None
            # The upstream closes its connection after answering, without saying so. The next
            # requests (same client connection, so same worker and pool) must not see a 502.
            for i in range(4):
                r = c.request("GET", f"/api/oneshot/{i}")
                assert (r.status, r.body) == (200, b"oneshot"), (i, r, r.body)
            r = c.request("GET", "/api/after")
            assert r.status == 200 and r.json()["path"] == "/api/after"
    finally:
        dead.close()


@pytest.mark.deadline(40)
def test_pipelined_requests_through_the_proxy_keep_their_order(start_gatehouse, upstream):
    dead = h.dead_port()
    try:
        g = start_gatehouse(config=_proxy_config(upstream.port, dead.getsockname()[1], stages=False))
        paths = []
        for i in range(12):
            paths.append(["/hello", f"/api/p/{i}", "/items/x", f"/api/q/{i}"][i % 4])
        with h.RawClient(g.port, timeout=10) as c:
            c.send(b"".join(h.build_request("GET", p) for p in paths))
            for p in paths:
                r = c.read_response()
                assert r.status == 200, (p, r)
                if p.startswith("/api/"):
                    assert r.json()["path"] == p, (p, r.body)
                else:
                    assert r.body in (b"hello\n", b"item"), (p, r.body)
        assert [s.path for s in upstream.seen] == [p for p in paths if p.startswith("/api/")]
    finally:
        dead.close()


@pytest.mark.deadline(40)
def test_client_gone_while_proxying(start_gatehouse, upstream):
    g = start_gatehouse(config=_drain_config(upstream.port))
    c = h.RawClient(g.port, timeout=5)
    c.send(h.build_request("GET", "/api/hold/gone"))
    assert upstream.held.wait(5)
    c.close()  # the client leaves before the upstream answers
    upstream.release.set()
    # The gateway is unharmed: it serves on, counts no bug, and the connection is released.
    for _ in range(3):
        assert g.get("/hello").status == 200
    h.wait_until(lambda: g.metric("gatehouse_connections_open") == 1, 5,
                 what="only the metrics connection to remain open")
    assert g.metric("gatehouse_bugs_total") == 0


@pytest.mark.deadline(40)
def test_a_reload_while_a_request_is_at_the_upstream(start_gatehouse, upstream):
    # A reload empties the workers' idle-connection pools while a proxied request is waiting for
    # its answer; that request must still be answered (and must not put its connection back into
    # the emptied pool: under ASan, doing so was a use after free).
    g = start_gatehouse(config=_drain_config(upstream.port))
    assert g.get("/api/warm").status == 200  # a pooled upstream connection exists
    c = h.RawClient(g.port, timeout=10)
    c.send(h.build_request("GET", "/api/hold/reload"))
    assert upstream.held.wait(5)
    cfg = _drain_config(upstream.port)(g.port, g.workdir / "state")
    cfg["routes"].append(h.static_route("added", "GET", "/added", "added\n"))
    g.reload(cfg)
    g.wait_metric("gatehouse_config_reloads_total", 1, result="ok")
    upstream.release.set()
    r = c.read_response()
    assert r.status == 200 and r.body == b"released", r
    c.close()
    for path in ("/api/after", "/api/again"):
        assert g.get(path).status == 200
    assert g.get("/added").body == b"added\n"
    assert g.metric("gatehouse_bugs_total") == 0


@pytest.mark.deadline(30)
def test_http_target_drops_connection_listed_headers(start_gatehouse, upstream):
    dead = h.dead_port()
    try:
        g = start_gatehouse(config=_proxy_config(upstream.port, dead.getsockname()[1], stages=False))
        r = g.get("/api/hop", headers={"Connection": "keep-alive, X-Hop-Secret", "X-Hop-Secret": "s",
                                       "X-Kept": "k"})
        assert r.status == 200
        seen = upstream.seen[-1]
        assert seen.headers.get("x-kept") == "k"
        assert "x-hop-secret" not in seen.headers, seen.header_list
    finally:
        dead.close()


@pytest.mark.deadline(40)
def test_http_target_without_stages(start_gatehouse, upstream):
    dead = h.dead_port()
    try:
        g = start_gatehouse(config=_proxy_config(upstream.port, dead.getsockname()[1], stages=False))
        r = g.get("/api/a/b?c=d", method="PATCH", body=b"patch-body")
        assert r.status == 200
        assert r.json() == {"method": "PATCH", "path": "/api/a/b?c=d", "body": "patch-body"}
        assert upstream.seen[-1].body == b"patch-body"
        # A chunked request body reaches the upstream with a Content-Length.
        with h.RawClient(g.port) as c:
            c.send(b"POST /api/req-chunked HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n\r\n"
                   b"3\r\nabc\r\n4\r\ndefg\r\n0\r\n\r\n")
            r = c.read_response()
            assert r.status == 200, r
            assert r.json()["body"] == "abcdefg"
            seen = upstream.seen[-1]
            assert seen.headers.get("content-length") == "7"
            assert "transfer-encoding" not in seen.headers
    finally:
        dead.close()


def _drain_config(upstream_port: int):
    def make(port, state_dir):
        cfg = h.base_config(port, state_dir)
        cfg["server"]["shutdown_grace"] = "5s"
        cfg["upstreams"] = [{"name": "up", "url": f"http://127.0.0.1:{upstream_port}", "timeout": "10s"}]
        cfg["routes"].append(h.http_route("api", "ANY", "/api/{proxy+}", "up"))
        return cfg
    return make


@pytest.mark.deadline(40)
def test_sigterm_drains_in_flight_requests(start_gatehouse, upstream):
    g = start_gatehouse(config=_drain_config(upstream.port))
    # An idle keep-alive connection: closed at once by the drain.
    idle = h.RawClient(g.port, timeout=5)
    assert idle.request("GET", "/hello").status == 200

    result = {}

    def in_flight():
        try:
            with h.RawClient(g.port, timeout=15) as c:
                result["response"] = c.request("GET", "/api/hold/1")
                result["after"] = c.wait_closed(5)
        except Exception as e:
            result["error"] = repr(e)

    t = threading.Thread(target=in_flight, daemon=True)
    t.start()
    try:
        assert upstream.held.wait(5), "the request never reached the upstream"

        t_term = time.monotonic()
        g.proc.send_signal(signal.SIGTERM)

        def refused():
            try:
                s = socket.create_connection(("127.0.0.1", g.port), timeout=1)
            except ConnectionRefusedError:
                return True
            s.close()
            return False

        h.wait_until(refused, 3, what="new connections to be refused")
        assert idle.wait_closed(3) in ("eof", "reset"), "the idle connection was not closed"
        assert g.proc.poll() is None, "exited before the in-flight request finished"
        assert "response" not in result
    finally:
        upstream.release.set()
    t.join(15)
    assert "error" not in result, result
    r = result["response"]
    assert r.status == 200 and r.body == b"released"
    assert (r.header("connection") or "").lower() == "close"
    assert result["after"] in ("eof", "reset")

    rc = g.proc.wait(10)
    elapsed = time.monotonic() - t_term
    assert rc == 0, g.stderr()
    assert elapsed < 5.0 + 1.0, elapsed  # within shutdown_grace (plus process exit slack)
    assert "draining" in g.stderr()
    idle.close()


@pytest.mark.deadline(40)
def test_sigterm_grace_cuts_requests_that_take_too_long(start_gatehouse, upstream):
    def make(port, state_dir):
        cfg = _drain_config(upstream.port)(port, state_dir)
        cfg["server"]["shutdown_grace"] = "1s"
        return cfg

    g = start_gatehouse(config=make)
    result = {}

    def in_flight():
        try:
            with h.RawClient(g.port, timeout=15) as c:
                result["response"] = c.request("GET", "/api/hold/2")
        except Exception as e:
            result["error"] = e

    t = threading.Thread(target=in_flight, daemon=True)
    t.start()
    try:
        assert upstream.held.wait(5)
        t_term = time.monotonic()
        g.proc.send_signal(signal.SIGTERM)
        rc = g.proc.wait(10)
        elapsed = time.monotonic() - t_term
    finally:
        upstream.release.set()
    t.join(15)
    assert rc == 0, g.stderr()
    assert 0.5 <= elapsed < 1.0 + 2.0, elapsed
    # The connection was closed without a response.
    assert isinstance(result.get("error"), (ConnectionError, OSError)), result


@pytest.mark.deadline(30)
def test_sigterm_does_not_wait_for_silent_connections(start_gatehouse):
    def make(port, state_dir):
        cfg = h.base_config(port, state_dir)
        cfg["limits"]["header_timeout"] = "20s"
        cfg["server"]["shutdown_grace"] = "4s"
        return cfg

    g = start_gatehouse(config=make)
    silent = socket.create_connection(("127.0.0.1", g.port), timeout=5)  # never sends a byte
    try:
        # Proven accepted: the server counts it as open.
        h.wait_until(lambda: g.metric("gatehouse_connections_open") >= 2, 5,
                     what="the silent connection to be accepted")
        t0 = time.monotonic()
        g.proc.send_signal(signal.SIGTERM)
        rc = g.proc.wait(10)
        elapsed = time.monotonic() - t0
        assert rc == 0
        # Nothing is in flight: the exit should be prompt, not after the 4 s grace.
        assert elapsed < 2.0, f"exit took {elapsed:.2f} s"
    finally:
        silent.close()


class InterimUpstream:
    """A raw keep-alive upstream that answers every request with a 103 Early Hints interim
    response followed by the final 200 "response to <path>"."""

    def __init__(self):
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen()
        self.listener.settimeout(0.2)
        self.port = self.listener.getsockname()[1]
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self):
        while not self.stop.is_set():
            try:
                c, _ = self.listener.accept()
            except (socket.timeout, OSError):
                continue
            threading.Thread(target=self._serve, args=(c,), daemon=True).start()

    def _serve(self, c):
        c.settimeout(10)
        buf = b""
        try:
            while not self.stop.is_set():
                while b"\r\n\r\n" not in buf:
                    d = c.recv(65536)
                    if not d:
                        return
                    buf += d
                head, buf = buf.split(b"\r\n\r\n", 1)
                body = b"response to " + head.split(b" ")[1]
                c.sendall(b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\n\r\n"
                          b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
        except OSError:
            pass
        finally:
            c.close()

    def close(self):
        self.stop.set()
        self.listener.close()
        self.thread.join(5)


@pytest.mark.deadline(30)
def test_upstream_interim_responses_do_not_mix_up_clients(start_gatehouse):
    up = InterimUpstream()
    try:
        def make(port, state_dir):
            cfg = h.base_config(port, state_dir)
            cfg["server"]["threads"] = 1  # one worker, one pool: the second client reuses it
            cfg["upstreams"] = [{"name": "up", "url": f"http://127.0.0.1:{up.port}", "timeout": "2s"}]
            cfg["routes"].append(h.http_route("api", "ANY", "/api/{proxy+}", "up"))
            return cfg

        g = start_gatehouse(config=make)
        got = {}
        for who in ("alice", "bob", "carol"):
            with h.RawClient(g.port, timeout=2) as c:
                c.send(h.build_request("GET", f"/api/{who}"))
                try:
                    r = c.read_response()
                    while 100 <= r.status < 200:  # interim responses may be relayed; skip them
                        r = c.read_response()
                    got[who] = (r.status, r.body)
                except (OSError, h.ConnectionClosed) as e:
                    got[who] = repr(e)
        assert got == {who: (200, f"response to /api/{who}".encode())
                       for who in ("alice", "bob", "carol")}, got
    finally:
        up.close()


@pytest.mark.deadline(30)
def test_reload_moving_an_upstream_is_not_defeated_by_pooled_connections(start_gatehouse):
    a = h.Upstream().start()
    b = h.Upstream().start()
    try:
        def make_for(up):
            def make(port, state_dir):
                cfg = h.base_config(port, state_dir)
                cfg["upstreams"] = [{"name": "up", "url": f"http://127.0.0.1:{up.port}", "timeout": "2s"}]
                cfg["routes"].append(h.http_route("api", "ANY", "/api/{proxy+}", "up"))
                return cfg
            return make

        g = start_gatehouse(config=make_for(a))
        with h.RawClient(g.port, timeout=5) as c:  # one connection: one worker, one pool
            assert c.request("GET", "/api/before").status == 200
            assert [s.path for s in a.seen] == ["/api/before"]
            g.write_config(make_for(b)(g.port, g.workdir / "state"))
            # POST /admin/reload answers once every worker has the new snapshot queued.
            r = h.get(g.port, "/admin/reload", method="POST", headers=h.AUTH)
            assert r.status == 200, r.body
            for i in range(3):
                assert c.request("GET", f"/api/after{i}").status == 200
        assert [s.path for s in b.seen] == ["/api/after0", "/api/after1", "/api/after2"], (
            [s.path for s in a.seen], [s.path for s in b.seen])
    finally:
        a.stop()
        b.stop()
