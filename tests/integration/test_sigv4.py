"""SigV4 against the real binary with real AWS clients (docs/identity.md, "SigV4 access keys"):
botocore's signers (header, presigned URL) and awscli (`aws s3api ... --endpoint-url`) call
routes with `auth: sigv4`; wrong secrets, skewed clocks and revoked keys are refused with AWS's
error codes; aws-chunked uploads (signed chunks, and botocore's unsigned payload with a CRC32
trailer) reach the target decoded; a route's resource policy tells two
roles apart; the admin API issues and revokes keys.

Keys come from `gatehouse credentials create --role NAME` (the CLI, against the server's store and
KEK file) or POST /admin/credentials; a running server sees them within about a second."""

import contextlib
import datetime
import hashlib
import hmac
import io
import json
import os
import subprocess
from unittest import mock

import botocore.auth
import botocore.awsrequest
import botocore.config
import botocore.credentials
import botocore.httpchecksum as httpchecksum
import boto3
import pytest
import requests

import gh_helpers as h

ACCOUNT = "000000000000"
REGION = "us-east-1"

LIST_BUCKETS_XML = (
    '<?xml version="1.0" encoding="UTF-8"?>'
    '<ListAllMyBucketsResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">'
    "<Owner><ID>gatehouse</ID><DisplayName>gatehouse</DisplayName></Owner>"
    "<Buckets><Bucket><Name>signed-bucket</Name>"
    "<CreationDate>2026-01-01T00:00:00.000Z</CreationDate></Bucket></Buckets>"
    "</ListAllMyBucketsResult>")


def role_arn(name: str) -> str:
    return f"arn:gatehouse:iam::{ACCOUNT}:role/{name}"


def sigv4_config(upstream_port: int):
    def modify(cfg):
        cfg["roles"] = [{"name": "reader"}, {"name": "writer"}]
        root = h.static_route("root", "GET", "/", LIST_BUCKETS_XML)
        root["auth"] = "sigv4"
        root["target"]["static"]["content_type"] = "application/xml"
        echo = h.http_route("echo", ["GET", "POST", "PUT"], "/echo/{rest+}", "up")
        echo["auth"] = "sigv4"
        private = h.static_route("private", "GET", "/private", "private\n")
        private["auth"] = "sigv4"
        private["policy"] = {"Version": "2012-10-17", "Statement": [
            {"Sid": "ReaderOnly", "Effect": "Allow", "Principal": {"AWS": role_arn("reader")},
             "Action": "execute-api:Invoke", "Resource": "*"}]}
        cfg["upstreams"] = [{"name": "up", "url": f"http://127.0.0.1:{upstream_port}"}]
        cfg["routes"] += [root, echo, private]
    return modify


def create_credential(g, role: str):
    r = subprocess.run([g.binary, "credentials", "create", "--role", role,
                        "--config", str(g.config_path)], capture_output=True, text=True, timeout=20)
    assert r.returncode == 0, r.stderr
    access_key, secret = r.stdout.split()
    assert "cannot be shown again" in r.stderr and secret not in r.stderr
    return access_key, secret


@contextlib.contextmanager
def client_clock(now):
    """botocore reads the time from datetime.datetime.utcnow(): `now` (unless None) replaces it,
    a skewed client clock."""
    if now is None:
        yield
        return
    fake = mock.MagicMock(wraps=datetime)
    fake.datetime.utcnow.return_value = now
    with mock.patch.object(botocore.auth, "datetime", fake):
        yield


def signed(method: str, url: str, key, data=None, service="execute-api", headers=None,
           now=None) -> requests.Response:
    """Signs with botocore's SigV4Auth (S3SigV4Auth for s3) and sends with requests."""
    creds = botocore.credentials.Credentials(*key)
    req = botocore.awsrequest.AWSRequest(method=method, url=url, data=data, headers=headers or {})
    signer = (botocore.auth.S3SigV4Auth if service == "s3" else botocore.auth.SigV4Auth)(
        creds, service, REGION)
    with client_clock(now):
        signer.add_auth(req)
    p = req.prepare()
    return requests.request(method, p.url, headers=dict(p.headers), data=data, timeout=10)


def error_code(r) -> str:
    return json.loads(r.content)["error"]["code"]


def wait_accepted(g, key):
    """The server reloads keys within about a second of a change."""
    h.wait_until(lambda: signed("GET", g.url + "/", key).status_code == 200, 5,
                 what="the new access key to be accepted")


@pytest.fixture
def sigv4_gatehouse(start_gatehouse, upstream):
    return start_gatehouse(sigv4_config(upstream.port))


@pytest.mark.deadline(60)
def test_botocore_signed_requests_reach_the_route_as_the_role(sigv4_gatehouse, upstream):
    g = sigv4_gatehouse
    key = create_credential(g, "writer")
    wait_accepted(g, key)

    r = signed("GET", g.url + "/", key)
    assert r.status_code == 200 and "signed-bucket" in r.text
    # A body without x-amz-content-sha256 (SigV4Auth): the signature covers sha256(body).
    r = signed("POST", g.url + "/echo/a?x=1&y=%20z", key, data=b'{"hello": "world"}')
    assert r.status_code == 200, r.text
    assert upstream.seen[-1].body == b'{"hello": "world"}'
    # S3's signer declares the payload hash in x-amz-content-sha256.
    r = signed("PUT", g.url + "/echo/bucket/object.txt", key, data=b"object body", service="s3")
    assert r.status_code == 200, r.text
    assert upstream.seen[-1].body == b"object body"
    assert upstream.seen[-1].headers["x-amz-content-sha256"] == \
        hashlib.sha256(b"object body").hexdigest()

    principals = {e["principal"] for e in g.access_log() if e.get("route") in ("root", "echo")}
    assert role_arn("writer") in principals
    # Routes without auth: sigv4 are untouched.
    assert g.get("/hello").status == 200


@pytest.mark.deadline(90)
def test_awscli_calls_a_sigv4_route(sigv4_gatehouse, upstream, tmp_path):
    g = sigv4_gatehouse
    key = create_credential(g, "reader")
    wait_accepted(g, key)
    env = {**os.environ, "AWS_ACCESS_KEY_ID": key[0], "AWS_SECRET_ACCESS_KEY": key[1],
           "AWS_DEFAULT_REGION": REGION, "AWS_CONFIG_FILE": str(tmp_path / "none"),
           "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none"), "AWS_PAGER": "",
           "HOME": str(tmp_path)}

    def aws(*args):
        return subprocess.run(["aws", *args, "--endpoint-url", g.url, "--output", "json"],
                              capture_output=True, text=True, timeout=60, env=env)

    r = aws("s3api", "list-buckets")
    assert r.returncode == 0, r.stderr
    assert [b["Name"] for b in json.loads(r.stdout)["Buckets"]] == ["signed-bucket"]
    # The same with a wrong secret: the server refuses it and awscli reports the 403.
    env["AWS_SECRET_ACCESS_KEY"] = key[1][:-1] + ("A" if key[1][-1] != "A" else "B")
    r = aws("s3api", "list-buckets")
    assert r.returncode != 0
    assert "403" in r.stderr or "SignatureDoesNotMatch" in r.stderr or "Forbidden" in r.stderr


@pytest.mark.deadline(60)
def test_presigned_urls_from_botocore(sigv4_gatehouse):
    g = sigv4_gatehouse
    key = create_credential(g, "reader")
    wait_accepted(g, key)
    s3 = boto3.client("s3", endpoint_url=g.url, aws_access_key_id=key[0],
                      aws_secret_access_key=key[1], region_name=REGION,
                      config=botocore.config.Config(signature_version="s3v4"))
    url = s3.generate_presigned_url("list_buckets", ExpiresIn=300)
    assert "X-Amz-Signature=" in url
    r = requests.get(url, timeout=10)
    assert r.status_code == 200 and "signed-bucket" in r.text
    # Tampering with any signed part of the URL breaks it.
    r = requests.get(url.replace("X-Amz-Expires=300", "X-Amz-Expires=301"), timeout=10)
    assert r.status_code == 403 and error_code(r) == "SignatureDoesNotMatch"
    # A presigned URL of another service covers the (empty) payload hash, not UNSIGNED-PAYLOAD.
    q = botocore.auth.SigV4QueryAuth(botocore.credentials.Credentials(*key), "execute-api",
                                     REGION, expires=60)
    req = botocore.awsrequest.AWSRequest(method="GET", url=g.url + "/private")
    q.add_auth(req)
    r = requests.get(req.prepare().url, timeout=10)
    assert r.status_code == 200, r.text
    # An expired presigned URL: signed 20 minutes ago for 60 seconds.
    req = botocore.awsrequest.AWSRequest(method="GET", url=g.url + "/")
    with client_clock(datetime.datetime.utcnow() - datetime.timedelta(minutes=20)):
        q.add_auth(req)
    r = requests.get(req.prepare().url, timeout=10)
    assert r.status_code == 403 and error_code(r) == "AccessDenied"
    assert "expired" in r.text


@pytest.mark.deadline(60)
def test_refusals_wrong_secret_skew_unknown_key_and_unsigned(sigv4_gatehouse):
    g = sigv4_gatehouse
    key = create_credential(g, "reader")
    wait_accepted(g, key)

    r = signed("GET", g.url + "/", (key[0], key[1][::-1]))
    assert r.status_code == 403 and error_code(r) == "SignatureDoesNotMatch"
    assert key[1] not in r.text and key[1][::-1] not in r.text
    for minutes in (-20, 20):
        now = datetime.datetime.utcnow() + datetime.timedelta(minutes=minutes)
        r = signed("GET", g.url + "/", key, now=now)
        assert r.status_code == 403 and error_code(r) == "RequestTimeTooSkewed", r.text
    # Within 15 minutes is accepted.
    r = signed("GET", g.url + "/", key, now=datetime.datetime.utcnow() - datetime.timedelta(minutes=14))
    assert r.status_code == 200
    r = signed("GET", g.url + "/", ("GHIAAAAAAAAAAAAAAAAA", key[1]))
    assert r.status_code == 403 and error_code(r) == "InvalidAccessKeyId"
    r = g.get("/")
    assert r.status == 403 and r.json()["error"]["code"] == "MissingAuthenticationToken"
    r = g.get("/", headers={"Authorization": "AWS4-HMAC-SHA256 Credential=nonsense"})
    assert r.status == 400 and r.json()["error"]["code"] == "AuthorizationHeaderMalformed"
    # A body that differs from the one signed.
    creds = botocore.credentials.Credentials(*key)
    req = botocore.awsrequest.AWSRequest(method="PUT", url=g.url + "/echo/x", data=b"signed")
    botocore.auth.S3SigV4Auth(creds, "s3", REGION).add_auth(req)
    p = req.prepare()
    r = requests.put(p.url, headers=dict(p.headers), data=b"forged", timeout=10)
    assert r.status_code == 400 and error_code(r) == "XAmzContentSHA256Mismatch"


@pytest.mark.deadline(60)
def test_revoked_key_is_refused(sigv4_gatehouse):
    g = sigv4_gatehouse
    key = create_credential(g, "reader")
    other = create_credential(g, "reader")
    wait_accepted(g, key)
    r = subprocess.run([g.binary, "credentials", "revoke", key[0], "--config", str(g.config_path)],
                       capture_output=True, text=True, timeout=20)
    assert r.returncode == 0 and "revoked" in r.stdout, r.stderr
    h.wait_until(lambda: signed("GET", g.url + "/", key).status_code == 403, 5,
                 what="the revoked key to be refused")
    r = signed("GET", g.url + "/", key)
    assert error_code(r) == "InvalidAccessKeyId"
    assert signed("GET", g.url + "/", other).status_code == 200
    listing = subprocess.run([g.binary, "credentials", "list", "--config", str(g.config_path)],
                             capture_output=True, text=True, timeout=20)
    assert listing.returncode == 0
    rows = {line.split("\t")[0]: line.split("\t") for line in listing.stdout.splitlines()[1:]}
    assert rows[key[0]][1:] == [role_arn("reader"), "revoked"]
    assert rows[other[0]][2] == "active"
    assert key[1] not in listing.stdout and other[1] not in listing.stdout
    # A role that is not in the config gets no key.
    r = subprocess.run([g.binary, "credentials", "create", "--role", "nobody", "--config",
                        str(g.config_path)], capture_output=True, text=True, timeout=20)
    assert r.returncode == 1 and "no role 'nobody'" in r.stderr


@pytest.mark.deadline(60)
def test_route_policy_allows_one_role_and_refuses_another(sigv4_gatehouse):
    g = sigv4_gatehouse
    reader = create_credential(g, "reader")
    writer = create_credential(g, "writer")
    wait_accepted(g, writer)
    r = signed("GET", g.url + "/private", reader)
    assert r.status_code == 200 and r.text == "private\n"
    r = signed("GET", g.url + "/private", writer)
    assert r.status_code == 403 and error_code(r) == "AccessDenied"
    assert json.loads(r.content)["error"]["message"] == "no policy statement allows this request"


def streaming_body(key, url_path: str, host: str, payload: bytes, chunk: int, tamper=False):
    """An aws-chunked STREAMING-AWS4-HMAC-SHA256-PAYLOAD upload, signed as S3 specifies (botocore
    does not send these; its signing-key derivation is reused)."""
    amz = datetime.datetime.utcnow().strftime("%Y%m%dT%H%M%SZ")
    scope = f"{amz[:8]}/{REGION}/s3/aws4_request"
    chunks = [payload[i:i + chunk] for i in range(0, len(payload), chunk)] + [b""]
    framed = sum(len(f"{len(c):x};chunk-signature=") + 64 + 2 + len(c) + 2 for c in chunks)
    headers = {"host": host, "x-amz-date": amz,
               "x-amz-content-sha256": "STREAMING-AWS4-HMAC-SHA256-PAYLOAD",
               "content-encoding": "aws-chunked",
               "x-amz-decoded-content-length": str(len(payload)), "content-length": str(framed)}
    names = sorted(headers)
    canonical = "\n".join(["PUT", url_path, "", "".join(f"{n}:{headers[n]}\n" for n in names),
                           ";".join(names), "STREAMING-AWS4-HMAC-SHA256-PAYLOAD"])
    signer = botocore.auth.SigV4Auth(botocore.credentials.Credentials(*key), "s3", REGION)
    k = signer._sign(("AWS4" + key[1]).encode(), amz[:8])
    for part in (REGION, "s3", "aws4_request"):
        k = signer._sign(k, part)
    sts = "\n".join(["AWS4-HMAC-SHA256", amz, scope,
                     hashlib.sha256(canonical.encode()).hexdigest()])
    seed = hmac.new(k, sts.encode(), hashlib.sha256).hexdigest()
    prev, body = seed, b""
    empty = hashlib.sha256(b"").hexdigest()
    for c in chunks:
        s = "\n".join(["AWS4-HMAC-SHA256-PAYLOAD", amz, scope, prev, empty,
                       hashlib.sha256(c).hexdigest()])
        prev = hmac.new(k, s.encode(), hashlib.sha256).hexdigest()
        sent = c.replace(b"a", b"b", 1) if tamper and c else c
        body += f"{len(c):x};chunk-signature={prev}\r\n".encode() + sent + b"\r\n"
    headers["authorization"] = (f"AWS4-HMAC-SHA256 Credential={key[0]}/{scope}, "
                                f"SignedHeaders={';'.join(names)}, Signature={seed}")
    return headers, body


@pytest.mark.deadline(60)
def test_streaming_upload_reaches_the_target_decoded(sigv4_gatehouse, upstream):
    g = sigv4_gatehouse
    key = create_credential(g, "writer")
    wait_accepted(g, key)
    payload = b"a" * 1000 + b"tail"
    host = f"127.0.0.1:{g.port}"
    headers, body = streaming_body(key, "/echo/bucket/big", host, payload, 256)
    r = requests.put(g.url + "/echo/bucket/big", headers=headers, data=body, timeout=10)
    assert r.status_code == 200, r.text
    assert upstream.seen[-1].body == payload
    headers, body = streaming_body(key, "/echo/bucket/big", host, payload, 256, tamper=True)
    n = len(upstream.seen)
    r = requests.put(g.url + "/echo/bucket/big", headers=headers, data=body, timeout=10)
    assert r.status_code == 403 and error_code(r) == "SignatureDoesNotMatch"
    assert len(upstream.seen) == n  # refused before the target


@pytest.mark.deadline(60)
def test_admin_api_issues_lists_and_revokes(sigv4_gatehouse):
    g = sigv4_gatehouse
    base = g.url + "/admin/credentials"
    r = requests.post(base, headers=h.AUTH, json={"role": "reader"}, timeout=10)
    assert r.status_code == 201, r.text
    created = r.json()
    assert created["principal"] == role_arn("reader") and len(created["secret"]) == 40
    key = (created["id"], created["secret"])
    # Applied before the reply: no wait for the poller.
    assert signed("GET", g.url + "/", key).status_code == 200
    listed = requests.get(base, headers=h.AUTH, timeout=10).json()["credentials"]
    assert [c["id"] for c in listed] == [key[0]] and "secret" not in listed[0]
    assert requests.post(base, headers=h.AUTH, json={"role": "ghost"}, timeout=10).status_code == 400
    assert requests.post(base, headers=h.AUTH, data=b"[", timeout=10).status_code == 400
    assert requests.get(base, timeout=10).status_code == 401
    r = requests.post(f"{base}/{key[0]}/revoke", headers=h.AUTH, timeout=10)
    assert r.status_code == 200 and r.json()["revoked"] is True
    r = signed("GET", g.url + "/", key)
    assert r.status_code == 403 and error_code(r) == "InvalidAccessKeyId"
    r = requests.post(f"{base}/GHIANOSUCHKEY2345678/revoke", headers=h.AUTH, timeout=10)
    assert r.status_code == 404


@pytest.mark.deadline(60)
def test_unsigned_trailer_upload_from_botocore_chunked_wrapper(sigv4_gatehouse, upstream):
    """STREAMING-UNSIGNED-PAYLOAD-TRAILER as botocore builds it for S3 over TLS (its aws-chunked
    wrapper with a CRC32 trailer, signed by S3SigV4Auth); over plain HTTP botocore itself would
    send the checksum as a header, so the request is assembled from those parts."""
    g = sigv4_gatehouse
    key = create_credential(g, "writer")
    wait_accepted(g, key)
    payload = b"x" * 3000 + b"end"

    def send(body: bytes):
        req = botocore.awsrequest.AWSRequest(
            method="PUT", url=g.url + "/echo/bucket/trailer", data=body,
            headers={"Content-Encoding": "aws-chunked", "X-Amz-Trailer": "x-amz-checksum-crc32",
                     "X-Amz-Decoded-Content-Length": str(len(payload))})
        req.context["checksum"] = {"request_algorithm": {
            "in": "trailer", "algorithm": "crc32", "name": "x-amz-checksum-crc32"}}
        botocore.auth.S3SigV4Auth(botocore.credentials.Credentials(*key), "s3",
                                  REGION).add_auth(req)
        p = req.prepare()
        assert p.headers["x-amz-content-sha256"] == "STREAMING-UNSIGNED-PAYLOAD-TRAILER"
        return requests.put(p.url, headers=dict(p.headers), data=body, timeout=10)

    body = httpchecksum.AwsChunkedWrapper(io.BytesIO(payload),
                                          checksum_cls=httpchecksum.Crc32Checksum,
                                          checksum_name="x-amz-checksum-crc32",
                                          chunk_size=1024).read()
    assert b"x-amz-checksum-crc32:" in body
    r = send(body)
    assert r.status_code == 200, r.text
    assert upstream.seen[-1].body == payload
    # The payload changed in transit: the trailing CRC32 no longer matches.
    n = len(upstream.seen)
    r = send(body.replace(b"end", b"END"))
    assert r.status_code == 400 and error_code(r) == "BadDigest", r.text
    assert len(upstream.seen) == n
