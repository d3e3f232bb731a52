"""Authorization against the real binary (docs/policy.md, "Wiring"): route resource policies that
tell API-key principals apart, conditions on the client address and on a header,
authorization.default, a function resource policy that refuses a route, admin.policies, and the
principal ARN a function receives."""

import json
import subprocess

import pytest

import gh_helpers as h
from test_runtime import fn_dir, function_route, invoke, native  # noqa: F401 (fixture)

ACCOUNT = "000000000000"


def key_arn(key: str) -> str:
    # ghk_<16 hex id>_<secret>: the principal is named by the id.
    return f"arn:gatehouse:iam::{ACCOUNT}:apikey/{key.split('_')[1]}"


def create_key(g, name: str, plan: str) -> str:
    r = subprocess.run([g.binary, "keys", "create", "--name", name, "--plan", plan,
                        "--config", str(g.config_path)], capture_output=True, text=True, timeout=20)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


def error_of(r: h.Response) -> dict:
    return json.loads(r.body)["error"]


def allow(principal, condition=None, sid=None, effect="Allow", action="execute-api:Invoke"):
    s = {"Effect": effect, "Principal": principal, "Action": action, "Resource": "*"}
    if sid:
        s = {"Sid": sid, **s}
    if condition:
        s["Condition"] = condition
    return s


def document(*statements):
    return {"Version": "2012-10-17", "Statement": list(statements)}


def keyed_route(name, path, policy=None):
    r = {"name": name, "method": "GET", "path": path, "api_key": "required",
         "target": {"static": {"status": 200, "body": name}}}
    if policy is not None:
        r["policy"] = policy
    return r


@pytest.mark.deadline(60)
def test_route_policy_allows_one_key_and_denies_another(start_gatehouse):
    def base(cfg):
        cfg["plans"] = [{"name": "free"}]
        cfg["routes"].append(keyed_route("private", "/private"))
    # Keys first (their ids name the principals), then the policy that names them.
    g = start_gatehouse(base, ready=False)
    a, b, c = (create_key(g, n, "free") for n in ("alice", "bob", "carol"))
    cfg = h.base_config(g.port, g.workdir / "state")
    base(cfg)
    cfg["routes"][-1]["policy"] = document(
        allow({"AWS": key_arn(a)}, sid="AliceMayCall"),
        allow({"AWS": key_arn(b)}, sid="NeverBob", effect="Deny", action="*"),
        allow("*", {"StringEquals": {"aws:username": "bob"}}, sid="ByName"))
    g.write_config(cfg)
    g.start()

    assert g.get("/private", headers={"x-api-key": a}).status == 200
    r = g.get("/private", headers={"x-api-key": b})
    assert r.status == 403
    assert error_of(r)["code"] == "AccessDenied"
    # The message names the deciding statement, never the document.
    assert error_of(r)["message"] == \
        "explicitly denied by resource policy 'route:private' statement 'NeverBob'"
    assert key_arn(b) not in r.body.decode()
    r = g.get("/private", headers={"x-api-key": c})
    assert r.status == 403 and error_of(r)["message"] == "no policy statement allows this request"
    # Routes without a policy stay open (authorization.default allow).
    assert g.get("/hello").status == 200
    assert g.metric("gatehouse_refusals_total", code="AccessDenied") == 2
    principals = [line["principal"] for line in g.access_log() if line.get("path") == "/private"]
    assert principals == [key_arn(a), key_arn(b), key_arn(c)]


@pytest.mark.deadline(60)
def test_conditions_on_source_ip_and_on_a_header(start_gatehouse):
    def modify(cfg):
        cfg["routes"] += [
            {**h.static_route("lan", "GET", "/lan", "lan"),
             "policy": document(allow("*", {"IpAddress": {"aws:SourceIp": "127.0.0.2/32"}}))},
            {**h.static_route("tenant", "GET", "/tenant", "tenant"),
             "policy": document(allow(
                 "*", {"StringEquals": {"gatehouse:Header/X-Tenant": ["acme", "globex"]}}))},
        ]
    g = start_gatehouse(modify)
    assert g.get("/lan", source="127.0.0.2").status == 200
    r = g.get("/lan", source="127.0.0.1")
    assert r.status == 403 and error_of(r)["code"] == "AccessDenied"
    assert g.get("/tenant", headers={"X-Tenant": "acme"}).status == 200
    assert g.get("/tenant", headers={"x-tenant": "globex"}).status == 200
    assert g.get("/tenant", headers={"X-Tenant": "initech"}).status == 403
    assert g.get("/tenant").status == 403


@pytest.mark.deadline(60)
def test_default_deny_refuses_routes_no_policy_applies_to(start_gatehouse):
    def modify(cfg):
        cfg["authorization"] = {"default": "deny"}
        cfg["routes"].append({**h.static_route("public", "GET", "/public", "public"),
                              "policy": document(allow("*"))})
    g = start_gatehouse(modify)
    r = g.get("/hello")
    assert r.status == 403
    assert error_of(r) == {**error_of(r), "code": "AccessDenied", "message":
                           "no policy applies to this route and authorization.default is deny"}
    assert g.get("/public").status == 200
    assert g.get("/healthz").status == 200  # built-in endpoints are not routes
    # A reload back to allow opens the route again.
    cfg = h.base_config(g.port, g.workdir / "state")
    modify(cfg)
    cfg["authorization"] = {"default": "allow"}
    g.reload(cfg)
    h.wait_until(lambda: g.get("/hello").status == 200, 10, what="reload to default allow")


@pytest.mark.deadline(60)
def test_function_resource_policy_refuses_a_route(start_gatehouse, fn_dir):  # noqa: F811
    def modify(cfg):
        cfg["functions"] = [{**native(fn_dir, "echo", "echo"), "policy": document(allow(
            "*", {"StringEquals": {"gatehouse:Source": "route:good"}}, sid="OnlyGood",
            action="lambda:InvokeFunction"))}]
        cfg["routes"] += [function_route("good", "GET", "/good", "echo"),
                          function_route("bad", "GET", "/bad", "echo")]
    g = start_gatehouse(modify)
    r = g.get("/good")
    assert r.status == 200, r.body
    # The function receives the caller's principal ARN.
    assert r.json()["principal"] == "arn:gatehouse:iam:::anonymous"
    assert r.json()["source"] == "route:good"
    r = g.get("/bad")
    assert r.status == 403, r.body
    assert error_of(r)["code"] == "AccessDenied"
    # The admin's (unrestricted) identity reaches it directly.
    r = invoke(g, "echo", {"k": 1})
    assert r.status == 200, r.body
    assert r.json()["principal"] == f"arn:gatehouse:iam::{ACCOUNT}:admin"
    assert g.metric("gatehouse_function_invocations_total", function="echo", result="refused") == 1
    assert g.metric("gatehouse_refusals_total", code="AccessDenied") == 1


@pytest.mark.deadline(60)
def test_admin_policies_refuse_actions(start_gatehouse, fn_dir):  # noqa: F811
    def modify(cfg):
        cfg["policies"] = [{"name": "ops", "document": {
            "Version": "2012-10-17",
            "Statement": [
                {"Sid": "Read", "Effect": "Allow", "Action": ["gatehouse:List*", "gatehouse:Get*"],
                 "Resource": "*"},
                {"Sid": "NoReload", "Effect": "Deny", "Action": "gatehouse:Reload",
                 "Resource": "*"},
            ]}}]
        cfg["admin"]["policies"] = ["ops"]
        cfg["functions"] = [native(fn_dir, "echo", "echo")]
    g = start_gatehouse(modify)
    assert g.get("/admin/keys", headers=h.AUTH).status == 200
    assert g.get("/admin/config", headers=h.AUTH).status == 200
    assert g.get("/metrics", headers=h.AUTH).status == 200  # gatehouse:GetMetrics
    r = g.get("/admin/reload", method="POST", headers=h.AUTH)
    assert r.status == 403
    assert error_of(r)["message"] == "explicitly denied by policy 'ops' statement 'NoReload'"
    r = g.get("/admin/keys", method="POST", headers=h.AUTH,
              body=b'{"name": "x", "plan": "none"}')
    assert r.status == 403 and error_of(r)["message"] == "no policy statement allows this request"
    # Invocation is lambda:InvokeFunction, which ops does not allow.
    r = invoke(g, "echo")
    assert r.status == 403 and error_of(r)["code"] == "AccessDenied"
    # The token is still checked first.
    assert g.get("/admin/keys").status == 401


@pytest.mark.deadline(60)
def test_invokers_shorthand_and_principal_in_the_caller_context(start_gatehouse, fn_dir):  # noqa: F811
    def base(cfg):
        cfg["plans"] = [{"name": "free"}]
        cfg["functions"] = [{**native(fn_dir, "echo", "echo"), "invokers": ["route:echo-*"]}]
        cfg["routes"] += [{**function_route("echo-keyed", "GET", "/echo", "echo"),
                           "api_key": "required"}]
    g = start_gatehouse(base, ready=False)
    key = create_key(g, "alice", "free")
    g.start()
    r = g.get("/echo", headers={"x-api-key": key})
    assert r.status == 200, r.body
    assert r.json()["principal"] == key_arn(key)
    assert r.json()["source"] == "route:echo-keyed"
