"""What both Python `libsql-client` sessions (Hrana v1 over HTTP in python_clients.py, hrana2
over WebSocket in python_ws.py) check alike."""

import libsql_client

# Every SQLite value type, as Python hands it over and expects it back.
VALUES = (2**62 + 1, 1.5, "héllo ☃", b"\x00\x01\xfe\xff", None)


def values_and_batches(c, table):
    """Creates `table`, round-trips VALUES, a named parameter, a batch and a failing batch
    that stores nothing. Leaves 3 rows; returns (row 1 as read back, the failing batch's
    error)."""
    c.execute(f"CREATE TABLE {table} (id INTEGER PRIMARY KEY, i INTEGER, r REAL, t TEXT, b BLOB, n)")
    rs = c.execute(f"INSERT INTO {table} (i, r, t, b, n) VALUES (?, ?, ?, ?, ?)", list(VALUES))
    assert rs.rows_affected == 1 and rs.last_insert_rowid == 1, rs
    row = c.execute(f"SELECT i, r, t, b, n FROM {table} WHERE id = 1").rows[0]
    assert tuple(row) == VALUES, tuple(row)
    named = c.execute("SELECT :x + 1", {"x": 41}).rows[0][0]
    assert named == 42, named
    results = c.batch(
        [f"INSERT INTO {table} (i) VALUES (10)", f"INSERT INTO {table} (i) VALUES (11)", f"SELECT count(*) FROM {table}"]
    )
    assert results[2].rows[0][0] == 3, results[2].rows
    try:
        c.batch([f"INSERT INTO {table} (i) VALUES (12)", "INSERT INTO missing VALUES (1)"])
        raise AssertionError("a failing batch was accepted")
    except libsql_client.LibsqlError as e:
        failed = str(e)
    assert c.execute(f"SELECT count(*) FROM {table}").rows[0][0] == 3
    return row, failed
