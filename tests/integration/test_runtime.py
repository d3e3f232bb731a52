"""The function runtime against the real binary and real function processes: a native function
built with sdk/gatehouse_lambda.h, a shell `exec` function, a Node.js function run by the npm
aws-lambda-ric package, and hostile functions next to a healthy one that must keep answering.

Native functions are built by CMake into <build>/tests/functions; the Node one needs
tests/functions/node/node_modules (scripts/setup installs it)."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import threading
import time
from pathlib import Path

import pytest

import gh_helpers as h

REPO = Path(__file__).resolve().parents[2]
NODE_DIR = REPO / "tests" / "functions" / "node"


@pytest.fixture
def fn_dir(gatehouse_bin) -> Path:
    d = Path(gatehouse_bin).resolve().parents[2] / "tests" / "functions"
    if not (d / "fn_echo").exists():
        pytest.fail(f"native test functions missing in {d}: build the fn_* targets")
    return d


def native(fn_dir: Path, name: str, fn: str, **extra) -> dict:
    f = {"name": name, "runtime": "lambda", "command": [str(fn_dir / f"fn_{fn}")], "timeout_s": 5}
    f.update(extra)
    return f


def function_route(name: str, method, path: str, function: str, **target) -> dict:
    return {"name": name, "method": method, "path": path, "target": {"function": function, **target}}


def invoke(g, function: str, payload=None, headers=None, timeout=15.0) -> h.Response:
    body = json.dumps({} if payload is None else payload).encode()
    return h.get(g.port, f"/admin/functions/{function}/invoke", method="POST", body=body,
                 headers={**h.AUTH, **(headers or {})}, timeout=timeout)


def world_readable(path: Path):
    """Functions run as nobody: the scripts and every directory above them must be reachable."""
    for p in [path, *path.parents]:
        mode = p.stat().st_mode
        if p.is_dir():
            os.chmod(p, mode | stat.S_IRUSR | stat.S_IXUSR | stat.S_IROTH | stat.S_IXOTH)
        else:
            os.chmod(p, mode | stat.S_IROTH | stat.S_IXOTH)
        if str(p) == "/":
            break


def error_of(r: h.Response) -> dict:
    return json.loads(r.body)["error"]


def in_thread(fn):
    out = {}

    def run():
        try:
            out["value"] = fn()
        except BaseException as e:  # noqa: BLE001 - reported by the caller
            out["error"] = e
    t = threading.Thread(target=run)
    t.start()
    return t, out


@pytest.mark.deadline(60)
def test_native_function_route_and_admin_invoke_warm_worker(start_gatehouse, fn_dir):
    def modify(cfg):
        cfg["functions"] = [native(fn_dir, "echo", "echo")]
        cfg["routes"].append(function_route("echo-get", "GET", "/echo/{id}", "echo"))
    g = start_gatehouse(modify)

    r = g.get("/echo/42?a=1&a=2&b=x%20y", headers={"Cookie": "c1=v1; c2=v2"})
    assert r.status == 200, r.body
    assert r.header("content-type") == "application/json"
    out = r.json()
    ev = out["echo"]
    assert ev["version"] == "2.0"
    assert ev["routeKey"] == "GET /echo/{id}"
    assert ev["rawPath"] == "/echo/42"
    assert ev["pathParameters"] == {"id": "42"}
    assert ev["queryStringParameters"] == {"a": "1,2", "b": "x y"}
    assert ev["cookies"] == ["c1=v1", "c2=v2"]
    assert ev["requestContext"]["http"]["method"] == "GET"
    assert ev["requestContext"]["requestId"] == r.header("x-request-id")
    assert out["source"] == "route:echo-get"
    assert out["principal"] == "arn:gatehouse:iam:::anonymous"
    assert out["lineage_depth"] == "1"
    if os.geteuid() == 0:
        assert out["uid"] == 65534  # root drops to nobody

    first = invoke(g, "echo", {"k": "v"})
    assert first.status == 200, first.body
    second = invoke(g, "echo", {"k": "w"})
    assert second.status == 200
    assert first.json()["echo"] == {"k": "v"} and second.json()["echo"] == {"k": "w"}
    assert first.json()["principal"] == "arn:gatehouse:iam::000000000000:admin"
    # The route's call started the worker; both admin calls reuse it.
    assert first.json()["pid"] == out["pid"] == second.json()["pid"]
    assert second.header("x-gatehouse-cold-start") == "false"
    assert g.metric("gatehouse_function_cold_starts_total", function="echo") == 1
    assert g.metric("gatehouse_function_invocations_total", function="echo", result="ok") == 3


@pytest.mark.deadline(60)
def test_exec_shell_function_with_proxy_response_and_payload_1_0(start_gatehouse, tmp_path):
    script = tmp_path / "fn" / "sh-fn.sh"
    script.parent.mkdir()
    script.write_text(
        "#!/bin/sh\n"
        "ev=$(cat)\n"
        "len=$(printf %s \"$ev\" | wc -c)\n"
        "printf '{\"statusCode\":202,\"headers\":{\"x-fn\":\"sh\",\"x-greeting\":\"%s\"},"
        "\"body\":\"%s\"}' \"$GREETING\" \"$len\"\n")
    script.chmod(0o755)
    world_readable(script)
    v1_script = tmp_path / "fn" / "v1.sh"
    v1_script.write_text("#!/bin/sh\ncat\n")  # echoes the event: not a proxy response under 1.0
    v1_script.chmod(0o755)

    def modify(cfg):
        cfg["functions"] = [
            {"name": "sh", "runtime": "exec", "command": [str(script)], "env": {"GREETING": "hi"}},
            {"name": "v1", "runtime": "exec", "command": [str(v1_script)]},
        ]
        cfg["routes"] += [
            function_route("sh", "POST", "/sh", "sh"),
            function_route("v1", "POST", "/v1", "v1", payload_format="1.0"),
        ]
    g = start_gatehouse(modify)
    r = g.get("/sh", method="POST", body=b'{"x": 1}')
    assert r.status == 202, r.body
    assert r.header("x-fn") == "sh"
    assert r.header("x-greeting") == "hi"
    assert int(r.body) > 100  # the length of the whole 2.0 event it read on stdin

    # Payload 1.0 requires a proxy response; the raw event is not one.
    r = g.get("/v1", method="POST", body=b"{}")
    assert r.status == 502
    assert error_of(r)["code"] == "FunctionError"
    direct = invoke(g, "v1", {"raw": True})
    assert direct.status == 200 and direct.json() == {"raw": True}


def node_function(name: str, **extra) -> dict:
    """tests/functions/node/index.mjs run by the npm aws-lambda-ric."""
    ric = NODE_DIR / "node_modules" / "aws-lambda-ric" / "index.mjs"
    if not ric.exists():
        pytest.fail(f"{ric} is missing: run scripts/setup (npm ci in tests/functions/node)")
    world_readable(ric)
    world_readable(NODE_DIR / "index.mjs")
    return {"name": name, "runtime": "lambda", "command": ["/usr/bin/node", str(ric)],
            "working_dir": str(NODE_DIR), "handler": "index.handler", "memory_mb": 256,
            "max_pids": 128, "timeout_s": 20, **extra}


@pytest.mark.deadline(90)
def test_node_function_through_aws_lambda_ric(start_gatehouse):
    def modify(cfg):
        cfg["functions"] = [node_function("node")]
        cfg["routes"].append(function_route("node", "POST", "/node/{p}", "node"))
    g = start_gatehouse(modify)
    r = g.get("/node/abc", method="POST", body=b'{"q": 1}', timeout=20)
    assert r.status == 201, (r.body, g.stderr()[-2000:])
    assert r.header("x-runtime") == "node"
    assert r.header("set-cookie") == "a=1"
    body = r.json()
    assert body["functionName"] == "node"
    assert body["path"] == "/node/abc"
    assert body["memory"] == "256"
    assert body["depth"] == "1"
    r2 = g.get("/node/def", method="POST", body=b"{}")
    assert r2.status == 201
    assert r2.json()["requestId"] != body["requestId"]
    assert g.metric("gatehouse_function_cold_starts_total", function="node") == 1

    # A thrown error: public callers see only the type; the admin sees the message.
    r = g.get("/node/x", method="POST", body=b'{"fail": true}')
    assert r.status == 502
    assert "asked to fail" not in r.body.decode()
    a = invoke(g, "node", {"fail": True})
    assert a.status == 502
    assert "asked to fail" in error_of(a)["message"]
    assert a.header("x-amz-function-error") == "Error"


@pytest.mark.deadline(60)
def test_endless_loop_is_killed_at_deadline_and_replaced(start_gatehouse, fn_dir):
    def modify(cfg):
        cfg["functions"] = [native(fn_dir, "loop", "loop", timeout_s=1),
                            native(fn_dir, "echo", "echo")]
    g = start_gatehouse(modify)
    assert invoke(g, "echo").status == 200
    t0 = time.monotonic()
    t, out = in_thread(lambda: invoke(g, "loop"))
    time.sleep(0.3)
    for _ in range(5):  # the healthy function answers while the loop burns its CPU
        assert invoke(g, "echo", timeout=2).status == 200
    t.join(10)
    r = out["value"]
    elapsed = time.monotonic() - t0
    assert r.status == 504, r.body
    assert error_of(r)["code"] == "FunctionTimedOut"
    assert r.header("x-amz-function-error") == "Task.TimedOut"
    assert 0.9 < elapsed < 4
    # The killed worker is gone, and the next call gets a fresh one (killed again).
    h.wait_until(lambda: g.metric("gatehouse_function_workers", function="loop") == 0, 5,
                 what="loop worker removed")
    assert invoke(g, "loop").status == 504
    assert g.metric("gatehouse_function_cold_starts_total", function="loop") == 2
    assert g.metric("gatehouse_function_invocations_total", function="loop",
                    result="timed_out") == 2


@pytest.mark.deadline(60)
def test_memory_hog_is_killed_at_its_limit(start_gatehouse, fn_dir):
    def modify(cfg):
        cfg["functions"] = [native(fn_dir, "hog", "hog", memory_mb=64, timeout_s=20),
                            native(fn_dir, "echo", "echo")]
    g = start_gatehouse(modify)
    r = invoke(g, "hog", timeout=25)
    assert r.status == 502, r.body
    if "no writable cgroup" in g.stderr():
        # RLIMIT_DATA: malloc fails inside the function, which reports it.
        assert r.header("x-amz-function-error") == "MallocFailed"
    else:
        assert r.header("x-amz-function-error") == "Runtime.OutOfMemory"
        assert "64 MB" in error_of(r)["message"]
        assert g.metric("gatehouse_function_oom_kills_total", function="hog") == 1
    assert invoke(g, "echo").status == 200


@pytest.mark.deadline(60)
def test_fork_bomb_is_held_by_the_pid_limit(start_gatehouse, fn_dir):
    def modify(cfg):
        cfg["functions"] = [native(fn_dir, "bomb", "forkbomb", max_pids=16, timeout_s=10),
                            native(fn_dir, "echo", "echo")]
    g = start_gatehouse(modify)
    r = invoke(g, "bomb", timeout=15)
    assert r.status == 200, r.body
    res = r.json()
    assert res["forked"] < 16  # the worker itself counts against the limit
    assert res["error"] == "Resource temporarily unavailable"
    assert invoke(g, "echo").status == 200


@pytest.mark.deadline(60)
def test_network_none_cannot_connect(start_gatehouse, fn_dir):
    def modify(cfg):
        cfg["functions"] = [native(fn_dir, "sealed", "netopen"),
                            native(fn_dir, "open", "netopen", sandbox={"network": "host"})]
    g = start_gatehouse(modify)
    target = {"host": "127.0.0.1", "port": g.port}  # the gateway itself, listening on loopback
    if "unshare(CLONE_NEWNET) is not permitted" in g.stderr():
        pytest.fail("network namespaces are not available on this host")
    sealed = invoke(g, "sealed", target)
    assert sealed.status == 200, sealed.body
    assert sealed.json()["connected"] is False
    outside = invoke(g, "sealed", {"host": "1.1.1.1", "port": 53})
    assert outside.status == 200, outside.body
    assert outside.json()["connected"] is False
    opened = invoke(g, "open", target)
    assert opened.json() == {"connected": True, "error": ""}


@pytest.mark.deadline(60)
def test_crash_every_call_is_reported_and_the_server_keeps_serving(start_gatehouse, fn_dir):
    def modify(cfg):
        cfg["functions"] = [native(fn_dir, "crash", "crash"), native(fn_dir, "echo", "echo")]
        cfg["routes"].append(function_route("crash", "GET", "/crash", "crash"))
    g = start_gatehouse(modify)
    for _ in range(3):
        r = invoke(g, "crash")
        assert r.status == 502, r.body
        assert r.header("x-amz-function-error") == "Runtime.ExitError"
        assert "signal 6" in error_of(r)["message"]
        assert invoke(g, "echo").status == 200
    r = g.get("/crash")
    assert r.status == 502
    assert error_of(r)["message"] == "the function failed (Runtime.ExitError)"
    assert g.metric("gatehouse_function_crashes_total", function="crash") == 4


@pytest.mark.deadline(60)
def test_init_error_is_reported_without_a_crash_loop(start_gatehouse, fn_dir):
    def modify(cfg):
        cfg["functions"] = [native(fn_dir, "bad", "badinit")]
    g = start_gatehouse(modify)
    r = invoke(g, "bad")
    assert r.status == 502, r.body
    assert r.header("x-amz-function-error") == "Runtime.InitError"
    assert "Runtime.ImportModuleError: cannot load handler 'nope'" in error_of(r)["message"]
    # Within the back-off the error comes back without starting another process.
    for _ in range(5):
        again = invoke(g, "bad")
        assert again.status == 502
        assert "back-off" in error_of(again)["message"]
    assert g.metric("gatehouse_function_cold_starts_total", function="bad") == 1


@pytest.mark.deadline(60)
def test_reserved_concurrency_queues_then_refuses(start_gatehouse, tmp_path, fn_dir):
    script = tmp_path / "slow" / "slow.sh"
    script.parent.mkdir()
    script.write_text("#!/bin/sh\ncat >/dev/null\nsleep 1.5\necho '{\"slept\":true}'\n")
    script.chmod(0o755)
    world_readable(script)

    def modify(cfg):
        cfg["functions"] = [
            {"name": "slow", "runtime": "exec", "command": [str(script)],
             "reserved_concurrency": 2, "max_queue": 1, "timeout_s": 10},
            native(fn_dir, "echo", "echo")]
    g = start_gatehouse(modify)
    threads = [in_thread(lambda: invoke(g, "slow")) for _ in range(3)]
    time.sleep(0.5)  # two run, one waits in the queue
    t0 = time.monotonic()
    fourth = invoke(g, "slow")
    assert time.monotonic() - t0 < 0.5  # refused at once, not queued
    assert fourth.status == 429, fourth.body
    assert error_of(fourth)["code"] == "ConcurrencyLimit"
    assert fourth.header("retry-after") == "1"
    assert invoke(g, "echo").status == 200  # other functions are not affected
    for t, out in threads:
        t.join(15)
        assert out["value"].status == 200, out
        assert out["value"].json() == {"slept": True}
    assert g.metric("gatehouse_function_invocations_total", function="slow",
                    result="throttled") == 1


@pytest.mark.deadline(60)
def test_lineage_depth_past_the_maximum_is_refused(start_gatehouse, fn_dir):
    def modify(cfg):
        cfg["runtime"] = {"max_lineage_depth": 3}
        cfg["functions"] = [native(fn_dir, "echo", "echo")]
        cfg["routes"].append(function_route("echo", "GET", "/echo", "echo"))
    g = start_gatehouse(modify)
    ok = g.get("/echo", headers={"x-gatehouse-lineage-depth": "2"})
    assert ok.status == 200, ok.body
    assert ok.json()["lineage_depth"] == "3"
    assert ok.json()["echo"]["requestContext"]["gatehouse"]["lineageDepth"] == 3
    r = g.get("/echo", headers={"x-gatehouse-lineage-depth": "3"})
    assert r.status == 508
    assert error_of(r)["code"] == "RecursiveInvocationStopped"
    a = invoke(g, "echo", headers={"x-gatehouse-lineage-depth": "5"})
    assert a.status == 508


@pytest.mark.deadline(60)
def test_cli_invoke_runs_the_function_locally(gatehouse_bin, tmp_path, fn_dir):
    cfg = h.base_config(1, tmp_path)
    cfg["functions"] = [native(fn_dir, "echo", "echo"), native(fn_dir, "loop", "loop", timeout_s=1)]
    path = tmp_path / "gh.yaml"
    path.write_text(h.to_yaml(cfg))
    ok = subprocess.run([gatehouse_bin, "invoke", "echo", "--config", str(path),
                         "--payload", '{"n": 7}'], capture_output=True, text=True, timeout=20)
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["echo"] == {"n": 7}
    bad = subprocess.run([gatehouse_bin, "invoke", "loop", "--config", str(path)],
                         capture_output=True, text=True, timeout=20)
    assert bad.returncode == 4
    assert json.loads(bad.stdout)["errorType"] == "Task.TimedOut"
    missing = subprocess.run([gatehouse_bin, "invoke", "nope", "--config", str(path)],
                             capture_output=True, text=True, timeout=20)
    assert missing.returncode == 4
    assert "NotFound" in missing.stderr
