"""User pools and the JWT authorizer against the real binary (docs/identity.md).

Sign-up, sign-in, a route guarded by `auth: jwt`, refresh, global sign-out, key rotation (admin
API and CLI), the sign-in throttle, admin confirmation, and external issuers whose keys come
from a JWKS file or a loopback URL, with tokens minted here by `cryptography`.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import http.server
import json
import subprocess
import threading
import time
from pathlib import Path

import pytest
import requests
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, padding, rsa

import gh_helpers as h

PASSWORD = "correct-horse-battery-1"


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64json(obj) -> str:
    return b64(json.dumps(obj, separators=(",", ":")).encode())


def claims_of(token: str) -> dict:
    payload = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


def header_of(token: str) -> dict:
    head = token.split(".")[0]
    return json.loads(base64.urlsafe_b64decode(head + "=" * (-len(head) % 4)))


class Issuer:
    """An external OIDC issuer: an Ed25519 and an RSA key, a JWKS, and tokens signed with them."""

    def __init__(self, iss="https://idp.test", prefix="k"):
        self.iss = iss
        self.ed = ed25519.Ed25519PrivateKey.generate()
        self.rsa = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.ed_kid = prefix + "-ed"
        self.rsa_kid = prefix + "-rsa"

    def jwks(self) -> dict:
        x = self.ed.public_key().public_bytes(serialization.Encoding.Raw,
                                              serialization.PublicFormat.Raw)
        nums = self.rsa.public_key().public_numbers()
        n = nums.n.to_bytes((nums.n.bit_length() + 7) // 8, "big")
        e = nums.e.to_bytes((nums.e.bit_length() + 7) // 8, "big")
        return {"keys": [
            {"kty": "OKP", "crv": "Ed25519", "x": b64(x), "kid": self.ed_kid, "use": "sig"},
            {"kty": "RSA", "n": b64(n), "e": b64(e), "kid": self.rsa_kid, "alg": "RS256"},
            # Keys the gateway cannot use are skipped, not fatal.
            {"kty": "EC", "crv": "P-256", "kid": "ec", "x": "AA", "y": "AA"},
        ]}

    def claims(self, **over) -> dict:
        now = int(time.time())
        c = {"iss": self.iss, "sub": "ext-user-1", "aud": "api", "iat": now, "exp": now + 300,
             "scope": "read write", "email": "x@idp.test"}
        c.update(over)
        return {k: v for k, v in c.items() if v is not None}

    def token(self, alg="EdDSA", kid=None, **over) -> str:
        header = {"alg": alg, "kid": kid or (self.ed_kid if alg == "EdDSA" else self.rsa_kid),
                  "typ": "JWT"}
        signing_input = b64json(header) + "." + b64json(self.claims(**over))
        if alg == "EdDSA":
            sig = self.ed.sign(signing_input.encode())
        else:
            sig = self.rsa.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
        return signing_input + "." + b64(sig)


def pool(**over) -> dict:
    p = {
        "name": "main",
        "clients": ["web", "cli"],
        "password_policy": {"min_length": 8},
        # Cheap hashes: these tests are about behaviour, not cost.
        "argon2": {"ops_limit": 1, "memory": "8KiB"},
        "tokens": {"access": "10m", "id": "10m", "refresh": "2h"},
        "sign_in_throttle": {"free_attempts": 2, "base_delay": "2s", "max_delay": "8s",
                             "reset_after": "1m"},
    }
    p.update(over)
    return p


def jwt_route(name: str, path: str, jwt: dict) -> dict:
    r = h.static_route(name, "GET", path, '{"ok":true}')
    r["auth"] = "jwt"
    r["jwt"] = jwt
    return r


def with_pool(cfg, **over):
    cfg["user_pools"] = [pool(**over)]
    cfg["routes"].append(jwt_route("me", "/me", {"jwks": "pool main", "audience": ["web"]}))


def post(g, path, body=None, headers=None):
    return requests.post(g.url + path, json=body, headers=headers or {}, timeout=10)


def sign_up_and_in(g, user="alice", client="web") -> dict:
    r = post(g, "/auth/main/signup", {"username": user, "password": PASSWORD,
                                      "attributes": {"email": user + "@example.com"}})
    assert r.status_code == 200, r.text
    assert r.json()["confirmed"] is True
    r = post(g, "/auth/main/signin", {"username": user, "password": PASSWORD, "client_id": client})
    assert r.status_code == 200, r.text
    return r.json()


def call(g, path, token=None, raw=None):
    headers = {}
    if token is not None:
        headers["Authorization"] = "Bearer " + token
    if raw is not None:
        headers["Authorization"] = raw
    return requests.get(g.url + path, headers=headers, timeout=5)


@pytest.mark.deadline(60)
def test_route_guarded_by_a_user_pool(start_gatehouse):
    g = start_gatehouse(with_pool)
    tokens = sign_up_and_in(g)
    assert tokens["token_type"] == "Bearer" and tokens["expires_in"] == 600
    access = claims_of(tokens["access_token"])
    assert access["token_use"] == "access" and access["client_id"] == "web"
    assert access["iss"] == f"http://127.0.0.1:{g.port}/auth/main"
    assert access["exp"] - access["iat"] == 600
    ident = claims_of(tokens["id_token"])
    assert ident["aud"] == "web" and ident["email"] == "alice@example.com"
    assert header_of(tokens["access_token"])["alg"] == "EdDSA"

    r = call(g, "/me", tokens["access_token"])
    assert r.status_code == 200, r.text
    # Without a token: 401 and a Bearer challenge.
    r = call(g, "/me")
    assert r.status_code == 401
    assert r.json()["error"]["code"] == "Unauthenticated"
    assert r.headers["WWW-Authenticate"].startswith("Bearer")
    # A bad token: 401 invalid_token.
    for bad in ["garbage", tokens["access_token"][:-4] + "AAAA", "a.b.c"]:
        r = call(g, "/me", bad)
        assert r.status_code == 401, bad
        assert r.json()["error"]["code"] == "InvalidToken"
        assert 'error="invalid_token"' in r.headers["WWW-Authenticate"]
    r = call(g, "/me", raw="Basic " + tokens["access_token"])
    assert r.status_code == 401
    # A valid token the route does not accept: an ID token (token_use), another client: 403.
    r = call(g, "/me", tokens["id_token"])
    assert r.status_code == 403
    assert r.json()["error"]["code"] == "TokenNotAccepted"
    other = post(g, "/auth/main/signin",
                 {"username": "alice", "password": PASSWORD, "client_id": "cli"}).json()
    assert call(g, "/me", other["access_token"]).status_code == 403

    # The principal is the user's ARN (in the access log).
    def logged():
        return [e for e in g.access_log() if e["path"] == "/me" and e["status"] == 200]
    entries = h.wait_until(logged, 5, what="the /me access log line")
    assert entries[0]["principal"] == (
        f"arn:gatehouse:cognito-idp:us-east-1:000000000000:userpool/main/user/{access['sub']}")

    # The JWKS and discovery document.
    jwks = requests.get(g.url + "/auth/main/.well-known/jwks.json", timeout=5).json()
    assert [k["kid"] for k in jwks["keys"]] == [header_of(tokens["access_token"])["kid"]]
    assert all("d" not in k for k in jwks["keys"])
    oc = requests.get(g.url + "/auth/main/.well-known/openid-configuration", timeout=5).json()
    assert oc["jwks_uri"] == access["iss"] + "/.well-known/jwks.json"

    # Endpoint refusals.
    assert post(g, "/auth/main/signup", {"username": "alice", "password": PASSWORD}).status_code == 409
    r = post(g, "/auth/main/signup", {"username": "bob", "password": "short"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "InvalidPassword"
    r = requests.post(g.url + "/auth/main/signin", data=b"{not json", timeout=5)
    assert r.status_code == 400
    assert post(g, "/auth/nope/signin", {}).status_code == 404
    assert requests.get(g.url + "/auth/main/signin", timeout=5).status_code == 405
    r = requests.post(g.url + "/auth/main/signup", data=b"x" * 20000, timeout=5)
    assert r.status_code == 413
    r = post(g, "/auth/main/signin", {"username": "alice", "password": PASSWORD, "client_id": "app"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "InvalidClient"


@pytest.mark.deadline(60)
def test_refresh_and_global_sign_out(start_gatehouse):
    g = start_gatehouse(with_pool)
    tokens = sign_up_and_in(g)
    r = post(g, "/auth/main/refresh", {"refresh_token": tokens["refresh_token"]})
    assert r.status_code == 200, r.text
    fresh = r.json()
    assert "refresh_token" not in fresh
    assert call(g, "/me", fresh["access_token"]).status_code == 200

    # Sign-out needs the access token; then every refresh token of the user stops working.
    assert post(g, "/auth/main/signout").status_code == 401
    r = post(g, "/auth/main/signout", headers={"Authorization": "Bearer " + tokens["id_token"]})
    assert r.status_code == 401
    r = post(g, "/auth/main/signout",
             headers={"Authorization": "Bearer " + tokens["access_token"]})
    assert r.status_code == 200, r.text
    r = post(g, "/auth/main/refresh", {"refresh_token": tokens["refresh_token"]})
    assert r.status_code == 401
    assert r.json()["error"]["code"] == "NotAuthorized"
    # Garbage refresh tokens.
    for junk in ["", "x", "a.b.c", "0" * 32 + "." + "0" * 64 + ".YWxpY2U"]:
        assert post(g, "/auth/main/refresh", {"refresh_token": junk}).status_code == 401
    assert post(g, "/auth/main/refresh", {"refresh_token": 5}).status_code == 400
    # Signing in again works.
    again = post(g, "/auth/main/signin",
                 {"username": "alice", "password": PASSWORD, "client_id": "web"}).json()
    assert post(g, "/auth/main/refresh", {"refresh_token": again["refresh_token"]}).status_code == 200
    # Admin sign-out revokes it too.
    r = requests.post(g.url + "/admin/user-pools/main/users/alice/signout", headers=h.AUTH,
                      timeout=5)
    assert r.status_code == 200, r.text
    assert post(g, "/auth/main/refresh", {"refresh_token": again["refresh_token"]}).status_code == 401


@pytest.mark.deadline(90)
def test_key_rotation_keeps_old_tokens_valid(start_gatehouse, gatehouse_bin):
    g = start_gatehouse(with_pool)
    old = sign_up_and_in(g)
    old_kid = header_of(old["access_token"])["kid"]
    assert requests.post(g.url + "/admin/user-pools/main/keys/rotate", timeout=5).status_code == 401
    r = requests.post(g.url + "/admin/user-pools/main/keys/rotate", headers=h.AUTH, timeout=10)
    assert r.status_code == 200, r.text
    new_kid = r.json()["kid"]
    assert new_kid != old_kid
    assert call(g, "/me", old["access_token"]).status_code == 200
    new = post(g, "/auth/main/signin",
               {"username": "alice", "password": PASSWORD, "client_id": "web"}).json()
    assert header_of(new["access_token"])["kid"] == new_kid
    assert call(g, "/me", new["access_token"]).status_code == 200
    kids = {k["kid"] for k in requests.get(g.url + "/auth/main/.well-known/jwks.json",
                                           timeout=5).json()["keys"]}
    assert kids == {old_kid, new_kid}
    keys = requests.get(g.url + "/admin/user-pools/main/keys", headers=h.AUTH, timeout=5).json()
    assert [k["active"] for k in keys["keys"]] == [False, True]

    # A rotation by the CLI (another process) reaches the running server through the store.
    out = subprocess.run([gatehouse_bin, "users", "rotate-key", "--pool", "main", "--config",
                          str(g.config_path)], cwd=g.workdir, capture_output=True, text=True,
                         timeout=30)
    assert out.returncode == 0, out.stderr
    cli_kid = out.stdout.split("\t")[0]

    def rotated():
        t = post(g, "/auth/main/signin",
                 {"username": "alice", "password": PASSWORD, "client_id": "web"}).json()
        return header_of(t["access_token"])["kid"] == cli_kid and t
    latest = h.wait_until(rotated, 10, interval=0.3, what="the CLI's key in use")
    assert call(g, "/me", latest["access_token"]).status_code == 200
    assert call(g, "/me", old["access_token"]).status_code == 200


@pytest.mark.deadline(90)
def test_repeated_bad_passwords_are_slowed_down(start_gatehouse):
    g = start_gatehouse(with_pool)
    sign_up_and_in(g)

    def attempt(password):
        return post(g, "/auth/main/signin",
                    {"username": "alice", "password": password, "client_id": "web"})

    # free_attempts: 2, base_delay: 2s, doubling.
    for i in range(3):
        r = attempt(f"wrong-password-{i}")
        assert r.status_code == 401, r.text
        assert r.json()["error"]["code"] == "NotAuthorized"
    r = attempt(PASSWORD)  # locked out: even the right password is refused unchecked
    assert r.status_code == 429
    assert r.json()["error"]["code"] == "TooManyFailedAttempts"
    wait = int(r.headers["Retry-After"])
    assert 1 <= wait <= 2
    time.sleep(wait + 0.1)
    r = attempt("wrong-password-again")  # a fourth failure: 4 s
    assert r.status_code == 401
    r = attempt(PASSWORD)
    assert r.status_code == 429
    assert 3 <= int(r.headers["Retry-After"]) <= 4
    time.sleep(int(r.headers["Retry-After"]) + 0.1)
    assert attempt(PASSWORD).status_code == 200
    assert g.metric("gatehouse_identity_requests_total", op="signin", result="throttled") >= 2
    assert g.metric("gatehouse_identity_requests_total", op="signin", result="failed") >= 4


@pytest.mark.deadline(60)
def test_admin_confirmation(start_gatehouse, gatehouse_bin):
    g = start_gatehouse(lambda cfg: with_pool(cfg, confirmation="admin"))
    r = post(g, "/auth/main/signup", {"username": "carol", "password": PASSWORD})
    assert r.status_code == 200 and r.json()["confirmed"] is False
    creds = {"username": "carol", "password": PASSWORD, "client_id": "web"}
    r = post(g, "/auth/main/signin", creds)
    assert r.status_code == 403 and r.json()["error"]["code"] == "UserNotConfirmed"
    r = requests.post(g.url + "/admin/user-pools/main/users/carol/confirm", headers=h.AUTH,
                      timeout=5)
    assert r.status_code == 200 and r.json()["confirmed"] is True
    assert post(g, "/auth/main/signin", creds).status_code == 200
    # The CLI confirms too.
    assert post(g, "/auth/main/signup", {"username": "dave", "password": PASSWORD}).status_code == 200
    out = subprocess.run([gatehouse_bin, "users", "confirm", "dave", "--pool", "main", "--config",
                          str(g.config_path)], cwd=g.workdir, capture_output=True, text=True,
                         timeout=30)
    assert out.returncode == 0, out.stderr
    assert post(g, "/auth/main/signin", dict(creds, username="dave")).status_code == 200
    users = requests.get(g.url + "/admin/user-pools/main/users", headers=h.AUTH, timeout=5).json()
    assert sorted(u["username"] for u in users["users"]) == ["carol", "dave"]
    r = requests.post(g.url + "/admin/user-pools/main/users/nobody/confirm", headers=h.AUTH,
                      timeout=5)
    assert r.status_code == 404


def external_route(jwks: str, **over) -> dict:
    j = {"jwks": jwks, "issuer": "https://idp.test", "audience": ["api"]}
    j.update(over)
    return jwt_route("ext", "/ext", j)


@pytest.mark.deadline(60)
def test_external_issuer_with_a_jwks_file(start_gatehouse, tmp_path):
    idp = Issuer()
    keys = tmp_path / "jwks.json"
    keys.write_text(json.dumps(idp.jwks()))

    def cfg(c):
        c["identity"] = {"jwks_refresh": "1s"}
        c["routes"].append(external_route(f"file {keys}"))
        c["routes"].append(jwt_route("scoped", "/scoped", {
            "jwks": f"file {keys}", "issuer": "https://idp.test", "audience": ["api"],
            "token_use": "any", "scopes": ["admin"], "algorithms": ["RS256"]}))
    g = start_gatehouse(cfg)
    for alg in ("EdDSA", "RS256"):
        assert call(g, "/ext", idp.token(alg)).status_code == 200, alg
    # The attacks and mistakes of the table.
    now = int(time.time())
    cases = {
        "expired": idp.token(exp=now - 3600),
        "not yet valid": idp.token(nbf=now + 3600),
        "wrong issuer": idp.token(iss="https://evil.test"),
        "unknown kid": idp.token(kid="nope"),
        "alg none": b64json({"alg": "none", "kid": idp.ed_kid}) + "." + b64json(idp.claims()) + ".",
        "tampered": (lambda t: t.split(".")[0] + "." + b64json(idp.claims(sub="admin")) + "."
                     + t.split(".")[2])(idp.token()),
    }
    # HS256 signed with the public key (as JWK JSON and as raw bytes).
    pub = json.dumps(idp.jwks()["keys"][0]).encode()
    raw = idp.ed.public_key().public_bytes(serialization.Encoding.Raw,
                                           serialization.PublicFormat.Raw)
    for name, secret in (("hs256 jwk", pub), ("hs256 raw", raw)):
        si = b64json({"alg": "HS256", "kid": idp.ed_kid}) + "." + b64json(idp.claims())
        cases[name] = si + "." + b64(hmac.new(secret, si.encode(), hashlib.sha256).digest())
    for name, token in cases.items():
        r = call(g, "/ext", token)
        assert r.status_code == 401, name
        assert r.json()["error"]["code"] == "InvalidToken", name
    r = call(g, "/ext", idp.token(aud="other"))
    assert r.status_code == 403 and r.json()["error"]["code"] == "TokenNotAccepted"
    # The same token read through another route's rules: RS256 only, and a scope.
    assert call(g, "/scoped", idp.token("EdDSA", scope="admin")).status_code == 401
    assert call(g, "/scoped", idp.token("RS256")).status_code == 403
    assert call(g, "/scoped", idp.token("RS256", scope="read admin")).status_code == 200

    # The issuer rotates: the file gets a new key, which is picked up without a restart.
    idp2 = Issuer(prefix="k2")
    doc = idp.jwks()
    doc["keys"] += idp2.jwks()["keys"][:1]
    keys.write_text(json.dumps(doc))
    h.wait_until(lambda: call(g, "/ext", idp2.token()).status_code == 200, 10, interval=0.2,
                 what="the new key accepted")
    assert call(g, "/ext", idp.token()).status_code == 200

    # A key set that stops parsing keeps the last good one.
    keys.write_text("{not json")
    time.sleep(2.5)
    assert call(g, "/ext", idp2.token()).status_code == 200
    assert g.metric("gatehouse_jwks_loads_total", result="failed") >= 1


@pytest.mark.deadline(60)
def test_jwks_file_problems_refuse_the_config(start_gatehouse, tmp_path, gatehouse_bin):
    bad = tmp_path / "bad.json"
    bad.write_text('{"keys":[{"kty":"OKP","crv":"Ed25519","kid":"a","x":"AAAA"}]}')
    for path in (tmp_path / "missing.json", bad):
        g = start_gatehouse(lambda c, p=path: c["routes"].append(external_route(f"file {p}")),
                            ready=False)
        out = subprocess.run([gatehouse_bin, "serve", "--config", str(g.config_path)],
                             cwd=g.workdir, capture_output=True, text=True, timeout=30)
        assert out.returncode != 0
        assert "gatehouse.yaml:" in out.stderr and "routes[2].jwt.jwks" in out.stderr, out.stderr
        assert str(path) in out.stderr or "32 bytes" in out.stderr, out.stderr
    # validate names the line of a refused algorithm.
    g = start_gatehouse(lambda c: c["routes"].append(
        external_route("file /dev/null", algorithms=["HS256"])), ready=False)
    out = subprocess.run([gatehouse_bin, "validate", str(g.config_path)], capture_output=True,
                         text=True, timeout=30)
    assert out.returncode == 1
    assert "routes[2].jwt.algorithms[0]: 'HS256' is refused" in out.stderr


class JwksServer:
    """Serves a JWKS document on loopback; `doc` can be replaced while it runs."""

    def __init__(self, doc):
        self.doc = doc
        self.hits = 0
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                outer.hits += 1
                body = json.dumps(outer.doc).encode()
                self.send_response(200 if self.path == "/.well-known/jwks.json" else 404)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.mark.deadline(60)
def test_external_issuer_with_a_jwks_url(start_gatehouse):
    idp = Issuer()
    srv = JwksServer(idp.jwks())
    try:
        g = start_gatehouse(lambda c: c["routes"].append(
            external_route(f"url http://127.0.0.1:{srv.port}/.well-known/jwks.json")))
        h.wait_until(lambda: call(g, "/ext", idp.token()).status_code == 200, 10, interval=0.1,
                     what="the URL key set loaded")
        assert call(g, "/ext", idp.token("RS256")).status_code == 200
        assert call(g, "/ext", idp.token(iss="https://evil.test")).status_code == 401
        # A new key at the issuer: an unknown kid triggers an early re-read (default refresh 5m).
        idp2 = Issuer(prefix="k2")
        srv.doc = {"keys": idp.jwks()["keys"] + idp2.jwks()["keys"][:1]}
        hits = srv.hits
        h.wait_until(lambda: call(g, "/ext", idp2.token()).status_code == 200, 20, interval=0.5,
                     what="the rotated key accepted")
        assert srv.hits > hits
    finally:
        srv.stop()


@pytest.mark.deadline(60)
def test_function_behind_a_jwt_route_gets_the_claims(start_gatehouse, gatehouse_bin):
    fn_dir = Path(gatehouse_bin).resolve().parents[2] / "tests" / "functions"
    if not (fn_dir / "fn_echo").exists():
        pytest.fail(f"native test functions missing in {fn_dir}: build the fn_* targets")

    def cfg(c):
        with_pool(c)
        c["functions"] = [{"name": "echo", "runtime": "lambda",
                           "command": [str(fn_dir / "fn_echo")], "timeout_s": 5}]
        route = {"name": "whoami", "method": "GET", "path": "/whoami", "auth": "jwt",
                 "jwt": {"jwks": "pool main"}, "target": {"function": "echo"}}
        c["routes"].append(route)
    g = start_gatehouse(cfg)
    tokens = sign_up_and_in(g)
    sub = claims_of(tokens["access_token"])["sub"]
    r = call(g, "/whoami", tokens["access_token"])
    assert r.status_code == 200, r.text
    ev = r.json()["echo"]
    jwt = ev["requestContext"]["authorizer"]["jwt"]
    assert jwt["claims"]["sub"] == sub
    assert jwt["claims"]["username"] == "alice"
    assert jwt["scopes"] == ["openid"]
    assert ev["requestContext"]["gatehouse"]["principal"] == (
        f"arn:gatehouse:cognito-idp:us-east-1:000000000000:userpool/main/user/{sub}")
    assert call(g, "/whoami").status_code == 401


@pytest.mark.deadline(60)
def test_route_policy_decides_on_the_tokens_claims(start_gatehouse, tmp_path):
    """A JWT route plus a resource policy that uses claims (docs/policy.md, "Routes"): an external
    issuer's scope as jwt:scope, the caller's own sub as a policy variable in the Resource, and a
    user pool's cognito-identity.amazonaws.com:sub and aws:username."""
    idp = Issuer()
    keys = tmp_path / "jwks.json"
    keys.write_text(json.dumps(idp.jwks()))
    docs_policy = {"Version": "2012-10-17", "Statement": [
        {"Sid": "OwnDocsWithScope", "Effect": "Allow", "Principal": "*",
         "Action": "execute-api:Invoke",
         "Resource": "arn:gatehouse:execute-api:*:*:docs/*/GET/docs/${jwt:sub}",
         "Condition": {"ForAnyValue:StringEquals": {"jwt:scope": "docs:read"}}},
        {"Sid": "NoSuspended", "Effect": "Deny", "Principal": "*",
         "Action": "execute-api:Invoke", "Resource": "*",
         "Condition": {"StringEquals": {"jwt:status": "suspended"}}},
    ]}
    pool_policy = {"Version": "2012-10-17", "Statement": [
        {"Sid": "OnlyAlice", "Effect": "Allow", "Principal": "*",
         "Action": "execute-api:Invoke", "Resource": "*",
         "Condition": {"StringEquals": {"aws:username": "main/alice"},
                       "StringLike": {"cognito-identity.amazonaws.com:sub": "?*"}}},
    ]}

    def cfg(c):
        with_pool(c)
        r = jwt_route("docs", "/docs/{owner}", {"jwks": f"file {keys}", "issuer": "https://idp.test",
                                                "audience": ["api"]})
        r["policy"] = docs_policy
        c["routes"].append(r)
        c["routes"][-2]["policy"] = pool_policy  # the pool's /me route
    g = start_gatehouse(cfg)

    def get(path, token):
        return call(g, path, token)
    ok = idp.token(sub="u-1", scope="docs:read other")
    assert get("/docs/u-1", ok).status_code == 200
    # Another owner's document: the variable resolves to u-1, the resource says u-2.
    r = get("/docs/u-2", ok)
    assert r.status_code == 403, r.text
    assert r.json()["error"]["code"] == "AccessDenied"
    assert r.json()["error"]["message"] == "no policy statement allows this request"
    # The scope is missing.
    assert get("/docs/u-1", idp.token(sub="u-1", scope="read")).status_code == 403
    # A claim that an explicit Deny names.
    r = get("/docs/u-1", idp.token(sub="u-1", scope="docs:read", status="suspended"))
    assert r.status_code == 403
    assert "statement 'NoSuspended'" in r.json()["error"]["message"]
    # Claims do not leak from one request into the next on the same worker and connection.
    with requests.Session() as s:
        for _ in range(3):
            bad = s.get(g.url + "/docs/u-1", timeout=5, headers={
                "Authorization": "Bearer " + idp.token(sub="u-1", scope="docs:read",
                                                       status="suspended")})
            good = s.get(g.url + "/docs/u-1", timeout=5,
                         headers={"Authorization": "Bearer " + ok})
            assert (bad.status_code, good.status_code) == (403, 200)

    # The user pool route: alice is allowed by her aws:username, bob is not.
    alice = sign_up_and_in(g, "alice")
    bob = sign_up_and_in(g, "bob")
    assert get("/me", alice["access_token"]).status_code == 200
    r = get("/me", bob["access_token"])
    assert r.status_code == 403 and r.json()["error"]["code"] == "AccessDenied"
