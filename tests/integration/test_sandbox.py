"""The function sandbox against the real binary: a hostile native function (fn_probe) tries to
escape from inside while a healthy function keeps answering beside it.

Layers (docs/runtime.md, "The sandbox"): seccomp refuses ptrace, mount, unshare, bpf and the
like with EPERM; every mount is read-only, the function's own directory included; /tmp is a
private, size-capped tmpfs; /proc lists only the function's own processes; the hostname is the
function's name; network none reaches nothing, loopback only its own 127.0.0.1 (neither reaches
the host's unix sockets). These tests need the layers: on a host that lacks one they fail,
naming it (from the start-up warning)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import tempfile
import threading
import uuid
from pathlib import Path

import pytest

import gh_helpers as h
from conftest import Gatehouse
from test_runtime import fn_dir, invoke, native, node_function, world_readable  # noqa: F401

EPERM = os.strerror(1)
EROFS = os.strerror(30)
ENOSPC = os.strerror(28)
MISSING_LAYERS = "cannot provide every layer of the function sandbox"


def require_full_sandbox(g):
    for line in g.stderr().splitlines():
        if MISSING_LAYERS in line:
            pytest.fail(f"this host lacks sandbox layers: {line}")


def probe(fn_dir: Path, name: str, **extra) -> dict:
    return native(fn_dir, name, "probe", **extra)


def start_beside_echo(start_gatehouse, fn_dir, *functions):
    """A server running `functions` and the healthy echo function, on a full sandbox."""
    def modify(cfg):
        cfg["functions"] = [*functions, native(fn_dir, "echo", "echo")]
    g = start_gatehouse(modify)
    require_full_sandbox(g)
    return g


def healthy_beside(g):
    r = invoke(g, "echo", {"beside": True})
    assert r.status == 200, r.body
    assert r.json()["echo"] == {"beside": True}


@pytest.mark.deadline(60)
def test_escape_syscalls_fail_with_eperm(start_gatehouse, fn_dir):
    g = start_beside_echo(start_gatehouse, fn_dir, probe(fn_dir, "probe"))
    r = invoke(g, "probe", {"op": "escape"})
    assert r.status == 200, r.body
    res = r.json()
    refused = ["ptrace", "process_vm_readv", "mount", "umount", "unshare_user", "unshare_net",
               "setns", "clone_newns", "bpf", "perf_event_open", "keyctl", "add_key",
               "userfaultfd", "kexec_load", "init_module", "reboot", "swapon", "pivot_root"]
    assert {k: res[k] for k in refused} == {k: EPERM for k in refused}
    # What a function legitimately does still works: threads (clone3 -> clone) and fork.
    assert res["thread"] == "ok" and res["fork"] == "ok"
    healthy_beside(g)
    # The worker survived its attempts and answers again.
    assert invoke(g, "probe", {"op": "escape"}).json()["ptrace"] == EPERM
    assert g.metric("gatehouse_function_cold_starts_total", function="probe") == 1


@pytest.mark.deadline(60)
def test_filesystem_read_only_and_private_capped_tmp(start_gatehouse, fn_dir, tmp_path):
    # The probe runs from a directory anyone may write to: only the read-only mount refuses.
    work = tmp_path / "fnwork"
    work.mkdir()
    shutil.copy(fn_dir / "fn_probe", work / "fn_probe")
    world_readable(work / "fn_probe")
    os.chmod(work, 0o777)
    marker = Path("/tmp") / f"gh-host-marker-{uuid.uuid4().hex}"
    marker.write_text("the host's /tmp\n")
    created = f"gh-fn-created-{uuid.uuid4().hex}"

    fs = {"name": "fs", "runtime": "lambda", "command": [str(work / "fn_probe")],
          "timeout_s": 10, "memory_mb": 64, "sandbox": {"tmp_mb": 2}}
    g = start_beside_echo(start_gatehouse, fn_dir, fs, {**fs, "name": "fs2"})
    try:
        r = invoke(g, "fs", {"op": "fs", "marker": str(marker), "create": created,
                             "fill": 3 * 1024 * 1024})
        assert r.status == 200, r.body
        res = r.json()
        assert res["own_dir"] == str(work)
        assert res["own_dir_write"] == EROFS
        assert res["root_write"] == EROFS
        assert res["tmp_type"] == "tmpfs"
        assert res["tmp_bytes"] == str(2 * 1024 * 1024)
        assert res["marker_visible"] == "no"  # the host's /tmp is not its /tmp
        assert res["fill"] == ENOSPC
        assert int(res["filled"]) <= 2 * 1024 * 1024
        healthy_beside(g)
        # Nothing it wrote reached the host, and another function's /tmp is its own too.
        assert not (work / "written-by-function").exists()
        assert not (Path("/tmp") / created).exists()
        other = invoke(g, "fs2", {"op": "fs", "marker": f"/tmp/{created}"}).json()
        assert other["marker_visible"] == "no"
        # Its own file is still there for its next invocation (the same warm worker).
        again = invoke(g, "fs", {"op": "fs", "marker": f"/tmp/{created}"}).json()
        assert again["marker_visible"] == "yes"
    finally:
        marker.unlink()


@pytest.mark.deadline(60)
def test_reload_with_a_new_tmp_size_restarts_the_worker(start_gatehouse, fn_dir):
    def modify(cfg):
        cfg["functions"] = [probe(fn_dir, "fs", sandbox={"tmp_mb": 2})]
    g = start_gatehouse(modify)
    require_full_sandbox(g)
    first = invoke(g, "fs", {"op": "fs"}).json()
    assert first["tmp_bytes"] == str(2 * 1024 * 1024)
    cfg = h.base_config(g.port, g.workdir / "state")
    cfg["functions"] = [probe(fn_dir, "fs", sandbox={"tmp_mb": 3})]
    g.reload(cfg)
    g.wait_metric("gatehouse_config_reloads_total", 1, result="ok")
    assert invoke(g, "fs", {"op": "fs"}).json()["tmp_bytes"] == str(3 * 1024 * 1024)
    assert g.metric("gatehouse_function_cold_starts_total", function="fs") == 2


@pytest.mark.deadline(60)
def test_processes_and_hostname_are_its_own(start_gatehouse, fn_dir):
    g = start_beside_echo(start_gatehouse, fn_dir, probe(fn_dir, "probe-ps"))
    assert invoke(g, "echo").status == 200  # a second sandbox running at the same time
    def listing():
        r = invoke(g, "probe-ps", {"op": "procs"})
        assert r.status == 200, r.body
        res = r.json()
        # init re-execs the gatehouse binary once the function has started, and takes its name
        # when the binary is loaded: until then it shows as "gatehouse".
        return res if {p["comm"] for p in res["processes"]} != {"gatehouse", "fn_probe"} else None
    res = h.wait_until(listing, 5, what="init named gatehouse-init")
    comms = {p["pid"]: p["comm"] for p in res["processes"]}
    assert res["pid"] == 2
    assert comms == {1: "gatehouse-init", 2: "fn_probe"}, comms
    assert res["hostname"] == "probe-ps" != socket.gethostname()
    # `ps` agrees, from the host's point of view the gateway and pytest exist but are hidden.
    assert "gatehouse" not in comms.values() and "python3" not in comms.values()
    healthy_beside(g)


@pytest.mark.deadline(60)
def test_network_modes(start_gatehouse, fn_dir, tmp_path):
    # A unix socket server of the host's, in a directory functions can reach (read-only): no
    # network namespace hides it, the filter does. Not under /tmp (where pytest's tmp_path may
    # be): a function's /tmp is its own, which would hide the socket from `host` too.
    unix_dir = Path(tempfile.mkdtemp(prefix="gh-sock-", dir="/var/tmp"))
    world_readable(unix_dir)
    unix_path = unix_dir / "host.sock"
    unix_server = socket.socket(socket.AF_UNIX)
    unix_server.bind(str(unix_path))
    unix_server.listen(8)
    os.chmod(unix_path, 0o777)
    # A server on the host's loopback that nothing in a function's namespace may reach.
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    port = server.getsockname()[1]
    stop = threading.Event()

    def serve():
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                c, _ = server.accept()
                c.close()
            except OSError:
                pass
    t = threading.Thread(target=serve, daemon=True)
    t.start()

    g = start_beside_echo(start_gatehouse, fn_dir, probe(fn_dir, "sealed"),
                          probe(fn_dir, "local", sandbox={"network": "loopback"}),
                          probe(fn_dir, "open", sandbox={"network": "host"}))
    try:
        host_server = {"op": "connect", "host": "127.0.0.1", "port": port}
        outside = {"op": "connect", "host": "1.1.1.1", "port": 53}
        # none: nothing outside, and no server of its own.
        sealed = invoke(g, "sealed", host_server).json()["connect"]
        assert sealed != "ok", sealed
        assert invoke(g, "sealed", outside).json()["connect"] != "ok"
        assert invoke(g, "sealed", {"op": "listen"}).json()["listen"] == f"listen: {EPERM}"
        # loopback: its own 127.0.0.1 works, the host's loopback server is out of reach.
        assert invoke(g, "local", {"op": "listen"}).json()["listen"] == "ok"
        local = invoke(g, "local", host_server).json()["connect"]
        assert local != "ok", local
        assert invoke(g, "local", outside).json()["connect"] != "ok"
        # Neither reaches the host's unix sockets.
        host_unix = {"op": "unix", "path": str(unix_path)}
        assert invoke(g, "sealed", host_unix).json()["unix"] == f"socket: {EPERM}"
        assert invoke(g, "local", host_unix).json()["unix"] == f"socket: {EPERM}"
        # host: the same servers are reachable (so the refusals above are the sandbox's).
        assert invoke(g, "open", host_server).json()["connect"] == "ok"
        assert invoke(g, "open", host_unix).json()["unix"] == "ok"
        healthy_beside(g)
    finally:
        stop.set()
        t.join(2)
        server.close()
        unix_server.close()
        shutil.rmtree(unix_dir, ignore_errors=True)


@pytest.mark.deadline(90)
def test_node_runs_under_the_full_sandbox(start_gatehouse, fn_dir):
    g = start_beside_echo(start_gatehouse, fn_dir,
                          *[node_function(f"node-{mode}", sandbox={"network": mode})
                            for mode in ("none", "loopback")])
    for mode in ("none", "loopback"):
        r = invoke(g, f"node-{mode}", {"rawPath": "/x"}, timeout=25)
        assert r.status == 200, (r.body, g.stderr()[-2000:])
        body = r.json()
        assert body["statusCode"] == 201
        inner = json.loads(body["body"])
        assert inner["sandbox"] == {"seccomp": "2", "pid": 2, "hostname": f"node-{mode}"}
    healthy_beside(g)


@pytest.mark.deadline(60)
def test_missing_layers_give_one_warning_and_functions_still_run(gatehouse_bin, tmp_path):
    """A gateway that is not root cannot create namespaces or cgroups: it starts anyway, says
    once what is missing, and its functions answer (seccomp needs no privilege and stays).
    The function is a shell script: without cgroups memory falls back to RLIMIT_DATA, under
    which sanitizer-built test functions cannot start."""
    if os.geteuid() != 0:
        pytest.fail("needs root to start the gateway as another user")
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.fail("setpriv (util-linux) is missing")
    workdir = tmp_path / "unprivileged"
    (workdir / "state").mkdir(parents=True)
    for p in (workdir, workdir / "state"):
        os.chmod(p, 0o777)
    world_readable(workdir)
    world_readable(Path(gatehouse_bin))
    wrapper = workdir / "gatehouse-as-nobody"
    wrapper.write_text(f"#!/bin/sh\nexec {setpriv} --reuid=65534 --regid=65534 --clear-groups "
                       f"{gatehouse_bin} \"$@\"\n")
    wrapper.chmod(0o755)
    report = ("cat >/dev/null; s=$(grep '^Seccomp:' /proc/self/status | tr -dc 0-9); "
              "n=$(ls /proc | grep -c '^[0-9]'); "
              "printf '{\"pid\":%s,\"seccomp\":\"%s\",\"procs\":%s}' $$ \"$s\" \"$n\"")
    res = h.reserve_port()
    cfg = h.base_config(res.getsockname()[1], workdir / "state")
    cfg["functions"] = [{"name": "report", "runtime": "exec",
                         "command": ["/bin/sh", "-c", report]}]
    g = Gatehouse(str(wrapper), workdir, res, cfg)
    try:
        g.start()
        warnings = [line for line in g.stderr().splitlines() if "runtime:" in line]
        assert len(warnings) == 1, warnings
        w = warnings[0]
        assert MISSING_LAYERS in w
        for layer in ("cgroups", "network namespace", "pid namespace", "mount namespace",
                      "IPC namespace", "UTS namespace"):
            assert layer in w, (layer, w)
        assert "seccomp" not in w
        r = invoke(g, "report")
        assert r.status == 200, (r.body, g.stderr()[-2000:])
        out = r.json()
        assert out["seccomp"] == "2"  # the filter is on
        assert out["pid"] != 2 and out["procs"] > 2  # no pid namespace: the host's processes
    finally:
        g.stop()
        res.close()
