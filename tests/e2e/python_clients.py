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
from py_session import VALUES, values_and_batches

url, token = sys.argv[1], sys.argv[2]
seen = {}

# libsql-client 0.3.1
with libsql_client.create_client_sync(url, auth_token=token) as c:
    row, seen["libsql_client_failed_batch"] = values_and_batches(c, "py")
    seen["libsql_client_values"] = [repr(v) for v in row]

# libsql (DB-API): implicit transactions, committed and rolled back
conn = libsql.connect(database=url, auth_token=token)
cur = conn.cursor()
assert cur.execute("SELECT i, r, t, b, n FROM py WHERE id = 1").fetchone() == VALUES
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
