//! Deterministic SQLite databases for the demo, the tests and the benchmarks.
//!
//! They look like the spec's user databases: `projects`, `raw_clips` and `clip_tags`, with
//! indexes, text and blobs, built from a seeded generator so every run makes the same bytes.

use rusqlite::{Connection, params};

use crate::error::Error;
use crate::sqlite;
use crate::testing::Rng;

const WORDS: &[&str] = &[
    "goal", "assist", "dribble", "corner", "header", "save", "tackle", "sprint", "pass", "volley",
    "keeper", "striker", "winger", "pitch", "match", "final", "derby", "replay", "angle", "camera",
];

fn sentence(rng: &mut Rng, words: usize) -> String {
    (0..words)
        .map(|_| WORDS[rng.below(WORDS.len() as u64) as usize])
        .collect::<Vec<_>>()
        .join(" ")
}

const SCHEMA: &str = "
    CREATE TABLE projects(
        id INTEGER PRIMARY KEY,
        name TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        settings TEXT NOT NULL
    );
    CREATE TABLE raw_clips(
        id INTEGER PRIMARY KEY,
        project_id INTEGER NOT NULL REFERENCES projects(id),
        filename TEXT NOT NULL,
        duration_ms INTEGER NOT NULL,
        notes TEXT NOT NULL,
        thumbnail BLOB NOT NULL
    );
    CREATE TABLE clip_tags(
        clip_id INTEGER NOT NULL REFERENCES raw_clips(id),
        tag TEXT NOT NULL,
        PRIMARY KEY (clip_id, tag)
    ) WITHOUT ROWID;
    CREATE INDEX raw_clips_project ON raw_clips(project_id);
    CREATE INDEX clip_tags_tag ON clip_tags(tag);
";

/// The demo database for user `a`: 3 projects, 24 clips with tags (a few tens of KB).
pub fn demo_database() -> Result<Vec<u8>, Error> {
    build(|conn, rng| fill(conn, rng, 3, 24, 256))
}

/// A database of at least `target_bytes` (at most about 32 KB above it), seeded by `seed`.
pub fn sized_database(target_bytes: usize, seed: u64) -> Result<Vec<u8>, Error> {
    let mut rng = Rng::new(seed);
    let mut conn = sqlite::create()?;
    conn.execute_batch(SCHEMA)?;
    let mut project = 0;
    loop {
        project += 1;
        fill_from(&conn, &mut rng, project, 1, 10, 2048)?;
        let size: i64 = conn.query_row(
            "SELECT page_count * page_size FROM pragma_page_count(), pragma_page_size()",
            [],
            |r| r.get(0),
        )?;
        let size = usize::try_from(size).unwrap_or(0);
        if size >= target_bytes {
            return Ok(sqlite::export(&mut conn)?.to_vec());
        }
    }
}

fn build(
    fill_fn: impl FnOnce(&Connection, &mut Rng) -> Result<(), Error>,
) -> Result<Vec<u8>, Error> {
    let mut rng = Rng::new(0x5EED);
    let mut conn = sqlite::create()?;
    conn.execute_batch(SCHEMA)?;
    fill_fn(&conn, &mut rng)?;
    Ok(sqlite::export(&mut conn)?.to_vec())
}

fn fill(
    conn: &Connection,
    rng: &mut Rng,
    projects: i64,
    clips: i64,
    blob: usize,
) -> Result<(), Error> {
    fill_from(conn, rng, 1, projects, clips / projects, blob)
}

fn fill_from(
    conn: &Connection,
    rng: &mut Rng,
    first_project: i64,
    projects: i64,
    clips_per_project: i64,
    blob_bytes: usize,
) -> Result<(), Error> {
    let tx = conn.unchecked_transaction()?;
    for p in first_project..first_project + projects {
        tx.execute(
            "INSERT INTO projects(id, name, created_at, settings) VALUES (?1, ?2, ?3, ?4)",
            params![
                p,
                format!("Project {p}: {}", sentence(rng, 3)),
                1_700_000_000_000_i64 + p * 86_400_000,
                format!(r#"{{"fps":{},"resolution":"1080p"}}"#, 24 + rng.below(37))
            ],
        )?;
        for c in 0..clips_per_project {
            let blob: Vec<u8> = (0..blob_bytes).map(|_| rng.next_u64() as u8).collect();
            tx.execute(
                "INSERT INTO raw_clips(project_id, filename, duration_ms, notes, thumbnail)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
                params![
                    p,
                    format!("clip_{p:04}_{c:04}.mp4"),
                    1000 + rng.below(120_000) as i64,
                    sentence(rng, 12),
                    blob
                ],
            )?;
            let clip_id = tx.last_insert_rowid();
            for t in 0..1 + rng.below(3) {
                tx.execute(
                    "INSERT OR IGNORE INTO clip_tags(clip_id, tag) VALUES (?1, ?2)",
                    params![
                        clip_id,
                        format!("{}{t}", WORDS[rng.below(WORDS.len() as u64) as usize])
                    ],
                )?;
            }
        }
    }
    Ok(tx.commit()?)
}

/// Databases shaped like what users upload, for the import tests: full-text notes (with their
/// own content, over another table, and contentless), a GeoPackage-like file with an rtree
/// spatial index (only where this SQLite has rtree: natively, not in the Worker's trimmed
/// build), AUTOINCREMENT with its top rows deleted, and a mix of blobs, `WITHOUT ROWID`,
/// generated columns, views and triggers.
pub fn real_world() -> Result<Vec<(&'static str, Vec<u8>)>, Error> {
    let build = |sql: &str| -> Result<Vec<u8>, Error> {
        let mut conn = sqlite::create()?;
        conn.execute_batch(sql)?;
        Ok(sqlite::export(&mut conn)?.to_vec())
    };
    let mut out = vec![
        (
            "fts5_notes",
            build(
                "CREATE TABLE clips(id INTEGER PRIMARY KEY, title TEXT);
                 INSERT INTO clips VALUES (1, 'keeper save'), (2, 'late winner'), (7, 'corner routine');
                 CREATE VIRTUAL TABLE notes USING fts5(title, body);
                 INSERT INTO notes(rowid, title, body) VALUES
                   (3, 'match report', 'the keeper made a double save'),
                   (9, 'training', 'corner routines and a volley drill'),
                   (12, 'derby', 'a late winner from the striker');
                 CREATE VIRTUAL TABLE clips_fts USING fts5(title, content='clips', content_rowid='id');
                 INSERT INTO clips_fts(clips_fts) VALUES ('rebuild');
                 CREATE VIRTUAL TABLE tags_index USING fts5(tag, content='');
                 INSERT INTO tags_index(rowid, tag) VALUES (1, 'goal');",
            )?,
        ),
        (
            "autoincrement",
            build(
                "CREATE TABLE events(id INTEGER PRIMARY KEY AUTOINCREMENT, what TEXT);
                 INSERT INTO events(what) VALUES ('a'), ('b'), ('c'), ('d'), ('e'), ('f'), ('g'), ('h'), ('i'), ('j');
                 DELETE FROM events WHERE id > 7;",
            )?,
        ),
        (
            "mixed",
            build(
                "CREATE TABLE media(id INTEGER PRIMARY KEY, thumb BLOB, bytes INTEGER,
                                    kb REAL GENERATED ALWAYS AS (bytes / 1024.0) VIRTUAL,
                                    label TEXT GENERATED ALWAYS AS (upper(substr(hex(thumb), 1, 4))) STORED);
                 INSERT INTO media(thumb, bytes) VALUES (x'00ff10', 2048), (zeroblob(3000), 4096), (NULL, 0);
                 CREATE TABLE ratings(clip INTEGER, who TEXT, stars INTEGER, PRIMARY KEY (clip, who)) WITHOUT ROWID;
                 INSERT INTO ratings VALUES (1, 'ann', 5), (1, 'bo', 3), (2, 'ann', 4);
                 CREATE TABLE audit(n INTEGER PRIMARY KEY, what TEXT);
                 CREATE VIEW good AS SELECT clip, avg(stars) AS avg_stars FROM ratings GROUP BY clip HAVING avg_stars >= 4;
                 CREATE TRIGGER rated AFTER INSERT ON ratings BEGIN INSERT INTO audit(what) VALUES ('rated ' || new.clip); END;",
            )?,
        ),
    ];
    let spatial = "CREATE TABLE features(fid INTEGER PRIMARY KEY, name TEXT, geom BLOB);
         INSERT INTO features VALUES (1, 'pitch A', x'47500001'), (2, 'pitch B', x'47500002');
         CREATE VIRTUAL TABLE rtree_features_geom USING rtree(id, minx, maxx, miny, maxy);
         INSERT INTO rtree_features_geom VALUES (1, 0, 10, 0, 5), (2, 20, 30, 0, 5);";
    match build(spatial) {
        Ok(bytes) => out.push(("geopackage", bytes)),
        // This SQLite was built without rtree (the Worker's trimmed build).
        Err(e) if e.to_string().contains("no such module") => {}
        Err(e) => return Err(e),
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    #[cfg(all(target_family = "wasm", target_os = "unknown"))]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use std::rc::Rc;

    use super::*;

    /// The demo database is deterministic and holds the spec's tables with rows.
    #[test]
    fn demo_is_deterministic_and_populated() {
        let a = demo_database().unwrap();
        assert_eq!(a, demo_database().unwrap());
        let body: Rc<[u8]> = a.into();
        let loaded = sqlite::load(&body).unwrap();
        assert_eq!(
            sqlite::list_tables(&loaded.conn).unwrap(),
            ["projects", "raw_clips", "clip_tags"]
        );
        let clips: i64 = loaded
            .conn
            .query_row("SELECT count(*) FROM raw_clips", [], |r| r.get(0))
            .unwrap();
        assert_eq!(clips, 24);
    }

    /// Sized databases reach their target and stay close to it.
    #[test]
    fn sized_database_hits_target() {
        let bytes = sized_database(200 * 1024, 1).unwrap();
        assert!(bytes.len() >= 200 * 1024);
        assert!(bytes.len() < 240 * 1024, "{}", bytes.len());
    }
}
