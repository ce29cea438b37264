//! Property test of the load path: thousands of random and mutated database images never
//! panic; each one either loads (and then lists and exports) or is a typed corrupt-data error.

// Host only: thousands of SQLite opens are quick natively, slow under the wasm test runner.
#![cfg(not(all(target_family = "wasm", target_os = "unknown")))]

use std::rc::Rc;

use workers_sqlite_poc::error::Error;
use workers_sqlite_poc::testing::Rng;
use workers_sqlite_poc::{fixtures, sqlite};

fn mutate(base: &[u8], rng: &mut Rng) -> Vec<u8> {
    let mut bytes = base.to_vec();
    match rng.index(6) {
        // Flip a few random bytes anywhere (header included).
        0 => {
            for _ in 0..1 + rng.index(8) {
                let i = rng.index(bytes.len());
                bytes[i] ^= 1 << rng.index(8);
            }
        }
        // Scribble over a run of bytes inside one page.
        1 => {
            let start = rng.index(bytes.len());
            let end = (start + 1 + rng.index(512)).min(bytes.len());
            for b in &mut bytes[start..end] {
                *b = rng.next_u64() as u8;
            }
        }
        // Truncate at an arbitrary point.
        2 => bytes.truncate(rng.index(bytes.len())),
        // Truncate at a page boundary (passes the length check, fails later).
        3 => {
            let pages = bytes.len() / 4096;
            bytes.truncate(4096 * (1 + rng.index(pages.max(1))));
        }
        // Corrupt a header field SQLite trusts.
        4 => {
            let field = [16, 18, 19, 20, 21, 28, 32, 36, 44, 52, 56, 92][rng.index(12)];
            bytes[field] = rng.next_u64() as u8;
        }
        // Random bytes behind a valid magic string.
        _ => {
            for b in &mut bytes[16..] {
                *b = rng.next_u64() as u8;
            }
        }
    }
    bytes
}

fn exercise(bytes: Vec<u8>) -> Result<(), Error> {
    let body: Rc<[u8]> = bytes.into();
    let mut loaded = sqlite::load(&body)?;
    sqlite::list_tables(&loaded.conn)?;
    sqlite::export(&mut loaded.conn)?;
    Ok(())
}

/// 4,000 mutated and random images: never a panic, never an internal error.
#[test]
fn mutated_images_load_or_fail_typed() {
    let bases = [
        fixtures::demo_database().unwrap(),
        fixtures::sized_database(96 * 1024, 9).unwrap(),
    ];
    let mut rng = Rng::new(0xC0FF_EE00_D15E_A5E5);
    let (mut loaded, mut rejected) = (0, 0);
    for case in 0..4000 {
        let bytes = if case % 10 == 9 {
            (0..rng.index(20_000))
                .map(|_| rng.next_u64() as u8)
                .collect()
        } else {
            mutate(&bases[case % 2], &mut rng)
        };
        match exercise(bytes) {
            Ok(()) => loaded += 1,
            Err(Error::CorruptDatabase(_)) => rejected += 1,
            Err(other) => panic!("case {case}: unexpected error kind: {other:?}"),
        }
    }
    eprintln!("fuzz: {loaded} loaded, {rejected} rejected as corrupt");
    assert!(
        loaded > 0 && rejected > 0,
        "{loaded} loaded, {rejected} rejected"
    );
}
