"""Configuration reloads (SIGHUP, POST /admin/reload), the admin endpoints, /metrics and
`gatehouse validate`."""

import hashlib
import re
import subprocess
import threading

import pytest
import requests

import gh_helpers as h


def _insert_after(text: str, anchor: str, new_line: str):
    """Inserts `new_line` after the first line equal to `anchor`; returns (text, 1-based line)."""
    lines = text.splitlines()
    i = lines.index(anchor)
    lines.insert(i + 1, new_line)
    return "\n".join(lines) + "\n", i + 2


@pytest.mark.deadline(40)
def test_sighup_with_broken_file_keeps_running_config(gatehouse):
    cfg_text = gatehouse.config_text
    assert gatehouse.get("/hello").status == 200
    assert gatehouse.metric("gatehouse_config_reloads_total", result="failed") == 0

    # An unknown key under `server:`.
    broken, bad_line = _insert_after(cfg_text, "server:", "  no_such_option: 5")
    gatehouse.reload(broken)
    h.wait_until(lambda: "reload refused" in gatehouse.stderr(), 5, what="the reload error in the log")
    gatehouse.wait_metric("gatehouse_config_reloads_total", 1, result="failed")

    err = gatehouse.stderr()
    # The error names the file and the line of the bad key (file:line:col: message).
    assert re.search(rf"{re.escape(str(gatehouse.config_path))}:{bad_line}:\d+: .*no_such_option", err), err
    # Still serving, with the old routes; the process is alive.
    assert gatehouse.proc.poll() is None
    assert gatehouse.get("/hello").status == 200
    assert gatehouse.get("/items/3").status == 200
    assert gatehouse.metric("gatehouse_config_reloads_total", result="ok") == 0

    # A valid change: a new route, and /hello answers differently.
    cfg = h.base_config(gatehouse.port, gatehouse.workdir / "state")
    cfg["routes"][0] = h.static_route("hello", "GET", "/hello", "hello again\n")
    cfg["routes"].append(h.static_route("added", "GET", "/added", "added by SIGHUP"))
    gatehouse.reload(cfg)

    def new_route_served():
        r = gatehouse.get("/added")
        return r.status == 200 and r.body == b"added by SIGHUP"

    h.wait_until(new_route_served, 5, what="the route added by SIGHUP")
    gatehouse.wait_metric("gatehouse_config_reloads_total", 1, result="ok")
    assert gatehouse.metric("gatehouse_config_reloads_total", result="failed") == 1
    # Every worker has the new snapshot: several fresh connections all see it.
    for _ in range(6):
        r = gatehouse.get("/hello")
        assert r.status == 200 and r.body == b"hello again\n"
    assert gatehouse.proc.poll() is None


@pytest.mark.deadline(60)
def test_reloads_under_load_lose_no_request(gatehouse):
    """Clients keep sending while the config is reloaded several times: every request is answered,
    by the old or the new config, never refused or dropped."""
    stop = threading.Event()
    results = {"ok": 0, "bad": []}
    lock = threading.Lock()

    def client():
        while not stop.is_set():
            try:
                with h.RawClient(gatehouse.port, timeout=5) as c:
                    for _ in range(20):
                        r = c.request("GET", "/hello")
                        with lock:
                            if r.status == 200 and r.body.startswith(b"hello"):
                                results["ok"] += 1
                            else:
                                results["bad"].append((r.status, r.body))
            except Exception as e:  # recorded and asserted on below
                with lock:
                    results["bad"].append(repr(e))

    threads = [threading.Thread(target=client, daemon=True) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        for gen in range(1, 6):
            cfg = h.base_config(gatehouse.port, gatehouse.workdir / "state")
            cfg["routes"][0] = h.static_route("hello", "GET", "/hello", f"hello {gen}\n")
            gatehouse.reload(cfg)
            h.wait_until(lambda: gatehouse.get("/hello").body == f"hello {gen}\n".encode(), 5,
                         what=f"generation {gen} to be served")
    finally:
        stop.set()
        for t in threads:
            t.join(10)
    assert results["bad"] == [], results["bad"][:5]
    assert results["ok"] > 0
    assert gatehouse.metric("gatehouse_config_reloads_total", result="ok") == 5
    assert gatehouse.metric("gatehouse_bugs_total") == 0


@pytest.mark.deadline(30)
def test_reload_changes_wire_limits_and_admin_token(gatehouse):
    assert gatehouse.get("/items/1", method="POST", body=b"x" * 4000).status == 200
    cfg = h.base_config(gatehouse.port, gatehouse.workdir / "state")
    cfg["limits"]["max_body_bytes"] = "1KiB"
    new_token = "another-admin-token"
    cfg["admin"]["token_sha256"] = hashlib.sha256(new_token.encode()).hexdigest()
    gatehouse.reload(cfg)
    # SIGHUP is asynchronous, and the wire limits and the routing snapshot reach each worker as
    # two separate posts: poll for each effect.
    h.wait_until(lambda: gatehouse.get("/items/1", method="POST", body=b"x" * 4000).status == 413, 5,
                 what="the lower body limit to apply")
    new_auth = {"Authorization": f"Bearer {new_token}"}
    h.wait_until(lambda: gatehouse.get("/metrics", headers=new_auth).status == 200, 5,
                 what="the new admin token to be accepted")
    h.wait_until(lambda: gatehouse.get("/metrics", headers=h.AUTH).status == 401, 5,
                 what="the old admin token to be refused")
    for _ in range(4):  # settled on every worker
        assert gatehouse.get("/items/1", method="POST", body=b"x" * 1000).status == 200
        assert gatehouse.get("/items/1", method="POST", body=b"x" * 2000).status == 413
        assert gatehouse.get("/metrics", headers=h.AUTH).status == 401
        assert gatehouse.get("/metrics", headers=new_auth).status == 200


@pytest.mark.deadline(30)
def test_metrics_need_the_admin_token(gatehouse):
    for _ in range(3):
        assert requests.get(gatehouse.url + "/hello", timeout=5).status_code == 200
    assert requests.get(gatehouse.url + "/nope", timeout=5).status_code == 404

    r = requests.get(gatehouse.url + "/metrics", timeout=5)
    assert r.status_code == 401
    assert r.json()["error"]["code"] == "Unauthenticated"
    assert r.headers.get("www-authenticate", "").startswith("Bearer")
    r = requests.get(gatehouse.url + "/metrics", headers={"Authorization": "Bearer wrong-token"},
                     timeout=5)
    assert r.status_code == 401
    r = requests.get(gatehouse.url + "/metrics",
                     headers={"Authorization": f"Basic {h.ADMIN_TOKEN}"}, timeout=5)
    assert r.status_code == 401

    r = requests.get(gatehouse.url + "/metrics", headers=h.AUTH, timeout=5)
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    samples = h.parse_metrics(r.text)
    assert h.metric(samples, "gatehouse_requests_total", route="hello", status="200") == 3
    assert (h.metric(samples, "gatehouse_requests_total", route="(none)", status="404") or 0) >= 1
    inf = h.metric(samples, "gatehouse_request_duration_seconds_bucket", le="+Inf")
    assert inf is not None and inf >= 4
    assert h.metric(samples, "gatehouse_request_duration_seconds_count") == inf
    assert h.metric(samples, "gatehouse_request_duration_seconds_sum") is not None
    # Buckets are cumulative.
    buckets = sorted((float(dict(k[1])["le"]), v) for k, v in samples.items()
                     if k[0] == "gatehouse_request_duration_seconds_bucket")
    counts = [v for _, v in buckets]
    assert counts == sorted(counts)
    open_conns = h.metric(samples, "gatehouse_connections_open")
    assert open_conns is not None and open_conns >= 1  # at least this very connection
    assert "# TYPE gatehouse_request_duration_seconds histogram" in r.text
    assert h.metric(samples, "gatehouse_wire_refusals_total", reason="header_timeout") is not None


@pytest.mark.deadline(30)
def test_metrics_public(start_gatehouse):
    g = start_gatehouse(lambda cfg: cfg["admin"].update(metrics_public=True))
    r = g.get("/metrics")
    assert r.status == 200
    assert b"gatehouse_connections_open" in r.body
    # Public metrics do not open the admin API.
    assert g.get("/admin/config").status == 401


@pytest.mark.deadline(30)
def test_admin_config_and_reload(gatehouse):
    r = requests.get(gatehouse.url + "/admin/config", timeout=5)
    assert r.status_code == 401
    r = requests.get(gatehouse.url + "/admin/config", headers=h.AUTH, timeout=5)
    assert r.status_code == 200
    doc = r.json()
    assert doc["source"] == str(gatehouse.config_path)
    routes = {(x["name"], x["path"]) for x in doc["routes"]}
    assert routes == {("hello", "/hello"), ("items", "/items/{id}")}
    gen = doc["generation"]

    # POST /admin/reload without the token is refused and changes nothing.
    r = requests.post(gatehouse.url + "/admin/reload", timeout=5)
    assert r.status_code == 401

    # A valid new file: 200, and the new route works right away.
    cfg = h.base_config(gatehouse.port, gatehouse.workdir / "state")
    cfg["routes"].append(h.static_route("fresh", ["GET"], "/fresh/{name}", "fresh"))
    gatehouse.write_config(cfg)
    r = requests.post(gatehouse.url + "/admin/reload", headers=h.AUTH, timeout=10)
    assert r.status_code == 200, r.text
    assert r.json() == {"reloaded": True}
    r = requests.get(gatehouse.url + "/fresh/abc", timeout=5)
    assert r.status_code == 200 and r.text == "fresh"

    r = requests.get(gatehouse.url + "/admin/config", headers=h.AUTH, timeout=5)
    doc = r.json()
    assert doc["generation"] == gen + 1
    assert ("fresh", "/fresh/{name}") in {(x["name"], x["path"]) for x in doc["routes"]}

    # A broken file: 400 InvalidConfig naming file:line, the running config stays.
    broken, bad_line = _insert_after(gatehouse.config_text, "limits:", "  bogus_limit: 1")
    gatehouse.write_config(broken)
    r = requests.post(gatehouse.url + "/admin/reload", headers=h.AUTH, timeout=10)
    assert r.status_code == 400
    err = r.json()["error"]
    assert err["code"] == "InvalidConfig"
    assert f"{gatehouse.config_path}:{bad_line}:" in err["message"], err
    assert requests.get(gatehouse.url + "/fresh/x", timeout=5).status_code == 200
    samples = gatehouse.metrics()
    assert h.metric(samples, "gatehouse_config_reloads_total", result="ok") == 1
    assert h.metric(samples, "gatehouse_config_reloads_total", result="failed") == 1

    # Unknown admin endpoint.
    r = requests.get(gatehouse.url + "/admin/nothing", headers=h.AUTH, timeout=5)
    assert r.status_code == 404


GOOD = """\
server:
  listen: "127.0.0.1:18080"
  threads: 2
  shutdown_grace: 5s
limits:
  max_header_bytes: 8KiB
  header_timeout: 1s
store:
  state: "sqlite://{state}/gh.db"
upstreams:
  - name: up
    url: "http://127.0.0.1:9"
    timeout: 2s
routes:
  - method: GET
    path: /hello
    target: {{static: {{status: 200, body: "hello\\n"}}}}
  - method: [GET, POST]
    path: /items/{{id}}
    target: {{static: {{status: 200, body: "item"}}}}
  - method: ANY
    path: /api/{{proxy+}}
    target: {{http: {{upstream: up}}}}
"""

# Two errors: an unknown (misspelt) key on line 7 and a duration without a unit on line 4.
BAD = """\
server:
  listen: "127.0.0.1:18080"
  threads: 2
  shutdown_grace: 5
limits:
  max_header_bytes: 8KiB
  header_timout: 1s
routes:
  - method: GET
    path: /hello
    target: {static: {status: 200, body: "hello"}}
"""


@pytest.mark.deadline(30)
def test_validate(gatehouse_bin, tmp_path):
    good = tmp_path / "good.yaml"
    good.write_text(GOOD.format(state=tmp_path))
    p = subprocess.run([gatehouse_bin, "validate", str(good)], capture_output=True, text=True,
                       timeout=20)
    assert p.returncode == 0, p.stderr + p.stdout
    assert f"{good}: OK" in p.stdout
    assert "3 routes" in p.stdout and "1 upstreams" in p.stdout

    bad = tmp_path / "bad.yaml"
    bad.write_text(BAD)
    p = subprocess.run([gatehouse_bin, "validate", str(bad)], capture_output=True, text=True,
                       timeout=20)
    assert p.returncode == 1, p.stdout + p.stderr
    out = p.stdout + p.stderr
    errors = re.findall(rf"^{re.escape(str(bad))}:(\d+):(\d+): (.+)$", out, re.M)
    assert len(errors) == 2, out
    assert [int(line) for line, _, _ in errors] == [4, 7], out  # sorted by line
    assert all(int(col) >= 1 for _, col, _ in errors), out
    assert "shutdown_grace" in errors[0][2], out
    assert "header_timout" in errors[1][2], out
    assert "OK" not in p.stdout

    missing = tmp_path / "missing.yaml"
    p = subprocess.run([gatehouse_bin, "validate", str(missing)], capture_output=True, text=True,
                       timeout=20)
    assert p.returncode == 1
    assert str(missing) in p.stderr


@pytest.mark.deadline(30)
def test_serve_refuses_a_bad_config(gatehouse_bin, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(BAD)
    p = subprocess.run([gatehouse_bin, "serve", "--config", str(bad)], capture_output=True,
                       text=True, timeout=20)
    assert p.returncode == 1
    assert re.search(rf"^{re.escape(str(bad))}:4:\d+: ", p.stderr, re.M), p.stderr
