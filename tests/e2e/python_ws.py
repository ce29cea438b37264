"""Drives Python `libsql-client` 0.3.1 (pinned in tests/e2e/requirements.txt) in its
WebSocket mode (a ws:// URL: Hrana over WebSocket, the hrana2 subprotocol) against the worker,
as an app would: `python tests/e2e/python_ws.py WS_URL TOKEN OTHER_USERS_TOKEN`.

Prints one JSON line with what it saw; exits non-zero on the first expectation that fails.
"""

import json
import sys

import libsql_client
from py_session import values_and_batches

url, token, other = sys.argv[1], sys.argv[2], sys.argv[3]
assert url.startswith("ws://"), url
seen = {}

with libsql_client.create_client_sync(url, auth_token=token) as c:
    row, seen["failed_batch"] = values_and_batches(c, "pyws")

    # Interactive transactions over the socket: committed, then rolled back.
    with c.transaction() as tx:
        tx.execute("INSERT INTO pyws (i) VALUES (20)")
        tx.execute("INSERT INTO pyws (i) VALUES (21)")
        assert tx.execute("SELECT count(*) FROM pyws").rows[0][0] == 5
        with libsql_client.create_client_sync(url, auth_token=token) as other_conn:
            assert other_conn.execute("SELECT count(*) FROM pyws").rows[0][0] == 3
        tx.commit()
    with c.transaction() as tx:
        tx.execute("DELETE FROM pyws")
        tx.rollback()
    assert c.execute("SELECT count(*) FROM pyws").rows[0][0] == 5
    seen["values"] = [repr(v) for v in row]
    seen["committed"] = 5

# Another user's token is refused at hello.
try:
    with libsql_client.create_client_sync(url, auth_token=other) as c:
        c.execute("SELECT 1")
    raise AssertionError("another user's token was accepted")
except libsql_client.LibsqlError as e:
    seen["other_user"] = str(e)
    assert "FORBIDDEN" in str(e) or "forbidden" in str(e), e

print(json.dumps(seen))
