"""Drives the published Python clients (pinned in tests/e2e/requirements.txt) against the
worker as an app would: `python tests/e2e/python_clients.py URL TOKEN`.

- `libsql-client` 0.3.1 speaks Hrana v1 over HTTP (`v1/execute`, `v1/batch`); its batches
  are transactions (it has no interactive transactions over HTTP).
- `libsql` (Turso's current client, the Rust crate's remote mode underneath) reads through
  `v3/cursor` and runs in an implicit transaction until `commit()`.

Prints one JSON line with what it saw; exits non-zero on the first expectation that fails.
"""

import json
import sys

import libsql
import libsql_client

url, token = sys.argv[1], sys.argv[2]
seen = {}
values = (2**62 + 1, 1.5, "héllo ☃", b"\x00\x01\xfe\xff", None)

# libsql-client 0.3.1
with libsql_client.create_client_sync(url, auth_token=token) as c:
    c.execute("CREATE TABLE py (id INTEGER PRIMARY KEY, i INTEGER, r REAL, t TEXT, b BLOB, n)")
    rs = c.execute("INSERT INTO py (i, r, t, b, n) VALUES (?, ?, ?, ?, ?)", list(values))
    assert rs.rows_affected == 1 and rs.last_insert_rowid == 1, rs
    row = c.execute("SELECT i, r, t, b, n FROM py WHERE id = 1").rows[0]
    assert tuple(row) == values, tuple(row)
    named = c.execute("SELECT :x + 1", {"x": 41}).rows[0][0]
    assert named == 42, named
    results = c.batch(
        ["INSERT INTO py (i) VALUES (10)", "INSERT INTO py (i) VALUES (11)", "SELECT count(*) FROM py"]
    )
    assert results[2].rows[0][0] == 3, results[2].rows
    try:
        c.batch(["INSERT INTO py (i) VALUES (12)", "INSERT INTO missing VALUES (1)"])
        raise AssertionError("a failing batch was accepted")
    except libsql_client.LibsqlError as e:
        seen["libsql_client_failed_batch"] = str(e)
    assert c.execute("SELECT count(*) FROM py").rows[0][0] == 3
    seen["libsql_client_values"] = [repr(v) for v in row]

# libsql (DB-API): implicit transactions, committed and rolled back
conn = libsql.connect(database=url, auth_token=token)
cur = conn.cursor()
assert cur.execute("SELECT i, r, t, b, n FROM py WHERE id = 1").fetchone() == values
cur.execute("INSERT INTO py (i) VALUES (?)", (20,))
cur.execute("INSERT INTO py (i) VALUES (?)", (21,))
inside = cur.execute("SELECT count(*) FROM py").fetchone()[0]
assert inside == 5, inside
conn.commit()
cur.execute("DELETE FROM py")
conn.rollback()
after = cur.execute("SELECT count(*) FROM py").fetchone()[0]
assert after == 5, after
rows = cur.execute("SELECT i FROM py WHERE i IN (20, 21) ORDER BY i").fetchall()
assert rows == [(20,), (21,)], rows
seen["libsql_committed"] = after
conn.close()

# Seen from a fresh connection: the commit is stored, the rollback is not.
with libsql_client.create_client_sync(url, auth_token=token) as c:
    assert c.execute("SELECT count(*) FROM py").rows[0][0] == 5

print(json.dumps(seen))
