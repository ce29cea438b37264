// Drives the published @libsql/client (pinned in package-lock.json) over its WebSocket
// transport (a ws:// URL, the hrana3 subprotocol) against the worker, as an app would:
// `node tests/e2e/ws_clients.mjs WS_URL TOKEN OTHER_USERS_TOKEN EXPIRED_TOKEN`. Prints one JSON
// line with what it saw; exits non-zero on the first expectation that fails.
import assert from "node:assert/strict";
import { createClient } from "@libsql/client";

const [url, token, otherToken, expiredToken] = process.argv.slice(2);
assert.match(url, /^ws:\/\//);
const client = createClient({ url, authToken: token, intMode: "bigint" });
const seen = {};

await client.execute("CREATE TABLE IF NOT EXISTS vals (id INTEGER PRIMARY KEY, i INTEGER, r REAL, t TEXT, b BLOB, n)");

// Every value type, positional and named arguments, declared column types.
const big = 9007199254740993n;
const blob = new Uint8Array([0, 1, 2, 254, 255]);
const inserted = await client.execute({
  sql: "INSERT INTO vals (i, r, t, b, n) VALUES (?, ?, ?, ?, ?)",
  args: [big, 1.5, "héllo ☃", blob, null],
});
assert.equal(inserted.rowsAffected, 1);
assert.equal(inserted.lastInsertRowid, 1n);
const selected = await client.execute({ sql: "SELECT i, r, t, b, n FROM vals WHERE id = :id", args: { id: 1n } });
const row = selected.rows[0];
assert.equal(row.i, big);
assert.equal(row.r, 1.5);
assert.equal(row.t, "héllo ☃");
assert.deepEqual(new Uint8Array(row.b), blob);
assert.equal(row.n, null);
assert.deepEqual(selected.columnTypes, ["INTEGER", "REAL", "TEXT", "BLOB", ""]);
seen.values = { i: String(row.i), t: row.t };

// The same statement again: the client stores its SQL on the connection (store_sql).
for (let k = 0; k < 3; k++) {
  await client.execute({ sql: "INSERT INTO vals (i) VALUES (?)", args: [BigInt(k)] });
}

// batch(): one transaction, through a hrana3 cursor; a failing one stores nothing.
const results = await client.batch(
  ["INSERT INTO vals (i) VALUES (100)", "INSERT INTO vals (i) VALUES (101)", "SELECT count(*) AS c FROM vals"],
  "write",
);
assert.equal(results[2].rows[0].c, 6n);
await assert.rejects(
  client.batch(["INSERT INTO vals (i) VALUES (200)", "INSERT INTO no_such_table VALUES (1)"], "write"),
  (e) => {
    seen.failing_batch = e.code;
    return /no such table/.test(e.message);
  },
);
await assert.rejects(client.batch(["INSERT INTO vals (i) VALUES (300)"], "read"), (e) => {
  seen.read_batch = e.code;
  return e.code === "SQLITE_READONLY";
});
assert.equal((await client.execute("SELECT count(*) AS c FROM vals WHERE i IN (200, 300)")).rows[0].c, 0n);
await client.executeMultiple("CREATE TABLE IF NOT EXISTS m(x); INSERT INTO m VALUES (1); INSERT INTO m VALUES (2);");

// Interactive transactions: committed, rolled back, and one that lost a race.
const tx = await client.transaction("write");
await tx.execute("INSERT INTO vals (i) VALUES (400)");
await tx.batch(["INSERT INTO vals (i) VALUES (401)", "INSERT INTO vals (i) VALUES (402)"]);
const inside = await tx.execute("SELECT count(*) AS c FROM vals WHERE i BETWEEN 400 AND 499");
assert.equal(inside.rows[0].c, 3n);
const outside = createClient({ url, authToken: token, intMode: "bigint" });
assert.equal((await outside.execute("SELECT count(*) AS c FROM vals WHERE i BETWEEN 400 AND 499")).rows[0].c, 0n, "uncommitted writes are invisible");
await tx.commit();
assert.equal((await outside.execute("SELECT count(*) AS c FROM vals WHERE i BETWEEN 400 AND 499")).rows[0].c, 3n);

const rolled = await client.transaction("write");
await rolled.execute("DELETE FROM vals");
await rolled.rollback();
assert.equal((await client.execute("SELECT count(*) AS c FROM vals")).rows[0].c, 9n);

const loser = await client.transaction("write");
await loser.execute("SELECT count(*) FROM vals");
await loser.execute("INSERT INTO vals (i) VALUES (500)");
await outside.execute("INSERT INTO vals (i) VALUES (501)");
await assert.rejects(loser.commit(), (e) => {
  seen.lost_race = { code: e.code, message: e.message };
  return e.code === "TRANSACTION_CONFLICT";
});
loser.close();
assert.equal((await client.execute("SELECT count(*) AS c FROM vals WHERE i = 500")).rows[0].c, 0n, "nothing of the loser stored");
seen.transactions = "committed 3, rolled back, lost race refused";

// 20 concurrent inserts over one connection: all acknowledged, all stored, distinct rowids.
const n = 20;
const concurrent = await Promise.allSettled(
  Array.from({ length: n }, (_, k) => client.execute({ sql: "INSERT INTO vals (i) VALUES (?)", args: [BigInt(1000 + k)] })),
);
const failed = concurrent.filter((r) => r.status === "rejected").map((r) => String(r.reason));
assert.deepEqual(failed, []);
const rowids = new Set(concurrent.map((r) => String(r.value.lastInsertRowid)));
assert.equal(rowids.size, n);
assert.equal((await outside.execute("SELECT count(*) AS c FROM vals WHERE i BETWEEN 1000 AND 1999")).rows[0].c, BigInt(n));
seen.concurrent = n;
outside.close();
client.close();

// Tokens: another user's is refused at hello (403), an expired one (401); nothing runs.
for (const [name, bad, expected] of [["other_user", otherToken, /forbidden/i], ["expired", expiredToken, /unauthorized.*expired/i]]) {
  const refused = createClient({ url, authToken: bad });
  await assert.rejects(refused.execute("SELECT 1"), (e) => {
    seen[name] = { code: e.code, message: e.message };
    return expected.test(`${e.code} ${e.message}`);
  });
  refused.close();
}
console.log(JSON.stringify(seen));
