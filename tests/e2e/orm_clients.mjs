// Drives drizzle-orm and kysely (through @libsql/kysely-libsql), both pinned in
// package-lock.json and both over the published @libsql/client, against the worker as an app
// would: `node tests/e2e/orm_clients.mjs URL TOKEN`. Each makes its schema, does CRUD, a
// relational query, and a transaction committed and one rolled back. Prints one JSON line with
// what it saw; exits non-zero on the first expectation that fails.
import assert from "node:assert/strict";
import { createClient } from "@libsql/client";
import { drizzle } from "drizzle-orm/libsql";
import { relations, eq, sql } from "drizzle-orm";
import { sqliteTable, integer, text } from "drizzle-orm/sqlite-core";
import { Kysely } from "kysely";
import { LibsqlDialect } from "@libsql/kysely-libsql";

const [url, authToken] = process.argv.slice(2);
const client = createClient({ url, authToken: authToken || undefined });
const seen = {};

// drizzle-orm
const authors = sqliteTable("authors", {
  id: integer("id").primaryKey(),
  name: text("name").notNull(),
});
const books = sqliteTable("books", {
  id: integer("id").primaryKey(),
  authorId: integer("author_id").notNull().references(() => authors.id),
  title: text("title").notNull(),
});
const authorsRelations = relations(authors, ({ many }) => ({ books: many(books) }));
const booksRelations = relations(books, ({ one }) => ({
  author: one(authors, { fields: [books.authorId], references: [authors.id] }),
}));
const db = drizzle(client, { schema: { authors, books, authorsRelations, booksRelations } });

await db.run(sql`CREATE TABLE authors (id INTEGER PRIMARY KEY, name TEXT NOT NULL)`);
await db.run(
  sql`CREATE TABLE books (id INTEGER PRIMARY KEY, author_id INTEGER NOT NULL REFERENCES authors(id), title TEXT NOT NULL)`,
);
const [ada] = await db.insert(authors).values({ name: "Ada" }).returning();
await db.insert(books).values([
  { authorId: ada.id, title: "Notes" },
  { authorId: ada.id, title: "Engines" },
]);
await db.update(books).set({ title: "Notes, revised" }).where(eq(books.title, "Notes"));
await db.delete(books).where(eq(books.title, "Engines"));
const withBooks = await db.query.authors.findMany({ with: { books: true } });
assert.equal(withBooks.length, 1);
assert.deepEqual(
  withBooks[0].books.map((b) => b.title),
  ["Notes, revised"],
);
seen.drizzle_relational = withBooks;

await db.transaction(async (tx) => {
  const [grace] = await tx.insert(authors).values({ name: "Grace" }).returning();
  await tx.insert(books).values({ authorId: grace.id, title: "Compilers" });
  const inside = await tx.select().from(books);
  assert.equal(inside.length, 2);
});
await assert.rejects(
  db.transaction(async (tx) => {
    await tx.insert(authors).values({ name: "Nobody" });
    tx.rollback();
  }),
  /Rollback/,
);
const names = (await db.select().from(authors)).map((a) => a.name);
assert.deepEqual(names, ["Ada", "Grace"]);
seen.drizzle_authors = names;

// kysely, on the same client
const k = new Kysely({ dialect: new LibsqlDialect({ client }) });
await k.schema
  .createTable("pets")
  .addColumn("id", "integer", (c) => c.primaryKey())
  .addColumn("owner_id", "integer", (c) => c.notNull().references("authors.id"))
  .addColumn("name", "text", (c) => c.notNull())
  .execute();
await k.insertInto("pets").values({ owner_id: ada.id, name: "Rex" }).execute();
await k.insertInto("pets").values({ owner_id: ada.id, name: "Tom" }).execute();
await k.updateTable("pets").set({ name: "Tommy" }).where("name", "=", "Tom").execute();
await k.deleteFrom("pets").where("name", "=", "Rex").execute();
const joined = await k
  .selectFrom("pets")
  .innerJoin("authors", "authors.id", "pets.owner_id")
  .select(["pets.name as pet", "authors.name as owner"])
  .execute();
assert.deepEqual(joined, [{ pet: "Tommy", owner: "Ada" }]);
seen.kysely_join = joined;

await k.transaction().execute(async (trx) => {
  await trx.insertInto("pets").values({ owner_id: ada.id, name: "Kit" }).execute();
  const inside = await trx.selectFrom("pets").selectAll().execute();
  assert.equal(inside.length, 2);
});
await assert.rejects(
  k.transaction().execute(async (trx) => {
    await trx.insertInto("pets").values({ owner_id: ada.id, name: "Ghost" }).execute();
    throw new Error("abort on purpose");
  }),
  /abort on purpose/,
);
const pets = (await k.selectFrom("pets").select("name").orderBy("id").execute()).map((p) => p.name);
assert.deepEqual(pets, ["Tommy", "Kit"]);
seen.kysely_pets = pets;

await k.destroy();
client.close();
console.log(JSON.stringify(seen));
