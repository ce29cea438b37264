"""push and pull against the real workerd (``wrangler dev``): round trips through SQLite,
conflicts with app writes, refused files, delay bands and trend through real requests, and
access control."""

from __future__ import annotations

import logging
import sqlite3
import time
from pathlib import Path

import pytest
from conftest import (
    ADMIN_TOKEN,
    MAX_DB_BYTES,
    LocalWorker,
    ScriptedClock,
    dump,
    make_db,
    mint_token,
)

from sqlite_sync import (
    AuthError,
    ConflictError,
    DelayAction,
    DelayStatus,
    DelayTracker,
    RefusedError,
    SyncClient,
    UnreachableError,
    local_version,
)
from sqlite_sync.client import version_path


def client(worker: LocalWorker, token: str | None = ADMIN_TOKEN, **kw: object) -> SyncClient:
    return SyncClient(worker.base, token=token, **kw)  # type: ignore[arg-type]


def query(worker: LocalWorker, user: str, body: object) -> dict:
    status, json = worker.request("POST", f"/query?user={user}", body)
    assert status == 200, json
    return json


@pytest.mark.parametrize("layout", ["incremental", "single"])
def test_push_pull_round_trip(
    layout: str, request: pytest.FixtureRequest, tmp_path: Path, user: str
) -> None:
    """A pushed file pulls back as the same database; an unchanged version is not downloaded
    again; a pull then push then pull on another copy carries every change across."""
    worker: LocalWorker = request.getfixturevalue("worker" if layout == "incremental" else "single_worker")
    c = client(worker)
    a = make_db(tmp_path / "a.sqlite")
    pushed = c.push(a, user)
    assert pushed.replaced_db_version is None and pushed.db_version.isdigit()
    # A new user is one object in either layout; the incremental one upgrades on the next write.
    assert pushed.worker["storage"]["layout"] == "single"
    assert pushed.worker["delay_analysis"]["save"]["status"] != "not_run"
    assert local_version(a, user) == pushed.db_version

    b = tmp_path / "b.sqlite"
    pulled = c.pull(b, user)
    assert pulled.downloaded and pulled.db_version == pushed.db_version
    assert dump(b) == dump(a)
    assert not c.pull(b, user).downloaded  # 304: the same version

    conn = sqlite3.connect(b)
    conn.execute("INSERT INTO clips(title, big) VALUES ('edited on b', 1)")
    conn.commit()
    conn.close()
    again = c.push(b, user)
    assert again.replaced_db_version == pushed.db_version
    assert again.worker["storage"]["layout"] == layout
    assert int(again.db_version) > int(pushed.db_version)
    assert c.pull(a, user).downloaded
    assert dump(a) == dump(b)
    rows = query(worker, user, {"sql": "SELECT count(*) FROM clips WHERE title = 'edited on b'"})
    assert rows["results"][0]["rows"] == [[1]]


def test_app_write_between_pull_and_push_is_a_conflict(
    worker: LocalWorker, tmp_path: Path, user: str
) -> None:
    """A /query write after the pull makes the push raise ConflictError; nothing is written
    anywhere and the app's row stays."""
    c = client(worker)
    local = make_db(tmp_path / "db.sqlite")
    c.push(local, user)
    c.pull(local, user)
    query(worker, user, {"sql": "INSERT INTO clips(title) VALUES ('from the app')"})
    before_bytes, before_version = local.read_bytes(), local_version(local, user)
    status, stored_before, stored_version = worker.export(user)
    with pytest.raises(ConflictError) as raised:
        c.push(local, user)
    e = raised.value
    assert (e.status, e.code) == (412, "version_mismatch")
    assert e.written.startswith("nothing")
    assert local.read_bytes() == before_bytes and local_version(local, user) == before_version
    assert worker.export(user) == (status, stored_before, stored_version)
    rows = query(worker, user, {"sql": "SELECT count(*) FROM clips WHERE title = 'from the app'"})
    assert rows["results"][0]["rows"] == [[1]]
    # The way out: pull (the app's row comes down), then push.
    assert c.pull(local, user).downloaded
    assert c.push(local, user).db_version


def _damaged(path: Path) -> bytes:
    data = bytearray(path.read_bytes())
    page = int.from_bytes(data[16:18], "big")
    data[page : page + 64] = b"\xa5" * 64  # the second page's b-tree header
    return bytes(data)


@pytest.mark.parametrize("kind", ["damaged", "truncated", "oversize", "not_sqlite"])
def test_bad_files_are_refused_and_change_nothing(
    worker: LocalWorker, tmp_path: Path, user: str, kind: str
) -> None:
    c = client(worker)
    good = make_db(tmp_path / "good.sqlite")
    c.push(good, user)
    before = worker.export(user)
    bad = tmp_path / "bad.sqlite"
    if kind == "damaged":
        bad.write_bytes(_damaged(good))
    elif kind == "truncated":
        bad.write_bytes(good.read_bytes()[:-1000])
    elif kind == "oversize":
        make_db(bad, rows=MAX_DB_BYTES // 60)
        assert bad.stat().st_size > MAX_DB_BYTES
    else:
        bad.write_bytes(b"SQLite format 2\x00 this is not a database" * 40)
    version_path(bad).write_bytes(version_path(good).read_bytes())
    with pytest.raises(RefusedError) as raised:
        c.push(bad, user)
    e = raised.value
    expected = (413, "database_too_large") if kind == "oversize" else (422, "invalid_upload")
    assert (e.status, e.code) == expected, e
    assert e.written.startswith("nothing")
    assert worker.export(user) == before, "the stored database is byte-identical"


@pytest.mark.parametrize(
    "ms,status,action",
    [
        (99.999, DelayStatus.OPTIMAL, DelayAction.NONE),
        (100.0, DelayStatus.ACCEPTABLE, DelayAction.NONE),
        (299.999, DelayStatus.ACCEPTABLE, DelayAction.NONE),
        (300.0, DelayStatus.WARNING, DelayAction.LOG_WARNING),
        (499.999, DelayStatus.WARNING, DelayAction.LOG_WARNING),
        (500.0, DelayStatus.SLOW, DelayAction.CONSIDER_ARCHIVING),
        (999.999, DelayStatus.SLOW, DelayAction.CONSIDER_ARCHIVING),
        (1000.0, DelayStatus.CRITICAL, DelayAction.SHOW_USER_WARNING),
    ],
)
def test_real_pushes_are_graded_at_the_boundaries(
    worker: LocalWorker,
    tmp_path: Path,
    user: str,
    ms: float,
    status: DelayStatus,
    action: DelayAction,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """With an injected clock, a real push that took exactly ``ms`` lands in the worker's band
    and logs the line that band calls for."""
    caplog.set_level(logging.INFO, logger="sqlite_sync")
    c = client(worker, tracker=DelayTracker(clock_ms=ScriptedClock([ms, ms])))
    local = make_db(tmp_path / "db.sqlite")
    result = c.push(local, user)
    assert (result.delay_ms, result.status, result.action) == (ms, status, action)
    pulled = c.pull(local, user)
    assert (pulled.delay_ms, pulled.status, pulled.downloaded) == (ms, status, False)
    lines = [r.getMessage() for r in caplog.records]
    prefix = {
        DelayAction.NONE: None,
        DelayAction.LOG_WARNING: "Database sync noticeable: ",
        DelayAction.CONSIDER_ARCHIVING: "Database sync slow: ",
        DelayAction.SHOW_USER_WARNING: "DATABASE SYNC CRITICAL: Sync took ",
    }[action]
    if prefix is None:
        assert lines == []
    else:
        assert len(lines) == 2 and all(line.startswith(prefix) for line in lines), lines
        assert f"[push {user}, {local.stat().st_size} bytes]" in lines[0]


def test_real_pushes_cross_the_trend_ratio(
    worker: LocalWorker, tmp_path: Path, user: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Ten real pushes, three of them slow: the third slow one (30 % of the window) logs the
    trend warning, once."""
    caplog.set_level(logging.INFO, logger="sqlite_sync")
    delays = [50.0] * 7 + [600.0, 600.0, 700.0, 50.0]
    c = client(worker, tracker=DelayTracker(clock_ms=ScriptedClock(delays)))
    local = make_db(tmp_path / "db.sqlite")
    trend_lines: list[list[str]] = []
    for _ in delays:
        c.push(local, user)
        trend_lines.append([r.getMessage() for r in caplog.records if "TREND" in r.getMessage()])
    assert trend_lines[8] == []
    assert trend_lines[9] == [
        "DATABASE SYNC TREND: 30% of the last 10 syncs took >=500ms (warning ratio 30%). "
        "Consider archiving old data."
    ]
    assert trend_lines[10] == trend_lines[9]
    assert c.tracker.trend().recommendation.value == "consider_archiving"


def test_tokens(worker: LocalWorker, tmp_path: Path, user: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A per-user token from the environment opens its user only: 403 on another user, 401
    when expired; each refusal writes nothing."""
    now = int(time.time())
    monkeypatch.setenv("SQLITE_SYNC_URL", worker.base)
    monkeypatch.setenv("SQLITE_SYNC_TOKEN", mint_token(user, now + 600))
    monkeypatch.setenv("AUTH_TOKEN", "not-the-admin-token")
    c = SyncClient.from_env()
    local = make_db(tmp_path / "db.sqlite")
    c.push(local, user)
    assert c.pull(tmp_path / "copy.sqlite", user).downloaded
    other = f"{user}-other"
    with pytest.raises(AuthError) as raised:
        c.push(local, other)
    assert (raised.value.status, raised.value.code) == (403, "forbidden")
    assert raised.value.written.startswith("nothing")
    assert worker.export(other)[0] == 404
    with pytest.raises(AuthError) as raised:
        c.pull(tmp_path / "other.sqlite", other)
    assert raised.value.status == 403 and not (tmp_path / "other.sqlite").exists()
    expired = SyncClient(worker.base, token=mint_token(user, now - 1))
    before = worker.export(user)
    with pytest.raises(AuthError) as raised:
        expired.push(local, user)
    assert (raised.value.status, raised.value.code) == (401, "unauthorized")
    assert worker.export(user) == before
    # Without a per-user token, the admin token from the environment is used.
    monkeypatch.delenv("SQLITE_SYNC_TOKEN")
    monkeypatch.setenv("AUTH_TOKEN", ADMIN_TOKEN)
    assert not SyncClient.from_env().pull(tmp_path / "copy.sqlite", user).downloaded


def test_durable_object_user_is_a_conflict(worker: LocalWorker, tmp_path: Path, user: str) -> None:
    """A user served by their Durable Object: push and pull are 409, nothing written."""
    c = client(worker)
    local = make_db(tmp_path / "db.sqlite")
    c.push(local, user)
    status, moved = worker.request("POST", f"/migrate?user={user}&to=durable_object")
    assert status == 200, moved
    before = local.read_bytes()
    for op in (c.push, c.pull):
        with pytest.raises(ConflictError) as raised:
            op(local, user)
        assert (raised.value.status, raised.value.code) == (409, "served_by_durable_object")
        assert raised.value.written.startswith("nothing")
    assert local.read_bytes() == before


def test_unreachable_worker(tmp_path: Path) -> None:
    """Nothing listening: UnreachableError, nothing written, local files untouched."""
    with socket_closed_port() as port:
        c = SyncClient(f"http://127.0.0.1:{port}", timeout_s=5)
        local = make_db(tmp_path / "db.sqlite")
        with pytest.raises(UnreachableError) as raised:
            c.push(local, "nobody")
        assert raised.value.written.startswith("nothing")
        with pytest.raises(UnreachableError):
            c.pull(tmp_path / "new.sqlite", "nobody")
        assert not (tmp_path / "new.sqlite").exists()
        assert local_version(local, "nobody") is None


class socket_closed_port:
    """A port that was just free: nothing listens on it."""

    def __enter__(self) -> int:
        from conftest import free_port

        return free_port()

    def __exit__(self, *exc: object) -> None:
        return None


def test_wal_mode_changes_not_yet_checkpointed_are_pushed(
    worker: LocalWorker, tmp_path: Path, user: str
) -> None:
    """A backend in WAL mode with changes still in the -wal file: push reads through SQLite,
    so they reach the worker (the main file's bytes alone lack them)."""
    path = tmp_path / "wal.sqlite"
    writer = sqlite3.connect(path)
    writer.execute("PRAGMA journal_mode=WAL")
    writer.execute("PRAGMA wal_autocheckpoint=0")
    writer.execute("CREATE TABLE t(x TEXT)")
    writer.executemany("INSERT INTO t VALUES (?)", [(f"row {i}",) for i in range(50)])
    writer.commit()
    assert (tmp_path / "wal.sqlite-wal").stat().st_size > 0
    try:
        c = client(worker)
        c.push(path, user)
        copy = tmp_path / "copy.sqlite"
        c.pull(copy, user)
        rows = sqlite3.connect(copy).execute("SELECT count(*) FROM t").fetchone()
        assert rows == (50,)
    finally:
        writer.close()


def test_concurrent_pushes_of_one_version_one_wins(
    worker: LocalWorker, tmp_path: Path, user: str
) -> None:
    """Twenty backends push different files on the same pulled version at once: exactly one
    is stored, the others get ConflictError, and the stored database is the winner's."""
    from concurrent.futures import ThreadPoolExecutor

    c = client(worker)
    base = make_db(tmp_path / "base.sqlite")
    c.push(base, user)
    paths = []
    for i in range(20):
        p = tmp_path / f"b{i}.sqlite"
        p.write_bytes(base.read_bytes())
        version_path(p).write_bytes(version_path(base).read_bytes())
        conn = sqlite3.connect(p)
        conn.execute("INSERT INTO clips(title) VALUES (?)", (f"backend {i}",))
        conn.commit()
        conn.close()
        paths.append(p)

    def attempt(p: Path) -> str:
        try:
            return client(worker).push(p, user).db_version
        except ConflictError as e:
            assert e.code == "version_mismatch" and e.written.startswith("nothing")
            return "conflict"

    with ThreadPoolExecutor(max_workers=20) as pool:
        outcomes = list(pool.map(attempt, paths))
    winners = [p for p, o in zip(paths, outcomes) if o != "conflict"]
    assert len(winners) == 1, outcomes
    pulled = tmp_path / "pulled.sqlite"
    c.pull(pulled, user)
    assert dump(pulled) == dump(winners[0])
    status, storage = worker.request("GET", f"/?user={user}&save=never")
    assert status == 200 and storage["storage"].get("outside_replacement") is None
