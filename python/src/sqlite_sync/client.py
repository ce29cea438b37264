"""Push and pull a user's SQLite database through the worker, never over a write not seen.

* ``pull(path, user)`` asks ``GET /export`` with ``If-None-Match`` the local version and
  downloads only a newer one; the file is written to a temporary file beside ``path`` and
  renamed over it, then the version is recorded in ``path + ".db-version"``.
* ``push(path, user)`` sends ``PUT /import`` with ``If-Match`` the version last pulled (or
  ``If-None-Match: *`` when nothing was pulled: create only), so a write made through the
  worker since then refuses it instead of being overwritten.

Both record their time in a :class:`DelayTracker` and log as the spec's sketch does. Every
failure is a :class:`SyncError` whose ``written`` says what was written: on every refusal,
nothing.
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .delay import DelayAction, DelayStatus, DelayTracker, Recommendation

#: Environment variables read by :meth:`SyncClient.from_env`.
ENV_URL = "SQLITE_SYNC_URL"
ENV_USER_TOKEN = "SQLITE_SYNC_TOKEN"
ENV_ADMIN_TOKEN = "AUTH_TOKEN"

NOTHING_WRITTEN = "nothing: the worker stored nothing, and the local file and its version are as they were"
NOTHING_WRITTEN_LOCAL = "nothing: the local file and its version are as they were"
UNKNOWN_WRITTEN = (
    "unknown: the request may have reached the worker and been stored; the local file and its "
    "version are as they were; pull before pushing again"
)


class SyncError(Exception):
    """A push or pull that did not complete; ``written`` says what was written."""

    def __init__(
        self,
        message: str,
        *,
        user: str,
        operation: str,
        written: str,
        status: int | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(f"{operation} for user {user!r}: {message} (written: {written})")
        self.user = user
        self.operation = operation
        self.written = written
        self.status = status
        self.code = code
        self.worker_message = message


class ConflictError(SyncError):
    """The worker's database is not the version this push builds on (412), or the user is
    served elsewhere right now (409: their Durable Object, or a move). Pull, merge, retry."""


class RefusedError(SyncError):
    """The worker refused the request as it is (4xx): a damaged or oversize file, a bad
    request, no such user. Repeating it unchanged will not help."""


class AuthError(RefusedError):
    """The token is missing, wrong or expired (401), or opens another user's database (403)."""


class UnreachableError(SyncError):
    """The worker could not be reached, timed out, or failed (5xx)."""


@dataclass(frozen=True)
class PushResult:
    """A completed push."""

    user: str
    #: The round trip as the backend measured it, in milliseconds.
    delay_ms: float
    status: DelayStatus
    action: DelayAction
    #: The version now stored (and recorded locally).
    db_version: str
    #: The version the push replaced (``None``: it created the database).
    replaced_db_version: str | None
    recommendation: Recommendation
    #: The worker's report (its ``delay_analysis`` grades its own load and save).
    worker: dict[str, Any]


@dataclass(frozen=True)
class PullResult:
    """A completed pull."""

    user: str
    delay_ms: float
    status: DelayStatus
    action: DelayAction
    #: True when a newer database was downloaded and renamed over the local file.
    downloaded: bool
    #: The local version after the pull.
    db_version: str
    size_bytes: int
    recommendation: Recommendation


def version_path(path: str | os.PathLike[str]) -> Path:
    """Where the version of the database at ``path`` is recorded."""
    return Path(f"{os.fspath(path)}.db-version")


def local_version(path: str | os.PathLike[str], user: str) -> str | None:
    """The version last pulled or pushed for ``user`` at ``path``, if any."""
    try:
        data = json.loads(version_path(path).read_text())
    except (FileNotFoundError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("user") != user:
        return None
    version = data.get("db_version")
    return version if isinstance(version, str) and version.isdigit() else None


def _write_atomically(target: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def read_snapshot(path: str | os.PathLike[str]) -> bytes:
    """The database at ``path`` as one consistent SQLite image, read through SQLite: pages
    still in a ``-wal`` file are included, and a write by another connection meanwhile is
    either wholly in it or not at all (copying the file's bytes would give neither). A file
    SQLite cannot read is returned as it is: the worker checks it and says what is wrong."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"no database file at {os.fspath(path)}")
    try:
        conn = sqlite3.connect(f"file:{Path(path).resolve()}?mode=ro", uri=True)
        try:
            return conn.serialize()
        finally:
            conn.close()
    except sqlite3.DatabaseError:
        return Path(path).read_bytes()


def _record_version(path: str | os.PathLike[str], user: str, version: str) -> None:
    _write_atomically(
        version_path(path), json.dumps({"user": user, "db_version": version}).encode()
    )


class SyncClient:
    """Talks to one worker with one token."""

    def __init__(
        self,
        base_url: str,
        token: str | None = None,
        tracker: DelayTracker | None = None,
        timeout_s: float = 60.0,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.token = token
        self.tracker = tracker if tracker is not None else DelayTracker()
        self.timeout_s = timeout_s

    @classmethod
    def from_env(cls, tracker: DelayTracker | None = None) -> SyncClient:
        """The worker at ``$SQLITE_SYNC_URL``, with the per-user token ``$SQLITE_SYNC_TOKEN``
        or else the admin token ``$AUTH_TOKEN`` (neither: anonymous, for a local worker)."""
        url = os.environ.get(ENV_URL)
        if not url:
            raise ValueError(f"set {ENV_URL} to the worker's address, e.g. http://127.0.0.1:8787")
        token = os.environ.get(ENV_USER_TOKEN) or os.environ.get(ENV_ADMIN_TOKEN) or None
        return cls(url, token=token, tracker=tracker)

    def _url(self, route: str, user: str) -> str:
        return f"{self.base_url}{route}?{urllib.parse.urlencode({'user': user})}"

    def _send(
        self,
        method: str,
        route: str,
        user: str,
        headers: dict[str, str],
        body: bytes | None,
        operation: str,
        written_on_refusal: str,
    ) -> tuple[int, dict[str, str], bytes]:
        if self.token:
            headers = {**headers, "Authorization": f"Bearer {self.token}"}
        request = urllib.request.Request(
            self._url(route, user), data=body, method=method, headers=headers
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                return response.status, dict(response.headers.items()), response.read()
        except urllib.error.HTTPError as e:
            if e.code == 304:
                return 304, dict(e.headers.items()), b""
            raise self._error(e, user, operation, written_on_refusal) from None
        except (urllib.error.URLError, socket.timeout, ConnectionError) as e:
            reason = getattr(e, "reason", e)
            never_sent = isinstance(reason, ConnectionRefusedError) or isinstance(
                reason, socket.gaierror
            )
            raise UnreachableError(
                f"the worker at {self.base_url} could not be reached: {reason}",
                user=user,
                operation=operation,
                written=written_on_refusal if never_sent or body is None else UNKNOWN_WRITTEN,
            ) from None

    def _error(
        self, e: urllib.error.HTTPError, user: str, operation: str, written: str
    ) -> SyncError:
        raw = e.read()
        try:
            detail = json.loads(raw)["error"]
            code, message = str(detail["code"]), str(detail["message"])
        except (ValueError, KeyError, TypeError):
            code, message = None, raw.decode(errors="replace")[:500] or str(e)
        kind: type[SyncError]
        if e.code in (409, 412):
            kind = ConflictError
        elif e.code in (401, 403):
            kind = AuthError
        elif 400 <= e.code < 500:
            kind = RefusedError
        else:
            kind = UnreachableError
            if "nothing was written" not in message and operation == "push":
                written = UNKNOWN_WRITTEN
        return kind(
            f"{e.code} {code}: {message}",
            user=user,
            operation=operation,
            written=written,
            status=e.code,
            code=code,
        )

    def push(self, path: str | os.PathLike[str], user: str) -> PushResult:
        """Uploads the SQLite database at ``path`` (read through SQLite, WAL included) as
        ``user``'s database, if the worker's is still the version last pulled (or, when none
        was, if the user has no database yet)."""
        data = read_snapshot(path)
        replaced = local_version(path, user)
        condition = {"If-Match": f'"{replaced}"'} if replaced else {"If-None-Match": "*"}
        headers = {"Content-Type": "application/vnd.sqlite3", **condition}
        start = self.tracker.clock_ms()
        _, _, body = self._send("PUT", "/import", user, headers, data, "push", NOTHING_WRITTEN)
        elapsed = self.tracker.clock_ms() - start
        report = json.loads(body)
        version = str(report["db_info"]["db_version"])
        _record_version(path, user, version)
        sample = self.tracker.record(elapsed, what=f"push {user}, {len(data)} bytes")
        return PushResult(
            user=user,
            delay_ms=elapsed,
            status=sample.status,
            action=sample.action,
            db_version=version,
            replaced_db_version=replaced,
            recommendation=sample.trend.recommendation,
            worker=report,
        )

    def pull(self, path: str | os.PathLike[str], user: str) -> PullResult:
        """Downloads ``user``'s database to ``path`` if the worker's version is newer than the
        local one (temporary file, then rename), and records the new version. Connections
        open on ``path`` keep reading the old file: close them first."""
        target = Path(path)
        local = local_version(path, user) if target.exists() else None
        headers = {"If-None-Match": f'"{local}"'} if local else {}
        start = self.tracker.clock_ms()
        status, response_headers, body = self._send(
            "GET", "/export", user, headers, None, "pull", NOTHING_WRITTEN_LOCAL
        )
        elapsed = self.tracker.clock_ms() - start
        remote = {k.lower(): v for k, v in response_headers.items()}.get("x-db-version", "")
        newer = status == 200 and (local is None or (remote.isdigit() and int(remote) > int(local)))
        if newer:
            _write_atomically(target, body)
            _record_version(path, user, remote)
        sample = self.tracker.record(elapsed, what=f"pull {user}, " + ("downloaded" if newer else "not newer"))
        return PullResult(
            user=user,
            delay_ms=elapsed,
            status=sample.status,
            action=sample.action,
            downloaded=newer,
            db_version=remote if newer else (local or remote),
            size_bytes=len(body) if newer else target.stat().st_size,
            recommendation=sample.trend.recommendation,
        )


_default: SyncClient | None = None


def _client() -> SyncClient:
    global _default
    if _default is None:
        _default = SyncClient.from_env()
    return _default


def push(path: str | os.PathLike[str], user: str) -> PushResult:
    """:meth:`SyncClient.push` on the worker and token named by the environment."""
    return _client().push(path, user)


def pull(path: str | os.PathLike[str], user: str) -> PullResult:
    """:meth:`SyncClient.pull` on the worker and token named by the environment."""
    return _client().pull(path, user)
