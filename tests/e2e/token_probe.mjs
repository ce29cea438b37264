// One `SELECT 1` through @libsql/client and through drizzle-orm (over that client), each
// pinned in package-lock.json: `node tests/e2e/token_probe.mjs URL TOKEN`. Prints one JSON
// line, per client `{"ok": true}` or `{"error": "<what the app sees>"}`, so tests can check
// how each client reports a refused token.
import { createClient } from "@libsql/client";
import { drizzle } from "drizzle-orm/libsql";
import { sql } from "drizzle-orm";

const [url, authToken] = process.argv.slice(2);

// The error as an app would log it: message, code, and the causes it wraps.
function describe(e) {
  const parts = [];
  for (let c = e; c; c = c.cause) parts.push(`${c.name}: ${c.message} [${c.code ?? ""}]`);
  return parts.join(" <- ");
}

async function probe(run) {
  try {
    await run();
    return { ok: true };
  } catch (e) {
    return { error: describe(e) };
  }
}

const client = createClient({ url, authToken });
const seen = {
  "@libsql/client": await probe(() => client.execute("SELECT 1")),
  "drizzle-orm": await probe(() => drizzle(client).run(sql`SELECT 1`)),
};
client.close();
console.log(JSON.stringify(seen));
