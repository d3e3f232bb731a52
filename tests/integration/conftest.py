"""Fixtures for the integration tests: run the real `gatehouse` binary on a loopback port.

The binary comes from $GATEHOUSE_BIN (ctest sets it), else the newest
<repo>/build*/src/cli/gatehouse. Each test gets its own server process, config file, state
directory and port; the server is stopped at teardown (SIGTERM, wait, then SIGKILL).

Per-test deadline: pytest-timeout may be absent, so tests carry @pytest.mark.deadline(seconds)
(default 60 s) and a SIGALRM fails a test that overruns it.
"""

from __future__ import annotations

import glob
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Optional, Union

import pytest

sys.dont_write_bytecode = True
sys.path.insert(0, str(Path(__file__).resolve().parent))

import gh_helpers as h  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
DEFAULT_DEADLINE = 60.0
READY_TIMEOUT = 10.0


# ------------------------------------------------------------------------------------------------
# Per-test deadline


class DeadlineExceeded(Exception):
    pass


def pytest_configure(config):
    config.addinivalue_line("markers", "deadline(seconds): fail the test if it runs longer")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item):
    marker = item.get_closest_marker("deadline")
    seconds = float(marker.args[0]) if marker else DEFAULT_DEADLINE

    def on_alarm(signum, frame):
        raise DeadlineExceeded(f"{item.nodeid} exceeded its {seconds:g} s deadline")

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


# ------------------------------------------------------------------------------------------------
# The binary


def find_binary() -> Optional[str]:
    env = os.environ.get("GATEHOUSE_BIN")
    if env:
        return env
    candidates = [p for p in glob.glob(str(REPO / "build*" / "src" / "cli" / "gatehouse"))
                  if os.access(p, os.X_OK)]
    if not candidates:
        return None
    return max(candidates, key=os.path.getmtime)


@pytest.fixture(scope="session")
def gatehouse_bin() -> str:
    path = find_binary()
    if path is None:
        pytest.skip("no gatehouse binary: set GATEHOUSE_BIN or build <repo>/build*/src/cli/gatehouse")
    if not os.access(path, os.X_OK):
        pytest.fail(f"GATEHOUSE_BIN={path} is not an executable file")
    return path


# ------------------------------------------------------------------------------------------------
# A running server


class Gatehouse:
    """Handle on one `gatehouse serve` process."""

    def __init__(self, binary: str, workdir: Path, port_reservation, config: Union[dict, str]):
        self.binary = binary
        self.workdir = workdir
        self._reservation = port_reservation
        self.port = port_reservation.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.config_path = workdir / "gatehouse.yaml"
        self.stdout_path = workdir / "stdout.log"
        self.stderr_path = workdir / "stderr.log"
        self.proc: Optional[subprocess.Popen] = None
        # Set before start(): extra environment variables for the server.
        self.env: dict = {}
        self.write_config(config)

    # -- config --------------------------------------------------------------------------------

    def write_config(self, config: Union[dict, str]):
        text = config if isinstance(config, str) else h.to_yaml(config)
        tmp = self.config_path.with_suffix(".tmp")
        tmp.write_text(text)
        os.replace(tmp, self.config_path)  # atomic: a reload never sees half a file
        self.config_text = text

    def reload(self, config: Union[dict, str]):
        """Rewrites the config file and sends SIGHUP. Callers poll for the effect."""
        self.write_config(config)
        self.proc.send_signal(signal.SIGHUP)

    # -- process -------------------------------------------------------------------------------

    def start(self, ready_timeout: float = READY_TIMEOUT):
        self._out = open(self.stdout_path, "wb")
        self._err = open(self.stderr_path, "wb")
        self.proc = subprocess.Popen(
            [self.binary, "serve", "--config", str(self.config_path)],
            stdin=subprocess.DEVNULL, stdout=self._out, stderr=self._err, cwd=self.workdir,
            env={**os.environ, **self.env})
        deadline = time.monotonic() + ready_timeout
        while True:
            if self.proc.poll() is not None:
                raise AssertionError(f"gatehouse exited with {self.proc.returncode} during start-up:\n"
                                     f"{self.stderr()}")
            try:
                r = h.get(self.port, "/healthz", timeout=1.0)
                if r.status == 200:
                    return self
            except (OSError, h.ConnectionClosed):
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise AssertionError(f"gatehouse not ready after {ready_timeout} s:\n{self.stderr()}")
            time.sleep(0.05)

    def stop(self, timeout: float = 10.0) -> Optional[int]:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        for f in (self._out, self._err):
            f.close()
        return self.proc.returncode

    # -- observation ---------------------------------------------------------------------------

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def stdout(self) -> str:
        return self.stdout_path.read_text(errors="replace")

    def access_log(self) -> list:
        lines = []
        for line in self.stdout().splitlines():
            line = line.strip()
            if line.startswith("{"):
                lines.append(json.loads(line))
        return lines

    def metrics_text(self) -> str:
        r = h.get(self.port, "/metrics", headers=h.AUTH)
        assert r.status == 200, (r.status, r.body)
        return r.body.decode()

    def metrics(self) -> dict:
        return h.parse_metrics(self.metrics_text())

    def metric(self, name: str, **labels) -> Optional[float]:
        return h.metric(self.metrics(), name, **labels)

    def wait_metric(self, name: str, at_least: float, timeout: float = 5.0, **labels) -> float:
        def check():
            v = self.metric(name, **labels)
            return v if v is not None and v >= at_least else None
        return h.wait_until(check, timeout, what=f"{name}{labels} >= {at_least}")

    def get(self, path: str, **kw) -> h.Response:
        return h.get(self.port, path, **kw)


@pytest.fixture
def state_dir(tmp_path) -> Path:
    d = tmp_path / "state"
    d.mkdir()
    return d


@pytest.fixture
def start_gatehouse(gatehouse_bin, tmp_path) -> Callable:
    """Factory: start_gatehouse(modify=None, config=None) -> Gatehouse.

    `modify(cfg_dict)` edits the default config (gh_helpers.base_config) in place; or `config`
    is a callable port -> dict/str giving the whole config. Several servers may be started; all
    are stopped at teardown."""
    started = []
    reservations = []

    def start(modify: Optional[Callable] = None, config: Optional[Callable] = None,
              ready: bool = True) -> Gatehouse:
        res = h.reserve_port()
        reservations.append(res)
        port = res.getsockname()[1]
        workdir = tmp_path / f"gh{len(started)}"
        workdir.mkdir()
        (workdir / "state").mkdir()
        if config is not None:
            cfg = config(port, workdir / "state")
        else:
            cfg = h.base_config(port, workdir / "state")
            if modify is not None:
                modify(cfg)
        g = Gatehouse(gatehouse_bin, workdir, res, cfg)
        started.append(g)
        if ready:
            g.start()
        return g

    yield start
    for g in started:
        g.stop()
    for r in reservations:
        r.close()


@pytest.fixture
def gatehouse(start_gatehouse) -> Gatehouse:
    """A server with the default config (gh_helpers.base_config)."""
    return start_gatehouse()


@pytest.fixture
def upstream():
    up = h.Upstream().start()
    yield up
    up.stop()
