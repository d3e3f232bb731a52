"""Usage plans, API keys and layered throttling against the real binary: keys made with the CLI,
plans that isolate clients from each other, function limits that isolate functions, quotas that
survive restarts (graceful and kill -9), concurrency gates."""

import datetime
import glob
import os
import signal
import subprocess
import threading
import time

import pytest

import gh_helpers as h


# From Debian's package faketime (scripts/setup installs it).
FAKETIME_LIB = next(iter(sorted(glob.glob("/usr/lib/*/faketime/libfaketime.so.1"))),
                    "libfaketime.so.1: install the Debian package faketime")


def keys_cli(g, *args) -> subprocess.CompletedProcess:
    return subprocess.run([g.binary, "keys", *args, "--config", str(g.config_path)],
                          capture_output=True, text=True, timeout=20)


def create_key(g, name: str, plan: str) -> str:
    r = keys_cli(g, "create", "--name", name, "--plan", plan)
    assert r.returncode == 0, r.stderr
    key = r.stdout.strip()
    assert key.startswith("ghk_"), r.stdout
    return key


def wait_key_works(g, path: str, key: str, timeout: float = 5.0) -> h.Response:
    """The server polls the key store about once a second: wait until the key is known."""
    last = None

    def ok():
        nonlocal last
        last = h.get(g.port, path, headers={"x-api-key": key})
        return last.status != 403 or last.json()["error"]["code"] != "ApiKeyInvalid"

    h.wait_until(ok, timeout)
    return last


def plans_config(modify=None):
    def make(port, state_dir):
        cfg = h.base_config(port, state_dir)
        cfg["api_keys"] = {"header": "x-api-key", "quota_flush_interval": "100ms"}
        cfg["throttling"] = {"account": {"rate": 100000, "burst": 100000}}
        cfg["functions"] = [
            {"name": "fn-hot", "throttle": {"rate": 0.01, "burst": 3}},
            {"name": "fn-calm"},
        ]
        cfg["plans"] = [
            {"name": "free", "throttle": {"rate": 0.01, "burst": 3}},
            {"name": "pro", "throttle": {"rate": 10000, "burst": 10000}},
            {"name": "metered", "quota": {"limit": 5, "period": "DAY"}},
        ]
        cfg["routes"] = [
            h.static_route("hello", "GET", "/hello", "hello\n"),
            dict(h.static_route("keyed", "GET", "/v1/items", "items\n"), api_key="required"),
            dict(h.static_route("hot", "GET", "/hot", "hot\n"), function="fn-hot"),
            dict(h.static_route("calm", "GET", "/calm", "calm\n"), function="fn-calm"),
        ]
        if modify:
            modify(cfg)
        return cfg
    return make


@pytest.mark.deadline(60)
def test_missing_unknown_and_revoked_keys_are_refused(start_gatehouse):
    g = start_gatehouse(config=plans_config())
    r = h.get(g.port, "/v1/items")
    assert r.status == 403 and r.json()["error"]["code"] == "ApiKeyMissing"
    r = h.get(g.port, "/v1/items", headers={"x-api-key": "ghk_0123456789abcdef_" + "0" * 48})
    assert r.status == 403 and r.json()["error"]["code"] == "ApiKeyInvalid"
    r = h.get(g.port, "/v1/items", headers={"x-api-key": "not-a-key"})
    assert r.status == 403 and r.json()["error"]["code"] == "ApiKeyInvalid"
    key = create_key(g, "alice", "pro")
    r = wait_key_works(g, "/v1/items", key)
    assert r.status == 200, r.body
    # The store holds only the hash: the key itself appears nowhere in the database.
    db = (g.workdir / "state" / "gh.db").read_bytes()
    assert key.encode() not in db
    listed = keys_cli(g, "list")
    assert "alice" in listed.stdout and key not in listed.stdout
    assert keys_cli(g, "revoke", "alice").returncode == 0

    def refused():
        r = h.get(g.port, "/v1/items", headers={"x-api-key": key})
        return r.status == 403 and r.json()["error"]["code"] == "ApiKeyInvalid"

    h.wait_until(refused, 5)


@pytest.mark.deadline(60)
def test_flooding_key_is_refused_while_another_plan_keeps_its_rate(start_gatehouse):
    g = start_gatehouse(config=plans_config())
    free = create_key(g, "flooder", "free")
    pro = create_key(g, "steady", "pro")
    wait_key_works(g, "/v1/items", pro)
    statuses = [h.get(g.port, "/v1/items", headers={"x-api-key": free}) for _ in range(20)]
    # The first request may have been spent while waiting for the key to load: at most 3 pass.
    assert 1 <= sum(r.status == 200 for r in statuses) <= 3
    refused = [r for r in statuses if r.status == 429]
    assert len(refused) >= 17
    r = refused[0]
    assert r.json()["error"]["code"] == "ThrottledKey"
    assert int(r.header("retry-after")) >= 1
    assert r.header("ratelimit-policy").startswith("3;w=")
    assert r.header("ratelimit").startswith("limit=3, remaining=0, reset=")
    # The other key, on another plan, keeps its full rate.
    for _ in range(50):
        assert h.get(g.port, "/v1/items", headers={"x-api-key": pro}).status == 200
    assert g.wait_metric("gatehouse_refusals_total", 17, code="ThrottledKey") >= 17


@pytest.mark.deadline(60)
def test_a_hot_function_is_limited_on_its_own(start_gatehouse):
    g = start_gatehouse(config=plans_config())
    hot = [h.get(g.port, "/hot").status for _ in range(10)]
    assert hot[:3] == [200, 200, 200]
    assert set(hot[3:]) == {429}
    r = h.get(g.port, "/hot")
    assert r.json()["error"]["code"] == "ThrottledFunction"
    # The other function behind the same account limit is still served.
    for _ in range(50):
        assert h.get(g.port, "/calm").status == 200


@pytest.mark.deadline(60)
def test_account_limit_covers_every_route(start_gatehouse):
    def modify(cfg):
        cfg["throttling"] = {"account": {"rate": 0.01, "burst": 4}}
    g = start_gatehouse(config=plans_config(modify))
    got = [h.get(g.port, p).status for p in ["/hello", "/calm", "/hello", "/calm", "/hello"]]
    assert got == [200, 200, 200, 200, 429]
    assert h.get(g.port, "/calm").json()["error"]["code"] == "ThrottledAccount"


@pytest.mark.deadline(60)
def test_client_ip_limit_applies_to_keyless_routes_per_ip(start_gatehouse):
    def modify(cfg):
        cfg["throttling"]["client_ip"] = {"rate": 0.01, "burst": 2}
    g = start_gatehouse(config=plans_config(modify))
    a = [h.get(g.port, "/hello", source="127.0.0.2").status for _ in range(4)]
    assert a == [200, 200, 429, 429]
    r = h.get(g.port, "/hello", source="127.0.0.2")
    assert r.json()["error"]["code"] == "ThrottledClient"
    assert [h.get(g.port, "/hello", source="127.0.0.3").status for _ in range(2)] == [200, 200]


@pytest.mark.deadline(90)
def test_quota_is_exact_and_survives_restarts(start_gatehouse):
    g = start_gatehouse(config=plans_config())
    key = create_key(g, "metered", "metered")
    assert wait_key_works(g, "/v1/items", key).status == 200   # 1 of 5
    for _ in range(4):
        assert h.get(g.port, "/v1/items", headers={"x-api-key": key}).status == 200
    r = h.get(g.port, "/v1/items", headers={"x-api-key": key})
    assert r.status == 429
    assert r.json()["error"]["code"] == "QuotaExceeded"
    # Retry-After says when the UTC day ends.
    assert 1 <= int(r.header("retry-after")) <= 86400
    # A graceful restart loses nothing.
    assert g.stop() == 0
    g.start()
    r = h.get(g.port, "/v1/items", headers={"x-api-key": key})
    assert r.status == 429 and r.json()["error"]["code"] == "QuotaExceeded"


@pytest.mark.deadline(90)
def test_quota_resets_at_the_utc_day_boundary(start_gatehouse):
    """The server runs under libfaketime with its wall clock started 15 s before midnight UTC
    (the monotonic clock stays real): the daily quota is used up before midnight and granted
    again after it, by the clock alone."""
    g = start_gatehouse(config=plans_config(), ready=False)
    today = datetime.datetime.now(datetime.timezone.utc).date()
    # libfaketime preloaded into the server itself (the `faketime` wrapper would stand between
    # the test and the server, and SIGTERM would not reach the server).
    g.env = {"LD_PRELOAD": FAKETIME_LIB, "FAKETIME": f"@{today.isoformat()} 23:59:45",
             "TZ": "UTC", "FAKETIME_DONT_FAKE_MONOTONIC": "1",
             # libfaketime is preloaded ahead of the sanitizer runtime in ASan builds.
             "ASAN_OPTIONS": os.environ.get("ASAN_OPTIONS", "") + ":verify_asan_link_order=0"}
    g.start()
    key = create_key(g, "metered", "metered")
    assert wait_key_works(g, "/v1/items", key).status == 200   # 1 of 5
    for _ in range(4):
        assert h.get(g.port, "/v1/items", headers={"x-api-key": key}).status == 200
    r = h.get(g.port, "/v1/items", headers={"x-api-key": key})
    assert r.status == 429 and r.json()["error"]["code"] == "QuotaExceeded", r.body
    assert " 23:59:" in r.header("date"), r.header("date")  # before midnight, on the fake clock
    retry = int(r.header("retry-after"))
    assert 1 <= retry <= 15, retry  # the period ends at midnight, seconds away
    time.sleep(retry + 0.5)
    r = h.get(g.port, "/v1/items", headers={"x-api-key": key})
    assert r.status == 200, (r.status, r.body, r.header("date"))
    assert " 00:00:" in r.header("date"), r.header("date")
    for _ in range(4):
        assert h.get(g.port, "/v1/items", headers={"x-api-key": key}).status == 200
    r = h.get(g.port, "/v1/items", headers={"x-api-key": key})
    assert r.status == 429 and r.json()["error"]["code"] == "QuotaExceeded"
    assert int(r.header("retry-after")) > 86000  # the next period is a whole day


@pytest.mark.deadline(90)
def test_quota_after_kill_9_loses_at_most_one_flush_interval(start_gatehouse):
    g = start_gatehouse(config=plans_config())
    key = create_key(g, "metered", "metered")
    assert wait_key_works(g, "/v1/items", key).status == 200
    for _ in range(2):
        assert h.get(g.port, "/v1/items", headers={"x-api-key": key}).status == 200
    # Three counted; quota_flush_interval is 100 ms: wait well past it, then kill -9.
    time.sleep(0.5)
    g.proc.send_signal(signal.SIGKILL)
    g.proc.wait(10)
    g.stop()
    g.start()
    wait_key_works(g, "/v1/items", key)  # this request is the 4th
    statuses = [h.get(g.port, "/v1/items", headers={"x-api-key": key}).status for _ in range(3)]
    assert statuses == [200, 429, 429]


def held_route_config(upstream, concurrency_wait=None):
    """plans_config plus /api/... proxied to `upstream` through a route gate of 1."""
    def modify(cfg):
        if concurrency_wait is not None:
            cfg["throttling"]["concurrency_wait"] = concurrency_wait
        cfg["upstreams"] = [{"name": "up", "url": f"http://127.0.0.1:{upstream.port}",
                             "timeout": "10s"}]
        cfg["routes"].append(dict(h.http_route("held", "GET", "/api/{proxy+}", "up"),
                                  concurrency=1))
    return plans_config(modify)


@pytest.mark.deadline(60)
def test_route_concurrency_gate(start_gatehouse, upstream):
    g = start_gatehouse(config=held_route_config(upstream))
    result = {}

    def first():
        result["r"] = h.get(g.port, "/api/hold/1", timeout=15)

    t = threading.Thread(target=first, daemon=True)
    t.start()
    try:
        assert upstream.held.wait(5)
        r = h.get(g.port, "/api/other")
        assert r.status == 429
        assert r.json()["error"]["code"] == "ConcurrencyLimit"
    finally:
        upstream.release.set()
    t.join(15)
    assert result["r"].status == 200
    # The gate was released with the first response.
    assert h.get(g.port, "/api/again").status == 200


@pytest.mark.deadline(60)
def test_concurrency_wait_holds_a_request_until_a_slot_frees_or_the_wait_ends(start_gatehouse,
                                                                               upstream):
    g = start_gatehouse(config=held_route_config(upstream, concurrency_wait="1500ms"))
    results = {}

    def call(name, path):
        t0 = time.monotonic()
        r = h.get(g.port, path, timeout=15)
        results[name] = (r, time.monotonic() - t0)

    first = threading.Thread(target=call, args=("first", "/api/hold/1"), daemon=True)
    first.start()
    try:
        assert upstream.held.wait(5)
        # The slot stays taken: the second request waits the whole 1.5 s, then gets 429.
        call("second", "/api/other")
        r, took = results["second"]
        assert r.status == 429 and r.json()["error"]["code"] == "ConcurrencyLimit", r.body
        assert 1.4 <= took < 5, took
        # A third request waits; the slot frees 0.4 s later and it is served then.
        third = threading.Thread(target=call, args=("third", "/api/third"), daemon=True)
        third.start()
        time.sleep(0.4)
    finally:
        upstream.release.set()
    first.join(15)
    third.join(15)
    assert results["first"][0].status == 200
    r, took = results["third"]
    assert r.status == 200, r.body
    assert 0.3 <= took < 1.4, took
    # Only the timed-out request was refused.
    assert g.metric("gatehouse_refusals_total", code="ConcurrencyLimit") == 1


@pytest.mark.deadline(60)
def test_admin_api_manages_keys(start_gatehouse):
    g = start_gatehouse(config=plans_config())
    import json
    r = h.get(g.port, "/admin/keys", method="POST", headers=dict(h.AUTH),
              body=json.dumps({"name": "bob", "plan": "pro"}).encode())
    assert r.status == 201, r.body
    created = r.json()
    key = created["key"]
    assert created["plan"] == "pro" and key.startswith("ghk_")
    # Admin changes apply at once (no polling delay).
    assert h.get(g.port, "/v1/items", headers={"x-api-key": key}).status == 200
    listed = h.get(g.port, "/admin/keys", headers=dict(h.AUTH)).json()["keys"]
    assert [k["name"] for k in listed] == ["bob"] and "key" not in listed[0]
    r = h.get(g.port, f"/admin/keys/{created['id']}/rotate", method="POST", headers=dict(h.AUTH))
    assert r.status == 200, r.body
    new_key = r.json()["key"]
    assert h.get(g.port, "/v1/items", headers={"x-api-key": key}).status == 403
    assert h.get(g.port, "/v1/items", headers={"x-api-key": new_key}).status == 200
    # Attach: a key moved from the tight plan `free` (burst 3) to `pro` keeps its id and
    # secret and gets pro's rate at once.
    r = h.get(g.port, "/admin/keys", method="POST", headers=dict(h.AUTH),
              body=json.dumps({"name": "carol", "plan": "free"}).encode())
    carol = r.json()
    statuses = [h.get(g.port, "/v1/items", headers={"x-api-key": carol["key"]}).status
                for _ in range(5)]
    assert statuses == [200, 200, 200, 429, 429]
    r = h.get(g.port, "/admin/keys/carol/attach", method="POST", headers=dict(h.AUTH),
              body=json.dumps({"plan": "pro"}).encode())
    assert r.status == 200 and r.json()["plan"] == "pro" and r.json()["id"] == carol["id"], r.body
    assert all(h.get(g.port, "/v1/items", headers={"x-api-key": carol["key"]}).status == 200
               for _ in range(10))
    r = h.get(g.port, "/admin/keys/carol/attach", method="POST", headers=dict(h.AUTH),
              body=b'{"plan": "nope"}')
    assert r.status == 400 and r.json()["error"]["code"] == "InvalidArgument"
    r = h.get(g.port, "/admin/keys/carol/attach", method="POST", headers=dict(h.AUTH),
              body=b'{"plan": "pro", "stages": ["nope"]}')
    assert r.status == 400
    r = h.get(g.port, "/admin/keys/nobody/attach", method="POST", headers=dict(h.AUTH),
              body=b'{"plan": "pro"}')
    assert r.status == 404
    r = h.get(g.port, "/admin/keys/bob/revoke", method="POST", headers=dict(h.AUTH))
    assert r.status == 200 and r.json()["revoked"] is True
    assert h.get(g.port, "/v1/items", headers={"x-api-key": new_key}).status == 403
    # Bad input: unknown plan, malformed body, no token.
    r = h.get(g.port, "/admin/keys", method="POST", headers=dict(h.AUTH),
              body=b'{"name": "x", "plan": "nope"}')
    assert r.status == 400
    r = h.get(g.port, "/admin/keys", method="POST", headers=dict(h.AUTH), body=b"{")
    assert r.status == 400
    assert h.get(g.port, "/admin/keys").status == 401


@pytest.mark.deadline(60)
def test_the_key_header_is_not_forwarded_upstream_unless_configured(start_gatehouse, upstream):
    def with_upstream(forward=None):
        def modify(cfg):
            if forward is not None:
                cfg["api_keys"]["forward"] = forward
            cfg["upstreams"] = [
                {"name": "up", "url": f"http://127.0.0.1:{upstream.port}", "timeout": "5s"}]
            cfg["routes"] += [
                dict(h.http_route("proxied", "GET", "/p/{proxy+}", "up"), api_key="required"),
                h.http_route("open", "GET", "/o/{proxy+}", "up"),
            ]
        return plans_config(modify)

    g = start_gatehouse(config=with_upstream())
    import json
    r = h.get(g.port, "/admin/keys", method="POST", headers=dict(h.AUTH),
              body=json.dumps({"name": "fwd", "plan": "pro"}).encode())
    assert r.status == 201, r.body
    key = r.json()["key"]
    r = h.get(g.port, "/p/x", headers={"x-api-key": key, "X-Other": "kept"})
    assert r.status == 200, r.body
    seen = upstream.seen[-1]
    assert seen.path == "/p/x" and seen.headers["x-other"] == "kept"
    assert "x-api-key" not in seen.headers
    assert key not in repr(seen.header_list)
    # On a route that takes no key, a header of that name is removed too (any case).
    r = h.get(g.port, "/o/y", headers={"X-API-Key": "not-a-key"})
    assert r.status == 200 and upstream.seen[-1].path == "/o/y"
    assert "x-api-key" not in upstream.seen[-1].headers
    # api_keys.forward: true (applied by a reload) passes it on.
    g.reload(with_upstream(forward=True)(g.port, g.workdir / "state"))
    deadline = time.monotonic() + 10
    while True:
        r = h.get(g.port, "/p/z", headers={"x-api-key": key})
        assert r.status == 200, r.body
        if upstream.seen[-1].headers.get("x-api-key") == key:
            break
        assert time.monotonic() < deadline, "the reload never forwarded the key header"
        time.sleep(0.05)
