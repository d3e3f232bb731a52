"""`gatehouse policy validate` and `gatehouse policy simulate`: exit codes and explanations."""

import json
import subprocess

BUCKET = {
    "Version": "2012-10-17",
    "Statement": [
        {"Sid": "OnlyUploadWrites", "Effect": "Deny",
         "NotPrincipal": {"AWS": ["arn:aws:iam::000000000000:role/upload",
                                  "arn:aws:sts::000000000000:assumed-role/upload/s1"]},
         "Action": "s3:PutObject", "Resource": "arn:aws:s3:::images/*"},
        {"Sid": "UploadWrites", "Effect": "Allow",
         "Principal": {"AWS": "arn:aws:iam::000000000000:role/upload"},
         "Action": "s3:PutObject", "Resource": "arn:aws:s3:::images/*"},
    ],
}
HOME = {
    "Version": "2012-10-17",
    "Statement": [{"Sid": "OwnFolder", "Effect": "Allow", "Action": "s3:*",
                   "Resource": "arn:aws:s3:::images/home/${aws:username}/*",
                   "Condition": {"IpAddress": {"aws:SourceIp": "10.0.0.0/8"}}}],
}
ADMIN = {"Version": "2012-10-17",
         "Statement": [{"Sid": "Admin", "Effect": "Allow", "Action": "*", "Resource": "*"}]}
ROLE = "arn:gatehouse:iam::000000000000:role/"


def write(tmp_path, name, doc):
    p = tmp_path / name
    p.write_text(doc if isinstance(doc, str) else json.dumps(doc))
    return str(p)


def run(binary, *args):
    return subprocess.run([binary, "policy", *args], capture_output=True, text=True, timeout=30)


def test_validate_ok_and_errors_with_paths(gatehouse_bin, tmp_path):
    good = write(tmp_path, "good.json", ADMIN)
    r = run(gatehouse_bin, "validate", good)
    assert r.returncode == 0, r.stderr
    assert "OK" in r.stdout
    bad = dict(ADMIN, Statement=[ADMIN["Statement"][0],
                                 {"Effect": "Allow", "Action": "*", "Resource": "*",
                                  "Condition": {"StringEquals": {"aws:username": {"x": 1}}}}])
    r = run(gatehouse_bin, "validate", good, write(tmp_path, "bad.json", bad))
    assert r.returncode == 1
    assert "Statement[1].Condition.StringEquals.aws:username:" in r.stderr
    r = run(gatehouse_bin, "validate", "--kind", "identity", write(tmp_path, "b.json", BUCKET))
    assert r.returncode == 1
    assert "Statement[0].NotPrincipal: an identity policy may not name a principal" in r.stderr
    r = run(gatehouse_bin, "validate", write(tmp_path, "dup.json",
                                             '{"Statement":[],"Statement":[]}'))
    assert r.returncode == 1 and "Statement: duplicate key" in r.stderr


def test_simulate_bucket_lock_down(gatehouse_bin, tmp_path):
    bucket = write(tmp_path, "bucket.json", BUCKET)
    admin = write(tmp_path, "admin.json", ADMIN)
    key = "arn:gatehouse:s3:::images/u/1.jpg"
    r = run(gatehouse_bin, "simulate", "--policy", admin, "--resource-policy", bucket,
            "--principal", ROLE + "admin", "--action", "s3:PutObject", "--resource", key)
    assert r.returncode == 1
    assert r.stdout.strip() == ("explicit deny: resource policy '%s' statement "
                                "'OnlyUploadWrites' (Statement[0])" % bucket)
    r = run(gatehouse_bin, "simulate", "--resource-policy", bucket, "--principal", ROLE + "upload",
            "--action", "s3:putobject", "--resource", key)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "'UploadWrites'" in r.stdout
    r = run(gatehouse_bin, "simulate", "--policy", admin, "--resource-policy", bucket,
            "--principal", "*", "--action", "s3:GetObject", "--resource", key)
    assert r.returncode == 0 and "policy '%s' statement 'Admin'" % admin in r.stdout


def test_simulate_variables_and_context(gatehouse_bin, tmp_path):
    home = write(tmp_path, "home.json", HOME)
    args = ["simulate", "--policy", home, "--principal", ROLE + "app", "--action", "s3:GetObject"]
    r = run(gatehouse_bin, *args, "--resource", "arn:gatehouse:s3:::images/home/alice/a",
            "--context", "aws:username=alice", "--context", "aws:SourceIp=10.1.2.3")
    assert r.returncode == 0, r.stdout + r.stderr
    r = run(gatehouse_bin, *args, "--resource", "arn:gatehouse:s3:::images/home/bob/a",
            "--context", "aws:username=alice", "--context", "aws:SourceIp=10.1.2.3")
    assert r.returncode == 1
    assert r.stdout.strip() == "implicit deny: no statement allowed"
    r = run(gatehouse_bin, *args, "--resource", "arn:gatehouse:s3:::images/home/alice/a",
            "--context", "aws:SourceIp=10.1.2.3")  # no aws:username: the variable is unresolved
    assert r.returncode == 1


def test_usage_and_parse_errors_exit_2(gatehouse_bin, tmp_path):
    admin = write(tmp_path, "admin.json", ADMIN)
    assert run(gatehouse_bin, "simulate", "--policy", admin, "--action", "a:b").returncode == 2
    assert run(gatehouse_bin).returncode == 2
    r = run(gatehouse_bin, "simulate", "--policy", write(tmp_path, "x.json", "{"),
            "--principal", "*", "--action", "a:b", "--resource", "*")
    assert r.returncode == 2 and "not valid JSON" in r.stderr
    r = run(gatehouse_bin, "simulate", "--policy", str(tmp_path / "missing.json"),
            "--principal", "*", "--action", "a:b", "--resource", "*")
    assert r.returncode == 2
    r = run(gatehouse_bin, "simulate", "--policy", admin, "--principal", "*", "--action", "a:b",
            "--resource", "*", "--context", "novalue")
    assert r.returncode == 2
