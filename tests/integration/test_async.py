"""Asynchronous invocation against the real binary: X-Amz-Invocation-Type Event and
`gatehouse invoke --async` queue the event durably, a dispatcher runs it, failures are retried
with back-off and then dead-lettered, dead letters can be listed and replayed, and queued events
survive a kill -9 of the server.

The functions are `exec` shell scripts. They run in the sandbox, where every mount is read-only,
so they report each attempt and each completed event on stderr, which the server logs line by line
("function job [pid]: ASYNC ..."), and the test reads the server's log. They read a marker file
the test writes ($OUT/ok) to stop failing."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import time
from pathlib import Path

import pytest

import gh_helpers as h

# Logs each attempt (ASYNC attempt-N), then sleeps $SLEEP, then fails when $FAIL_UNTIL_OK is set
# and $OUT/ok does not exist, else logs ASYNC done-N with the event.
SCRIPT = """#!/bin/sh
ev=$(cat)
n=$(printf %s "$ev" | sed -n 's/.*"n": *\\([0-9]*\\).*/\\1/p')
echo "ASYNC attempt-$n" >&2
echo "ASYNC ctx-$n $GATEHOUSE_REQUEST_ID $GATEHOUSE_LINEAGE_DEPTH $GATEHOUSE_SOURCE $GATEHOUSE_PRINCIPAL" >&2
sleep "${SLEEP:-0}"
if [ -n "$FAIL_UNTIL_OK" ] && [ ! -f "$OUT/ok" ]; then
  echo "event $n failing on purpose" >&2
  exit 3
fi
echo "ASYNC done-$n $ev" >&2
echo '{"ok":true}'
"""


def reachable(path: Path):
    for p in [path, *path.parents]:
        mode = p.stat().st_mode
        os.chmod(p, mode | stat.S_IROTH | stat.S_IXOTH)
        if str(p) == "/":
            break


@pytest.fixture
def fn_env(tmp_path):
    """(script path, output dir) readable and writable by the function's user (nobody)."""
    d = tmp_path / "fn"
    d.mkdir()
    script = d / "fn.sh"
    script.write_text(SCRIPT)
    script.chmod(0o755)
    # Inside the function's own directory, which its sandbox mounts (read-only, so the function
    # sees the markers the test writes): pytest's tmp_path may be under /tmp, and a function's
    # /tmp is its own.
    out = d / "out"
    out.mkdir()
    out.chmod(0o777)
    reachable(script)
    reachable(out)
    return script, out


def shell_fn(script: Path, out: Path, name: str = "job", env=None, **extra) -> dict:
    f = {"name": name, "runtime": "exec", "command": [str(script)],
         "env": {"OUT": str(out), **(env or {})}, "timeout_s": 5}
    f.update(extra)
    return f


def invoke_async(g, function: str, payload, headers=None) -> h.Response:
    return h.get(g.port, f"/admin/functions/{function}/invoke", method="POST",
                 body=json.dumps(payload).encode(),
                 headers={**h.AUTH, "X-Amz-Invocation-Type": "Event", **(headers or {})},
                 timeout=10)


# Server logs of earlier runs of the same test (start() truncates stderr.log).
EARLIER_LOGS: dict = {}


def function_lines(g) -> list:
    """What the function wrote on stderr, as the server logged it, over every run of `g`."""
    out = []
    for line in (EARLIER_LOGS.get(id(g), "") + g.stderr()).splitlines():
        _, sep, rest = line.partition("]: ASYNC ")
        if sep:
            out.append(rest)
    return out


def attempts(g, n: int) -> int:
    return sum(1 for line in function_lines(g) if line == f"attempt-{n}")


def caller_of(g, n: int) -> list:
    """[request id, lineage depth, source, principal] the function saw for event n."""
    for line in function_lines(g):
        if line.startswith(f"ctx-{n} "):
            return line.split(" ")[1:]
    return []


def done(g, n: int):
    """The event of the completed run of event n (None if it has not completed)."""
    for line in function_lines(g):
        if line.startswith(f"done-{n} "):
            return json.loads(line.split(" ", 1)[1])
    return None


def dead_letters(g, function: str) -> list:
    r = h.get(g.port, f"/admin/functions/{function}/dead-letters", headers=h.AUTH)
    assert r.status == 200, r.body
    return r.json()["dead_letters"]


@pytest.mark.deadline(60)
def test_event_is_accepted_with_202_and_runs(start_gatehouse, fn_env, gatehouse_bin):
    script, out = fn_env

    def modify(cfg):
        cfg["functions"] = [shell_fn(script, out)]
    g = start_gatehouse(modify)
    t0 = time.monotonic()
    r = invoke_async(g, "job", {"n": 1, "text": "hello"})
    assert r.status == 202, r.body
    assert time.monotonic() - t0 < 2
    event_id = r.json()["event_id"]
    assert len(event_id) == 32 and r.header("x-amz-request-id") == event_id
    h.wait_until(lambda: done(g, 1) is not None, 10, what="event 1 ran")
    assert done(g, 1) == {"n": 1, "text": "hello"}
    # The caller context travels with the event: the accepting request's id, its depth + 1.
    assert caller_of(g, 1) == [r.header("x-request-id"), "1", "direct:",
                               "arn:gatehouse:iam::000000000000:admin"]
    deep = invoke_async(g, "job", {"n": 10}, headers={"x-gatehouse-lineage-depth": "3"})
    assert deep.status == 202
    h.wait_until(lambda: done(g, 10) is not None, 10, what="event 10 ran")
    assert caller_of(g, 10)[:2] == [deep.header("x-request-id"), "4"]

    # Several at once, all run exactly once (nothing fails, so nothing is retried).
    for n in range(2, 7):
        assert invoke_async(g, "job", {"n": n}).status == 202
    h.wait_until(lambda: all(done(g, n) is not None for n in range(2, 7)), 15,
                 what="events 2..6 ran")
    g.wait_metric("gatehouse_async_events_total", 7, function="job", result="succeeded")
    assert all(attempts(g, n) == 1 for n in range(1, 7))
    h.wait_until(lambda: g.metric("gatehouse_async_queue_depth", function="job") == 0, 5,
                 what="queue empty")

    # The CLI writes to the store; the running server's dispatcher picks it up.
    cli = subprocess.run([gatehouse_bin, "invoke", "job", "--async", "--config",
                          str(g.config_path), "--payload", '{"n": 7}'],
                         capture_output=True, text=True, timeout=20, cwd=g.workdir)
    assert cli.returncode == 0, cli.stderr
    assert len(json.loads(cli.stdout)["event_id"]) == 32
    h.wait_until(lambda: done(g, 7) is not None, 10, what="CLI event ran")

    # Refusals happen before anything is queued.
    assert invoke_async(g, "nope", {"n": 8}).status == 404
    bad = h.get(g.port, "/admin/functions/job/invoke", method="POST", body=b"{}",
                headers={**h.AUTH, "X-Amz-Invocation-Type": "Later"})
    assert bad.status == 400, bad.body
    assert invoke_async(g, "job", {"n": 9}, headers={"x-gatehouse-lineage-depth": "40"}).status \
        == 508


@pytest.mark.deadline(90)
def test_failing_event_is_retried_max_retries_times_then_dead_lettered_and_replayed(
        start_gatehouse, fn_env, gatehouse_bin):
    script, out = fn_env

    def modify(cfg):
        cfg["functions"] = [shell_fn(script, out, env={"FAIL_UNTIL_OK": "1"},
                                     **{"async": {"max_retries": 2, "backoff_s": 1}})]
    g = start_gatehouse(modify)
    t0 = time.monotonic()
    assert invoke_async(g, "job", {"n": 1}).status == 202
    letters = h.wait_until(lambda: dead_letters(g, "job"), 20, what="a dead letter")
    elapsed = time.monotonic() - t0
    assert attempts(g, 1) == 3  # the first attempt and max_retries = 2 retries
    assert elapsed >= 3  # back-off: 1 s before the first retry, 2 s before the second
    [d] = letters
    assert d["attempts"] == 3
    assert d["reason"] == "RetriesExhausted"
    assert d["error_type"] == "Runtime.ExitError"
    assert "exited with code 3" in d["error_message"]
    assert json.loads(d["payload"]) == {"n": 1}
    assert d["caller"]["principal"] == "arn:gatehouse:iam::000000000000:admin"
    assert d["failed_at_ms"] >= d["enqueued_at_ms"] > 0
    time.sleep(2.5)  # nothing more runs once it is dead
    assert attempts(g, 1) == 3
    assert g.metric("gatehouse_async_events_total", function="job", result="retried") == 2
    assert g.metric("gatehouse_async_events_total", function="job", result="dead_lettered") == 1
    assert g.metric("gatehouse_function_invocations_total", function="job",
                    result="function_error") == 3

    # Replay through the admin API once the cause is fixed: it runs and the dead letter is gone.
    (out / "ok").write_text("")
    r = h.get(g.port, f"/admin/functions/job/dead-letters/{d['event_id']}/replay", method="POST",
              headers=h.AUTH)
    assert r.status == 202, r.body
    assert r.json()["event_id"] == d["event_id"]
    h.wait_until(lambda: done(g, 1) is not None, 10, what="replayed event ran")
    assert attempts(g, 1) == 4
    assert dead_letters(g, "job") == []
    again = h.get(g.port, f"/admin/functions/job/dead-letters/{d['event_id']}/replay",
                  method="POST", headers=h.AUTH)
    assert again.status == 404

    # The CLI lists and replays from the store too.
    os.unlink(out / "ok")
    assert invoke_async(g, "job", {"n": 2}).status == 202
    h.wait_until(lambda: dead_letters(g, "job"), 20, what="second dead letter")
    listed = subprocess.run([gatehouse_bin, "dead-letters", "list", "job", "--config",
                             str(g.config_path)], capture_output=True, text=True, timeout=20,
                            cwd=g.workdir)
    assert listed.returncode == 0, listed.stderr
    [line] = listed.stdout.splitlines()
    cli_letter = json.loads(line)
    assert json.loads(cli_letter["payload"]) == {"n": 2} and cli_letter["attempts"] == 3
    (out / "ok").write_text("")
    replay = subprocess.run([gatehouse_bin, "dead-letters", "replay", "job",
                             cli_letter["event_id"], "--config", str(g.config_path)],
                            capture_output=True, text=True, timeout=20, cwd=g.workdir)
    assert replay.returncode == 0, replay.stderr
    h.wait_until(lambda: done(g, 2) is not None, 10, what="CLI-replayed event ran")
    missing = subprocess.run([gatehouse_bin, "dead-letters", "replay", "job", "nope", "--config",
                              str(g.config_path)], capture_output=True, text=True, timeout=20,
                             cwd=g.workdir)
    assert missing.returncode == 3


@pytest.mark.deadline(60)
def test_queue_past_max_depth_is_refused_with_429(start_gatehouse, fn_env):
    script, out = fn_env

    def modify(cfg):
        cfg["functions"] = [shell_fn(script, out, env={"SLEEP": "3"}, reserved_concurrency=1,
                                     **{"async": {"max_depth": 2}})]
    g = start_gatehouse(modify)
    assert invoke_async(g, "job", {"n": 1}).status == 202
    assert invoke_async(g, "job", {"n": 2}).status == 202
    r = invoke_async(g, "job", {"n": 3})
    assert r.status == 429, r.body
    assert r.json()["error"]["code"] == "TooManyRequests"
    assert r.header("retry-after") == "1"
    h.wait_until(lambda: done(g, 2) is not None, 15, what="queued events ran")
    assert attempts(g, 3) == 0
    assert invoke_async(g, "job", {"n": 4}).status == 202  # room again
    assert g.metric("gatehouse_async_events_total", function="job", result="refused") == 1


@pytest.mark.deadline(120)
def test_queued_events_survive_kill_9(start_gatehouse, fn_env):
    script, out = fn_env

    def modify(cfg):
        cfg["functions"] = [shell_fn(script, out, env={"SLEEP": "2"}, reserved_concurrency=1,
                                     timeout_s=4, init_timeout_s=1)]
    g = start_gatehouse(modify)
    for n in range(1, 5):
        assert invoke_async(g, "job", {"n": n}).status == 202
    # One runs (leased), three wait in the queue: kill the server in the middle of the first.
    h.wait_until(lambda: attempts(g, 1) == 1, 10, what="event 1 started")
    g.proc.send_signal(signal.SIGKILL)
    g.proc.wait(5)
    assert not done(g, 1) is not None
    assert not any(attempts(g, n) for n in range(2, 5))
    g._out.close()
    g._err.close()
    EARLIER_LOGS[id(g)] = g.stderr()

    g.start()  # same config, same store
    # Events 2..4 were never leased: they run at once. Event 1's lease (2 * timeout_s +
    # init_timeout_s + 5 s = 14 s) must expire first, then it runs again (at-least-once).
    h.wait_until(lambda: all(done(g, n) is not None for n in range(1, 5)), 40,
                 what="every accepted event ran after the restart")
    assert attempts(g, 1) == 2
    assert all(attempts(g, n) == 1 for n in range(2, 5))
    h.wait_until(lambda: g.metric("gatehouse_async_queue_depth", function="job") == 0, 5,
                 what="queue empty")


@pytest.mark.deadline(60)
def test_enqueue_is_authorized_like_a_synchronous_call(start_gatehouse, fn_env, gatehouse_bin):
    """admin.policies decide lambda:InvokeFunction when the event is accepted (API and CLI), and
    the dead-letter endpoints' own actions."""
    script, out = fn_env

    def modify(cfg):
        cfg["policies"] = [{"name": "ops", "document": {
            "Version": "2012-10-17",
            "Statement": [
                {"Sid": "InvokeJob", "Effect": "Allow", "Action": "lambda:InvokeFunction",
                 "Resource": "arn:gatehouse:lambda:*:*:function:job"},
                {"Sid": "Read", "Effect": "Allow",
                 "Action": ["gatehouse:ListDeadLetters", "gatehouse:GetMetrics"],
                 "Resource": "*"},
            ]}}]
        cfg["admin"]["policies"] = ["ops"]
        cfg["functions"] = [shell_fn(script, out), shell_fn(script, out, name="other")]
    g = start_gatehouse(modify)
    assert invoke_async(g, "job", {"n": 1}).status == 202
    h.wait_until(lambda: done(g, 1) is not None, 10, what="event 1 ran")

    r = invoke_async(g, "other", {"n": 2})
    assert r.status == 403, r.body
    assert r.json()["error"]["code"] == "AccessDenied"
    cli = subprocess.run([gatehouse_bin, "invoke", "other", "--async", "--config",
                          str(g.config_path), "--payload", '{"n": 3}'],
                         capture_output=True, text=True, timeout=20, cwd=g.workdir)
    assert cli.returncode == 4 and "may not invoke 'other'" in cli.stderr, cli.stderr
    assert g.metric("gatehouse_async_events_total", function="other", result="refused") == 1
    time.sleep(1.5)  # a dispatcher poll: nothing was queued for "other"
    assert attempts(g, 2) == 0 and attempts(g, 3) == 0
    assert g.metric("gatehouse_async_queue_depth", function="other") == 0

    assert dead_letters(g, "job") == []  # gatehouse:ListDeadLetters is allowed
    r = h.get(g.port, "/admin/functions/job/dead-letters/abc/replay", method="POST",
              headers=h.AUTH)
    assert r.status == 403 and r.json()["error"]["code"] == "AccessDenied", r.body
