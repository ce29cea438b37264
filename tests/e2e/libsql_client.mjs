// Drives the published @libsql/client (pinned in package-lock.json) against the worker, as an
// app would: `node tests/e2e/libsql_client.mjs URL TOKEN`. Prints one JSON line with what it
// saw; exits non-zero on the first expectation that fails.
import assert from "node:assert/strict";
import { createClient } from "@libsql/client";

const [url, authToken] = process.argv.slice(2);
const client = createClient({ url, authToken: authToken || undefined, intMode: "bigint" });
const seen = {};

await client.execute(
  "CREATE TABLE IF NOT EXISTS vals (id INTEGER PRIMARY KEY, i INTEGER, big INTEGER, r REAL, t TEXT, b BLOB, n)",
);

// Every value type, through execute() with positional arguments.
const big = 9007199254740993n; // 2^53 + 1: not representable as a JS number
const blob = new Uint8Array([0, 1, 2, 254, 255]);
const inserted = await client.execute({
  sql: "INSERT INTO vals (i, big, r, t, b, n) VALUES (?, ?, ?, ?, ?, ?)",
  args: [42, big, 1.5, "héllo ☃", blob, null],
});
assert.equal(inserted.rowsAffected, 1);
assert.equal(typeof inserted.lastInsertRowid, "bigint");
const row = (await client.execute("SELECT i, big, r, t, b, n FROM vals WHERE id = 1")).rows[0];
assert.equal(row.i, 42n);
assert.equal(row.big, big);
assert.equal(row.r, 1.5);
assert.equal(row.t, "héllo ☃");
assert.deepEqual(new Uint8Array(row.b), blob);
assert.equal(row.n, null);
seen.values = { i: String(row.i), big: String(row.big), r: row.r, t: row.t, b: Array.from(new Uint8Array(row.b)), n: row.n };

// Named arguments.
const named = await client.execute({ sql: "SELECT :x + 1 AS y", args: { x: 41n } });
assert.equal(named.rows[0].y, 42n);

// batch(): one transaction.
const results = await client.batch(
  [
    { sql: "INSERT INTO vals (i) VALUES (?)", args: [100n] },
    { sql: "INSERT INTO vals (i) VALUES (?)", args: [101n] },
    "SELECT count(*) AS c FROM vals",
  ],
  "write",
);
assert.equal(results.length, 3);
assert.equal(results[2].rows[0].c, 3n);
seen.batch_count = String(results[2].rows[0].c);

// A failing batch rolls back entirely.
await assert.rejects(
  client.batch(["INSERT INTO vals (i) VALUES (200)", "INSERT INTO no_such_table VALUES (1)"], "write"),
  (e) => {
    seen.failing_batch = { code: e.code, message: e.message };
    return /no such table/.test(e.message);
  },
);
const after = await client.execute("SELECT count(*) AS c FROM vals WHERE i = 200");
assert.equal(after.rows[0].c, 0n);

// A plain SQL error.
await assert.rejects(client.execute("SELECT * FROM missing"), (e) => {
  seen.sql_error = { code: e.code, message: e.message };
  return /no such table/.test(e.message);
});

// Declared column types come back as columnTypes.
const typed = await client.execute("SELECT i, t, b, n, 1 AS e FROM vals LIMIT 1");
assert.deepEqual(typed.columnTypes, ["INTEGER", "TEXT", "BLOB", "", ""]);

// A read batch refuses writes (the client opens it with BEGIN TRANSACTION READONLY).
await assert.rejects(client.batch(["INSERT INTO vals (i) VALUES (250)"], "read"), (e) => {
  seen.read_batch = { code: e.code, message: e.message };
  return /readonly/i.test(e.message);
});

// An interactive transaction across several HTTP requests (the baton carries the stream):
// its own writes are visible inside, invisible outside until commit.
const tx = await client.transaction("write");
await tx.execute("INSERT INTO vals (i) VALUES (300)");
const inside = await tx.execute("SELECT count(*) AS c FROM vals WHERE i = 300");
assert.equal(inside.rows[0].c, 1n);
const outside = await client.execute("SELECT count(*) AS c FROM vals WHERE i = 300");
assert.equal(outside.rows[0].c, 0n);
await tx.batch(["INSERT INTO vals (i) VALUES (301)", "INSERT INTO vals (i) VALUES (302)"]);
await tx.commit();
const committed = await client.execute("SELECT count(*) AS c FROM vals WHERE i >= 300");
assert.equal(committed.rows[0].c, 3n);
seen.transaction = "committed " + String(committed.rows[0].c);

// Rolled back: nothing of it stays.
const rb = await client.transaction("write");
await rb.execute("DELETE FROM vals");
await rb.rollback();
const kept = await client.execute("SELECT count(*) AS c FROM vals");
assert.equal(kept.rows[0].c, 6n);

client.close();
console.log(JSON.stringify(seen));
