"""HTTP/1.1 conformance points that matter for a gateway: message framing (request smuggling),
HEAD responses, Host."""

import pytest

import gh_helpers as h


SMUGGLED = b"GET /hello HTTP/1.1\r\nHost: x\r\n\r\n"


@pytest.mark.deadline(30)
def test_ambiguous_framing_is_rejected(gatehouse):
    cases = [
        # Content-Length and Transfer-Encoding together.
        b"POST /items/1 HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"0\r\n\r\n" + SMUGGLED,
        # Two different Content-Lengths.
        b"POST /items/1 HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhelloX",
        # Malformed Content-Length.
        b"POST /items/1 HTTP/1.1\r\nHost: x\r\nContent-Length: +5\r\n\r\nhello",
        b"POST /items/1 HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
        # Bare LF and CR inside a field value.
        b"GET /hello HTTP/1.1\nHost: x\n\n",
        b"GET /hello HTTP/1.1\r\nHost: x\r\nX-A: a\rb\r\n\r\n",
        # Whitespace between field name and colon.
        b"GET /hello HTTP/1.1\r\nHost: x\r\nX-A : a\r\n\r\n",
    ]
    for raw in cases:
        with h.RawClient(gatehouse.port) as c:
            c.send(raw)
            r = c.read_response()
            assert r.status == 400, (raw, r)
            assert r.json()["error"]["code"] == "BadRequest"
            # Nothing else is answered on that connection (no smuggled second request).
            assert c.wait_closed(5) in ("eof", "reset"), raw
            assert c.buf == b"", (raw, c.buf)


@pytest.mark.deadline(30)
def test_transfer_encoding_not_ending_in_chunked_is_rejected(gatehouse):
    for te in ("chunked, gzip", "gzip", "identity"):
        with h.RawClient(gatehouse.port, timeout=5) as c:
            c.send(f"POST /items/1 HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: {te}\r\n\r\n".encode()
                   + SMUGGLED)
            r = c.read_response()
            assert r.status == 400, (te, r.status, r.body)
            assert c.wait_closed(5) in ("eof", "reset")
            assert b"hello" not in c.buf, (te, c.buf)


@pytest.mark.deadline(30)
def test_head_responses_have_no_body(gatehouse):
    for path, headers, status in (("/healthz", {}, 200), ("/metrics", h.AUTH, 200),
                                  ("/metrics", {}, 401), ("/no/such/route", {}, 404),
                                  ("/hello", {}, 200)):
        with h.RawClient(gatehouse.port) as c:
            c.send(h.build_request("HEAD", path, headers) + h.build_request("GET", "/hello"))
            r = c.read_response(head=True)
            assert r.status == status, (path, r)
            # The very next bytes must be the GET's response.
            nxt = c.read_response()
            assert (nxt.status, nxt.body) == (200, b"hello\n"), (path, nxt.raw_head[:80])


@pytest.mark.deadline(30)
def test_host_header_is_required_and_unique(gatehouse):
    for raw in (b"GET /hello HTTP/1.1\r\n\r\n",
                b"GET /hello HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"):
        with h.RawClient(gatehouse.port) as c:
            c.send(raw)
            assert c.read_response().status == 400, raw
    # HTTP/1.0 without Host is fine.
    with h.RawClient(gatehouse.port) as c:
        c.send(b"GET /hello HTTP/1.0\r\n\r\n")
        assert c.read_response().status == 200
