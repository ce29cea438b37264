"""Test support: a real workerd (``wrangler dev``) started and stopped by the tests, small
SQLite files, per-user tokens, and a scripted clock."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
ADMIN_TOKEN = "py-admin-token"
TOKEN_SECRET = "py-token-secret"
# Small, so the oversize file stays small too.
MAX_DB_BYTES = 256 * 1024
STARTUP_TIMEOUT_S = 180


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LocalWorker:
    """``wrangler dev`` in its own process group with a private local R2 directory; ``stop``
    ends the whole group (wrangler, workerd, esbuild) by its id."""

    def __init__(self, variables: dict[str, str]) -> None:
        wrangler = ROOT / "node_modules/.bin/wrangler"
        if not (ROOT / "build/index.js").exists() or not wrangler.exists():
            pytest.fail("the worker is not built: run `make build` (make python-test does)")
        (ROOT / "target").mkdir(exist_ok=True)
        self.state = Path(tempfile.mkdtemp(prefix="python-e2e-", dir=ROOT / "target"))
        for attempt in range(3):
            port = free_port()
            self.base = f"http://127.0.0.1:{port}"
            self.log_path = self.state / f"wrangler-{attempt}.log"
            cmd = [
                str(wrangler), "dev", "--ip", "127.0.0.1", "--port", str(port),
                "--persist-to", str(self.state), "--inspector-port", str(free_port()),
                "--show-interactive-dev-session=false", "--log-level", "log",
            ]
            for name, value in variables.items():
                cmd += ["--var", f"{name}:{value}"]
            with open(self.log_path, "wb") as log:
                self.proc = subprocess.Popen(
                    cmd,
                    cwd=ROOT,
                    env={**os.environ, "WRANGLER_SEND_METRICS": "false", "NO_COLOR": "1"},
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            if self._wait_ready():
                return
            # A port picked free can be taken before wrangler binds it: new ports, again.
            if "Address already in use" not in self.log():
                break
        log = self.log()
        self.stop()
        pytest.fail(f"wrangler dev exited before serving:\n{log[-4000:]}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def _wait_ready(self) -> bool:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            try:
                urllib.request.urlopen(f"{self.base}/__ready", timeout=5)
            except urllib.error.HTTPError as e:
                # The worker's own JSON error (404 for an unknown path): workerd serves it.
                try:
                    if json.loads(e.read())["success"] is False:
                        return True
                except (ValueError, KeyError):
                    pass
            except OSError:
                pass
            time.sleep(0.25)
        log = self.log()
        self.stop()
        pytest.fail(f"wrangler dev did not serve within {STARTUP_TIMEOUT_S}s:\n{log[-4000:]}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
            except ProcessLookupError:
                pass
        shutil.rmtree(self.state, ignore_errors=True)

    def request(
        self, method: str, route: str, body: Any = None, token: str | None = ADMIN_TOKEN
    ) -> tuple[int, Any]:
        """A JSON request with the admin token (or ``token``): (status, parsed body)."""
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        req = urllib.request.Request(f"{self.base}{route}", data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())

    def export(self, user: str) -> tuple[int, bytes, str | None]:
        """``GET /export``: (status, bytes, X-Db-Version)."""
        req = urllib.request.Request(
            f"{self.base}/export?user={user}", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}
        )
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                return r.status, r.read(), r.headers.get("X-Db-Version")
        except urllib.error.HTTPError as e:
            return e.code, e.read(), e.headers.get("X-Db-Version")


def start_worker(layout: str) -> Iterator[LocalWorker]:
    worker = LocalWorker(
        {
            "AUTH_TOKEN": ADMIN_TOKEN,
            "TOKEN_SECRET": TOKEN_SECRET,
            "MAX_DB_BYTES": str(MAX_DB_BYTES),
            "LAYOUT": layout,
        }
    )
    try:
        yield worker
    finally:
        worker.stop()


@pytest.fixture(scope="session")
def worker() -> Iterator[LocalWorker]:
    """One worker for the module's tests, in the default (incremental) layout."""
    yield from start_worker("incremental")


@pytest.fixture(scope="session")
def single_worker() -> Iterator[LocalWorker]:
    """A worker in the spec's single-object layout."""
    yield from start_worker("single")


def mint_token(user: str, expires_s: int, secret: str = TOKEN_SECRET) -> str:
    """A per-user token as the worker's ``auth::mint`` makes it (``u1.<user>.<exp>.<sig>``)."""
    payload = f"u1.{user}.{expires_s}"
    sig = hmac.new(secret.encode(), payload.encode(), hashlib.sha256).digest()
    return f"{payload}.{base64.urlsafe_b64encode(sig).decode().rstrip('=')}"


def make_db(path: Path, rows: int = 20, extra_sql: str = "") -> Path:
    """A small SQLite file with text, integers (one beyond 2^53), reals and a blob."""
    conn = sqlite3.connect(path)
    conn.executescript(
        """
        CREATE TABLE clips(id INTEGER PRIMARY KEY, title TEXT NOT NULL, big INTEGER,
                           score REAL, thumb BLOB);
        CREATE INDEX clips_title ON clips(title);
        """
    )
    conn.executemany(
        "INSERT INTO clips(title, big, score, thumb) VALUES (?, ?, ?, ?)",
        [(f"clip {i} \u00e9\u6f22", 9007199254740993 + i, i / 3, bytes([i % 256]) * 40) for i in range(rows)],
    )
    if extra_sql:
        conn.executescript(extra_sql)
    conn.commit()
    conn.close()
    return path


def dump(path: Path) -> list[str]:
    """The database as SQL text: equal dumps are the same database through SQLite."""
    conn = sqlite3.connect(path)
    try:
        return list(conn.iterdump())
    finally:
        conn.close()


class ScriptedClock:
    """A clock (ms) that makes each timed operation take exactly the next scripted delay: it
    reads 0 at each start and the delay at each end, so the difference is exact."""

    def __init__(self, delays_ms: list[float]) -> None:
        self.delays = list(delays_ms)
        self.started = False

    def __call__(self) -> float:
        self.started = not self.started
        return 0.0 if self.started else self.delays.pop(0)


_counter = iter(range(1_000_000))


@pytest.fixture
def user(request: pytest.FixtureRequest) -> str:
    """A fresh user id per test."""
    name = request.node.name.replace("[", "-").replace("]", "").replace("_", "-")[:40]
    return f"{name}-{next(_counter)}"
