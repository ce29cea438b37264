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
