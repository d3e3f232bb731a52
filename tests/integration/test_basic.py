"""Basic HTTP behaviour of the real binary: static routes, errors, HEAD, keep-alive, pipelining,
the 431 header limit and the access log."""

import json
import re
import time

import pytest
import requests

import gh_helpers as h


@pytest.mark.deadline(30)
def test_static_route_errors_and_request_ids(gatehouse):
    # The start-up line names the address, the workers and the routes.
    assert re.search(rf"gatehouse listening on 127\.0\.0\.1:{gatehouse.port} with 2 workers, 2 routes",
                     gatehouse.stderr()), gatehouse.stderr()

    r = requests.get(gatehouse.url + "/hello", timeout=5)
    assert r.status_code == 200
    assert r.text == "hello\n"
    assert h.REQUEST_ID_RE.match(r.headers["x-request-id"]), r.headers

    r2 = requests.get(gatehouse.url + "/items/42", timeout=5)
    assert r2.status_code == 200 and r2.text == "item"
    assert r2.headers["x-request-id"] != r.headers["x-request-id"]

    # No route: 404 with the uniform JSON error carrying the same request id as the header.
    r = requests.get(gatehouse.url + "/no/such/route", timeout=5)
    assert r.status_code == 404
    assert r.headers["content-type"].startswith("application/json")
    err = r.json()["error"]
    assert err["code"] == "RouteNotFound"
    assert err["message"]
    assert h.REQUEST_ID_RE.match(err["request_id"])
    assert err["request_id"] == r.headers["x-request-id"]

    # Wrong method: 405 with Allow (HEAD comes with GET).
    r = requests.post(gatehouse.url + "/hello", data=b"", timeout=5)
    assert r.status_code == 405
    assert r.json()["error"]["code"] == "MethodNotAllowed"
    assert r.json()["error"]["request_id"] == r.headers["x-request-id"]
    allow = {m.strip() for m in r.headers["allow"].split(",")}
    assert "GET" in allow and "HEAD" in allow and "POST" not in allow, allow

    r = requests.delete(gatehouse.url + "/items/7", timeout=5)
    assert r.status_code == 405
    allow = {m.strip() for m in r.headers["allow"].split(",")}
    assert {"GET", "POST"} <= allow, allow


@pytest.mark.deadline(30)
def test_static_route_status_content_type_and_headers(start_gatehouse):
    def cfg_(cfg):
        cfg["routes"].append({
            "name": "things", "method": "POST", "path": "/things",
            "target": {"static": {"status": 201, "body": '{"ok":true}',
                                  "content_type": "application/json",
                                  "headers": {"X-Static": "yes", "Cache-Control": "no-store"}}}})
        cfg["routes"].append(h.static_route("gone", "ANY", "/gone/{rest+}", "", status=410))

    g = start_gatehouse(cfg_)
    r = requests.post(g.url + "/things", data=b"ignored body", timeout=5)
    assert r.status_code == 201
    assert r.headers["content-type"] == "application/json"
    assert r.headers["x-static"] == "yes"
    assert r.headers["cache-control"] == "no-store"
    assert r.json() == {"ok": True}
    r = requests.delete(g.url + "/gone/a/b/c", timeout=5)
    assert r.status_code == 410 and r.content == b""
    assert r.headers["content-length"] == "0"


@pytest.mark.deadline(30)
def test_head_on_get_route_has_headers_and_no_body(gatehouse):
    with h.RawClient(gatehouse.port) as c:
        c.send(h.build_request("HEAD", "/hello"))
        r = c.read_response(head=True)
        assert r.status == 200
        assert r.header("content-length") == str(len("hello\n"))
        assert h.REQUEST_ID_RE.match(r.header("x-request-id"))
        # No body bytes follow: the next response on the connection starts right away.
        r2 = c.request("GET", "/hello")
        assert r2.status == 200 and r2.body == b"hello\n", (r2, c.buf)
        assert c.buf == b""


@pytest.mark.deadline(30)
def test_keep_alive_reuses_one_connection(gatehouse):
    before = gatehouse.metric("gatehouse_connections_accepted_total")
    with h.RawClient(gatehouse.port) as c:
        ids = set()
        for i in range(5):
            r = c.request("GET", f"/items/{i}")
            assert r.status == 200 and r.body == b"item"
            assert (r.header("connection") or "").lower() != "close"
            ids.add(r.header("x-request-id"))
        r = c.request("GET", "/missing")  # an error answer keeps the connection too
        assert r.status == 404
        r = c.request("GET", "/hello")
        assert r.status == 200 and r.body == b"hello\n"
        assert len(ids) == 5
    after = gatehouse.metric("gatehouse_connections_accepted_total")
    # This test's connection plus the two /metrics connections.
    assert after - before == 2, (before, after)

    # requests.Session reuses its connection too.
    with requests.Session() as s:
        for _ in range(3):
            assert s.get(gatehouse.url + "/hello", timeout=5).status_code == 200


@pytest.mark.deadline(30)
def test_pipelined_requests_answered_in_order(gatehouse):
    paths = []
    for i in range(10):
        paths.append(["/hello", f"/items/{i}", "/missing"][i % 3])
    blob = b"".join(h.build_request("GET", p) for p in paths)
    with h.RawClient(gatehouse.port) as c:
        c.send(blob)  # all ten in one write
        responses = [c.read_response() for _ in paths]
        for p, r in zip(paths, responses):
            if p == "/hello":
                assert (r.status, r.body) == (200, b"hello\n"), (p, r)
            elif p == "/missing":
                assert r.status == 404, (p, r)
                assert r.json()["error"]["request_id"] == r.header("x-request-id")
            else:
                assert (r.status, r.body) == (200, b"item"), (p, r)
        ids = [r.header("x-request-id") for r in responses]
        assert len(set(ids)) == 10
        # The connection is still usable afterwards.
        assert c.request("GET", "/hello").status == 200

        # More than max_pipelined (32) in one write: all answered, in order.
        c.send(b"".join(h.build_request("GET", f"/items/{i}") for i in range(50)) +
               h.build_request("GET", "/hello"))
        for i in range(50):
            r = c.read_response()
            assert (r.status, r.body) == (200, b"item"), (i, r)
        assert c.read_response().body == b"hello\n"


@pytest.mark.deadline(30)
def test_oversized_header_gets_431(gatehouse):
    with h.RawClient(gatehouse.port) as c:
        c.send(h.build_request("GET", "/hello", {"X-Big": "a" * (16 * 1024)}))
        r = c.read_response()
        assert r.status == 431
        assert r.header("content-type").startswith("application/json")
        err = r.json()["error"]
        assert err["code"] == "RequestHeaderFieldsTooLarge"
        assert err["request_id"] == r.header("x-request-id")
        assert h.REQUEST_ID_RE.match(err["request_id"])
        assert (r.header("connection") or "").lower() == "close"
        assert c.wait_closed(5) in ("eof", "reset")
    gatehouse.wait_metric("gatehouse_wire_refusals_total", 1, reason="header_too_large")
    # A header just under the limit is fine.
    r = gatehouse.get("/hello", headers={"X-Ok": "b" * 4096})
    assert r.status == 200


@pytest.mark.deadline(30)
def test_access_log_json_lines_without_query(gatehouse):
    r = requests.get(gatehouse.url + "/hello?token=s3cr3t-query-value&x=1", timeout=5)
    assert r.status_code == 200
    rid = r.headers["x-request-id"]
    r404 = requests.post(gatehouse.url + "/nowhere?password=hunter2-value", data=b"abc", timeout=5)
    assert r404.status_code == 404
    rid404 = r404.headers["x-request-id"]

    def find(request_id):
        for entry in gatehouse.access_log():
            if entry.get("request_id") == request_id:
                return entry
        return None

    entry = h.wait_until(lambda: find(rid), 5, what="the access log line")
    assert entry["method"] == "GET"
    assert entry["path"] == "/hello"
    assert entry["status"] == 200
    assert isinstance(entry["duration_us"], int) and entry["duration_us"] >= 0
    assert entry["route"] == "hello"
    assert entry["remote_ip"] == "127.0.0.1"

    entry = h.wait_until(lambda: find(rid404), 5, what="the access log line of the 404")
    assert (entry["method"], entry["path"], entry["status"]) == ("POST", "/nowhere", 404)

    out = gatehouse.stdout()
    assert "s3cr3t-query-value" not in out
    assert "hunter2-value" not in out
    assert "token=" not in out
    # Every stdout line is one JSON object (nothing else is written there).
    for line in out.splitlines():
        json.loads(line)


@pytest.mark.deadline(30)
def test_too_many_header_fields_get_431(gatehouse):
    with h.RawClient(gatehouse.port) as c:
        c.send(h.build_request("GET", "/hello", {f"X-F{i}": "v" for i in range(200)}))
        r = c.read_response()
        assert r.status == 431
        assert r.json()["error"]["code"] == "RequestHeaderFieldsTooLarge"


@pytest.mark.deadline(30)
def test_malformed_request_gets_400(gatehouse):
    with h.RawClient(gatehouse.port) as c:
        c.send(b"GET /hello HTTP/1.1\r\nHost: x\r\nBad Header Name: v\r\n\r\n")
        r = c.read_response()
        assert r.status == 400
        err = r.json()["error"]
        assert err["code"] == "BadRequest"
        assert err["request_id"] == r.header("x-request-id")
        assert c.wait_closed(5) in ("eof", "reset")
    with h.RawClient(gatehouse.port) as c:
        c.send(b"NOT-HTTP\r\n\r\n")
        assert c.read_response().status == 400
    gatehouse.wait_metric("gatehouse_wire_refusals_total", 2, reason="bad_request")


@pytest.mark.deadline(30)
def test_http10_and_connection_close(gatehouse):
    with h.RawClient(gatehouse.port) as c:
        c.send(b"GET /hello HTTP/1.0\r\n\r\n")
        r = c.read_response()
        assert (r.status, r.body) == (200, b"hello\n")
        assert c.wait_closed(5) in ("eof", "reset")
    with h.RawClient(gatehouse.port) as c:
        r = c.request("GET", "/hello", {"Connection": "close"})
        assert r.status == 200
        assert (r.header("connection") or "").lower() == "close"
        assert c.wait_closed(5) in ("eof", "reset")


@pytest.mark.deadline(30)
def test_expect_100_continue(gatehouse):
    with h.RawClient(gatehouse.port) as c:
        c.send(b"POST /items/1 HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
        interim = c.read_response()
        assert interim.status == 100
        c.send(b"hello")
        r = c.read_response()
        assert (r.status, r.body) == (200, b"item")
    # Over the limit: 413 straight away, never 100.
    with h.RawClient(gatehouse.port) as c:
        c.send(b"POST /items/1 HTTP/1.1\r\nHost: x\r\nContent-Length: 5000000\r\n"
               b"Expect: 100-continue\r\n\r\n")
        assert c.read_response().status == 413


@pytest.mark.deadline(30)
def test_idle_keep_alive_connection_is_closed(start_gatehouse):
    g = start_gatehouse(lambda cfg: cfg["limits"].update(idle_timeout="1s"))
    with h.RawClient(g.port) as c:
        assert c.request("GET", "/hello").status == 200
        t0 = time.monotonic()
        assert c.wait_closed(5) == "eof"
        assert time.monotonic() - t0 < 3.0
    g.wait_metric("gatehouse_wire_refusals_total", 1, reason="idle_timeout")
