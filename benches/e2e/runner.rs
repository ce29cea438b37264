//! Talking to the worker: one measured request, the series run per size, and seeding a
//! deployed bucket.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::harness;

/// One measured request.
#[derive(Clone)]
pub struct Sample {
    /// Client round trip.
    pub client_ms: f64,
    /// The answer.
    pub json: Value,
}

pub struct Client {
    base: String,
    agent: ureq::Agent,
    token: Option<String>,
}

impl Client {
    pub fn new(base: &str) -> Self {
        Self {
            base: base.trim_end_matches('/').to_owned(),
            agent: ureq::Agent::new_with_config(
                ureq::Agent::config_builder()
                    .http_status_as_error(false)
                    .timeout_global(Some(Duration::from_secs(300)))
                    .build(),
            ),
            token: std::env::var("AUTH_TOKEN").ok().filter(|t| !t.is_empty()),
        }
    }

    pub fn sync(&self, user: &str) -> Sample {
        self.call("GET", &format!("/?user={user}"))
    }

    /// `POST /migrate?to=durable_object` (the freeze, the import into the object, the switch)
    /// then `requests` timed `GET /do`: (move sample, query samples).
    pub fn durable_object(&self, user: &str, requests: usize) -> (Sample, Vec<Sample>) {
        let import = self.call("POST", &format!("/migrate?user={user}&to=durable_object"));
        assert_eq!(
            import.json["success"], true,
            "import {user}: {}",
            import.json
        );
        self.call("GET", &format!("/do?user={user}"));
        let queries = (0..requests)
            .map(|_| self.call("GET", &format!("/do?user={user}")))
            .collect();
        (import, queries)
    }

    /// `POST {path}?user=...` with a JSON body (`/query` or `/do/query`).
    pub fn query_at(&self, path: &str, user: &str, body: &Value) -> Sample {
        self.send(
            "POST",
            &format!("{path}?user={user}"),
            body.to_string().into_bytes(),
        )
    }

    /// `GET path`, answered 200.
    pub fn get(&self, path: &str) -> Sample {
        self.call("GET", path)
    }

    fn call(&self, method: &str, path: &str) -> Sample {
        self.send(method, path, Vec::new())
    }

    fn send(&self, method: &str, path: &str, body: Vec<u8>) -> Sample {
        let url = format!("{}{path}", self.base);
        let mut req = ureq::http::Request::builder().method(method).uri(&url);
        if let Some(t) = &self.token {
            req = req.header("Authorization", format!("Bearer {t}"));
        }
        let req = req.body(body).expect("request");
        let start = Instant::now();
        let mut response = self
            .agent
            .run(req)
            .unwrap_or_else(|e| panic!("{method} {url}: {e}"));
        let text = response.body_mut().read_to_string().expect("read body");
        let client_ms = start.elapsed().as_secs_f64() * 1000.0;
        let status = response.status().as_u16();
        assert_eq!(status, 200, "{method} {url}: {status} {text}");
        Sample {
            client_ms,
            json: serde_json::from_str(&text).expect("JSON body"),
        }
    }
}

pub fn run_size(
    client: &Client,
    size_kb: usize,
    image: &[u8],
    requests: usize,
) -> (Sample, Vec<Sample>) {
    let user = format!("bench-{size_kb}");
    let cold = client.sync(&user);
    for _ in 0..2 {
        client.sync(&user);
    }
    let warm = (0..requests)
        .map(|_| client.sync(&user))
        .collect::<Vec<_>>();
    for s in &warm {
        assert_eq!(
            s.json["db_info"]["size_bytes"],
            image.len(),
            "{size_kb} KB: wrong object"
        );
    }
    (cold, warm)
}

pub fn seed_remote(size_kb: usize, image: &[u8]) {
    let file = std::env::temp_dir().join(format!("bench-{size_kb}.sqlite"));
    std::fs::write(&file, image).expect("write temp database");
    let status = std::process::Command::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/node_modules/.bin/wrangler"
    ))
    .args([
        "r2",
        "object",
        "put",
        &format!("{}/bench-{size_kb}/database.sqlite", harness::BUCKET),
        "--remote",
        "--file",
    ])
    .arg(&file)
    .status()
    .expect("run wrangler");
    assert!(status.success(), "seeding bench-{size_kb} remotely failed");
}

/// The write requests `make bench` measures, by name, with their `/query` bodies.
pub fn write_kinds() -> Vec<(&'static str, Value)> {
    vec![
        (
            "insert 1 row",
            json!({"sql": "INSERT INTO projects(name, created_at, settings) VALUES ('bench', 0, '{}')"}),
        ),
        (
            "insert 100 rows",
            json!({"sql": "WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n WHERE x < 100) INSERT INTO projects(name, created_at, settings) SELECT 'bench ' || x, x, '{}' FROM n"}),
        ),
        (
            "update 1% of rows",
            json!({"sql": "UPDATE raw_clips SET notes = notes || '.' WHERE id % 100 = 1"}),
        ),
        (
            "read-only batch, cache hit",
            json!([{"sql": "SELECT count(*) FROM raw_clips"}, {"sql": "SELECT id, name FROM projects LIMIT 10"}]),
        ),
    ]
}

/// `requests` timed requests of each write kind (after one warm-up each), through `path`
/// (`/query` on R2, `/do/query` on the Durable Object).
pub fn run_writes(
    client: &Client,
    path: &str,
    user: &str,
    requests: usize,
) -> Vec<(&'static str, Vec<Sample>)> {
    write_kinds()
        .into_iter()
        .map(|(name, body)| {
            client.query_at(path, user, &body);
            let samples: Vec<Sample> = (0..requests)
                .map(|_| client.query_at(path, user, &body))
                .collect();
            let writes = name != "read-only batch, cache hit";
            for s in &samples {
                if s.json["route"] == "r2" {
                    assert_eq!(s.json["db_info"]["saved"], writes, "{name}: {}", s.json);
                }
            }
            (name, samples)
        })
        .collect()
}

/// A 90 %-read / 10 %-write mix through `path`: `requests` requests, every tenth a one-row
/// insert, the rest a read (`SELECT count(*)` and ten projects).
pub fn run_mix(client: &Client, path: &str, user: &str, requests: usize) -> Vec<Sample> {
    let kinds = write_kinds();
    let (read, write) = (&kinds[3].1, &kinds[0].1);
    (0..requests)
        .map(|i| client.query_at(path, user, if i % 10 == 9 { write } else { read }))
        .collect()
}
