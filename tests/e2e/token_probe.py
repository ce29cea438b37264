"""One `SELECT 1` through each published Python client (pinned in tests/e2e/requirements.txt):
`python tests/e2e/token_probe.py URL TOKEN`. Prints one JSON line, per client `{"ok": true}`
or `{"error": "<what the app sees>"}`, so tests can check how each reports a refused token.
"""

import json
import sys

import libsql
import libsql_client

url, token = sys.argv[1], sys.argv[2]


def probe(run):
    try:
        run()
        return {"ok": True}
    except Exception as e:  # noqa: BLE001 - the point is to report whatever the client raises
        return {"error": f"{type(e).__name__}: {e}"}


def with_libsql_client():
    with libsql_client.create_client_sync(url, auth_token=token) as c:
        c.execute("SELECT 1")


def with_libsql():
    conn = libsql.connect(database=url, auth_token=token)
    try:
        conn.execute("SELECT 1").fetchall()
    finally:
        conn.close()


print(json.dumps({"libsql-client": probe(with_libsql_client), "libsql": probe(with_libsql)}))
