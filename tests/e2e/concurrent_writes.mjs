// Many writers, one user, at once, as an app sends them with Promise.all:
// `node tests/e2e/concurrent_writes.mjs BASE_URL USER N`. N inserts through the published
// @libsql/client, then N through plain POST /query, all concurrent. Prints one JSON line with
// what it saw (statuses, the write queue's group sizes, rows stored); exits non-zero on the
// first expectation that fails.
import assert from "node:assert/strict";
import { createClient } from "@libsql/client";

const [base, user, count] = process.argv.slice(2);
const n = Number(count);
const client = createClient({ url: `${base}/db/${user}/`, intMode: "number" });
const seen = {};

await client.execute("CREATE TABLE IF NOT EXISTS w (id INTEGER PRIMARY KEY, via TEXT, k INTEGER)");

const viaClient = await Promise.allSettled(
  Array.from({ length: n }, (_, k) =>
    client.execute({ sql: "INSERT INTO w (via, k) VALUES ('libsql', ?)", args: [k] }),
  ),
);
seen.libsql = {
  fulfilled: viaClient.filter((r) => r.status === "fulfilled").length,
  errors: viaClient.filter((r) => r.status === "rejected").map((r) => String(r.reason)),
  rowids: viaClient.filter((r) => r.status === "fulfilled").map((r) => Number(r.value.lastInsertRowid)),
};

const viaQuery = await Promise.all(
  Array.from({ length: n }, async (_, k) => {
    const response = await fetch(`${base}/query?user=${user}`, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ sql: "INSERT INTO w (via, k) VALUES ('query', ?)", params: [k] }),
    });
    const json = await response.json();
    return { status: response.status, group: json.write_queue?.group_size ?? null, code: json.error?.code };
  }),
);
seen.query = {
  statuses: viaQuery.map((r) => r.status),
  codes: viaQuery.filter((r) => r.code).map((r) => r.code),
  group_sizes: viaQuery.map((r) => r.group),
};

const stored = await client.execute("SELECT via, count(*) AS c, count(DISTINCT k) AS d FROM w GROUP BY via ORDER BY via");
seen.stored = Object.fromEntries(stored.rows.map((r) => [r.via, { rows: Number(r.c), distinct: Number(r.d) }]));
console.log(JSON.stringify(seen));

assert.equal(seen.libsql.fulfilled, n, `@libsql/client writes refused: ${seen.libsql.errors}`);
assert.equal(new Set(seen.libsql.rowids).size, n, "two acknowledged writes got the same row");
assert.deepEqual(seen.query.statuses, Array(n).fill(200), `/query writes refused: ${seen.query.codes}`);
assert.deepEqual(seen.stored.libsql, { rows: n, distinct: n });
assert.deepEqual(seen.stored.query, { rows: n, distinct: n });
