//! A real `workerd` (through `wrangler dev`) with a private local R2 directory, started and
//! stopped by the test that owns it.

use std::fs;
use std::net::TcpListener;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;

/// The bucket named in wrangler.toml.
pub const BUCKET: &str = "reel-ballers-users";
const STARTUP_TIMEOUT: Duration = Duration::from_secs(180);

static NEXT_ID: AtomicU32 = AtomicU32::new(0);

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The project's wrangler.toml without its `[build]` section, written into `state`: the tests
/// serve the bundle `make build` made. With the section, wrangler watches `src/` and re-runs
/// the build, and a rebuild finishing after start-up reloads the worker mid-test ("Your worker
/// restarted mid-request": POSTs in flight are answered 503 by wrangler's proxy, not by us).
fn test_config(state: &Path) -> PathBuf {
    let text = fs::read_to_string(root().join("wrangler.toml")).expect("read wrangler.toml");
    let mut out = String::new();
    let mut in_build = false;
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('[') {
            in_build = trimmed == "[build]";
        }
        if in_build {
            continue;
        }
        if trimmed.starts_with("main =") || trimmed.starts_with("main=") {
            let main = root().join("build/index.js");
            out.push_str(&format!("main = {:?}\n", main.display().to_string()));
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    let path = state.join("wrangler.toml");
    fs::write(&path, out).expect("write the test config");
    path
}

fn wrangler() -> Command {
    let mut cmd = Command::new(root().join("node_modules/.bin/wrangler"));
    cmd.current_dir(root())
        .env("WRANGLER_SEND_METRICS", "false")
        .env("NO_COLOR", "1");
    cmd
}

/// The wrangler config that runs the worker under an R2 model (tests and benches only).
pub const MODEL_CONFIG: &str = "tests/model/wrangler.toml";

/// An R2 model and a number of isolates to run the worker under (tests/model/).
#[derive(Clone, Copy, Debug)]
pub struct Under {
    /// A model file's name in tests/model/models/: `local` or `spec`.
    pub model: &'static str,
    /// Copies of the worker serving requests, each with its own memory: 1 or 2.
    pub isolates: u8,
    /// The Durable Object round trip (one of the model's choices); `None`: its default.
    pub do_hop_ms: Option<u32>,
}

impl Under {
    /// `model` with one isolate and the model's default hop.
    #[allow(dead_code, reason = "used by some e2e tests and the benches")]
    pub const fn model(model: &'static str) -> Self {
        Self {
            model,
            isolates: 1,
            do_hop_ms: None,
        }
    }

    /// The same, with `isolates` copies of the worker.
    #[allow(dead_code, reason = "used by some e2e tests and the benches")]
    pub const fn isolates(self, isolates: u8) -> Self {
        Self { isolates, ..self }
    }
}

/// A running local worker; dropping it stops its whole process group.
pub struct LocalWorker {
    child: Child,
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    state: PathBuf,
    agent: ureq::Agent,
}

/// An HTTP answer: status, headers of interest and JSON body.
#[derive(Debug)]
pub struct Answer {
    /// HTTP status.
    pub status: u16,
    /// The `Allow` header, if any.
    pub allow: Option<String>,
    /// The `Retry-After` header, if any.
    #[allow(dead_code, reason = "read by some tests only")]
    pub retry_after: Option<String>,
    /// Which copy of the worker answered (`X-Model-Isolate`), under a model only.
    #[allow(dead_code, reason = "read by some tests only")]
    pub isolate: Option<String>,
    /// The parsed body.
    pub json: Value,
}

impl LocalWorker {
    /// Seeds local R2 with `objects` (key, bytes) and starts `wrangler dev` on a free port,
    /// with anonymous access allowed (as `make dev` does) and the spec's single layout: these
    /// tests read `database.sqlite` back as the whole database. The incremental layout (the
    /// default) has its own tests (`incremental.rs`, and `migrate.rs` runs both).
    pub fn start(objects: &[(&str, &[u8])]) -> Self {
        Self::start_with_vars(
            objects,
            &[("ALLOW_ANONYMOUS", "true"), ("LAYOUT", "single")],
        )
    }

    /// As [`LocalWorker::start`], with exactly these `--var NAME:VALUE` settings.
    pub fn start_with_vars(objects: &[(&str, &[u8])], vars: &[(&str, &str)]) -> Self {
        Self::start_config(None, objects, vars)
    }

    /// As [`LocalWorker::start_with_vars`], the worker running under an R2 model and with
    /// `under.isolates` copies of it (tests/model/entry.mjs).
    #[allow(dead_code, reason = "used by some e2e tests and the benches")]
    pub fn start_under(under: &Under, objects: &[(&str, &[u8])], vars: &[(&str, &str)]) -> Self {
        let isolates = under.isolates.to_string();
        let hop = under.do_hop_ms.map(|ms| ms.to_string());
        let mut all: Vec<(&str, &str)> = vars.to_vec();
        all.push(("R2_MODEL", under.model));
        all.push(("MODEL_ISOLATES", &isolates));
        if let Some(hop) = &hop {
            all.push(("R2_MODEL_DO_HOP_MS", hop));
        }
        Self::start_config(Some(&root().join(MODEL_CONFIG)), objects, &all)
    }

    fn start_config(
        config: Option<&Path>,
        objects: &[(&str, &[u8])],
        vars: &[(&str, &str)],
    ) -> Self {
        let mut attempt = 0;
        let worker = loop {
            attempt += 1;
            let mut worker = Self::spawn(config, vars);
            match worker.wait_ready() {
                Ok(()) => break worker,
                // The ports are picked free and then handed to wrangler, which restarts
                // workerd once at start-up: another process can take one in between. A fresh
                // pair of ports is all it takes.
                Err(log) if attempt < 3 && log.contains("Address already in use") => {
                    drop(worker);
                }
                Err(log) => panic!("wrangler dev exited before serving:\n{log}"),
            }
        };
        for (key, bytes) in objects {
            worker.put_object(key, bytes);
        }
        worker
    }

    /// Starts `wrangler dev` (with `config`, or the project's wrangler.toml) and returns once
    /// it says it is ready, without sending the worker any request: the next request is the
    /// first one a fresh isolate serves.
    #[allow(dead_code, reason = "used by benches/e2e.rs, which includes this file")]
    pub fn start_fresh(config: Option<&Path>, vars: &[(&str, &str)]) -> Self {
        let mut worker = Self::spawn(config, vars);
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        while !fs::read_to_string(worker.state.join("wrangler.log"))
            .unwrap_or_default()
            .contains("Ready on")
        {
            if let Ok(Some(status)) = worker.child.try_wait() {
                panic!("wrangler dev exited ({status}):\n{}", worker.log_tail());
            }
            assert!(
                Instant::now() < deadline,
                "not ready:\n{}",
                worker.log_tail()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        worker
    }

    fn spawn(config: Option<&Path>, vars: &[(&str, &str)]) -> Self {
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        let state = root()
            .join("target/e2e-state")
            .join(format!("{}-{id}", std::process::id()));
        let _ = fs::remove_dir_all(&state);
        fs::create_dir_all(&state).expect("create state dir");
        let port = free_port();
        // Concurrent instances would otherwise race for the default inspector port.
        let inspector_port = free_port();
        let log = fs::File::create(state.join("wrangler.log")).expect("create log");
        let mut cmd = wrangler();
        // A dev registry of its own: wrangler reloads the worker when another local instance
        // registers or leaves the shared one (a test starting or stopping beside it).
        cmd.env("WRANGLER_REGISTRY_PATH", state.join("registry"))
            .env("WRANGLER_CI_DISABLE_CONFIG_WATCHING", "true");
        cmd.args([
            "dev",
            "--ip",
            "127.0.0.1",
            "--port",
            &port.to_string(),
            "--persist-to",
        ])
        .arg(&state)
        .args(["--inspector-port", &inspector_port.to_string()]);
        let config = config.map_or_else(|| test_config(&state), Path::to_path_buf);
        cmd.arg("--config").arg(config);
        // `log`: the worker's own console.log lines (compaction reports) reach the log file.
        // E2E_LOG_LEVEL=debug adds wrangler's and workerd's own lines (reloads, the proxy).
        let level = std::env::var("E2E_LOG_LEVEL").unwrap_or_else(|_| "log".to_owned());
        cmd.args([
            "--show-interactive-dev-session=false",
            "--log-level",
            &level,
        ]);
        for (name, value) in vars {
            cmd.args(["--var", &format!("{name}:{value}")]);
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            // Its own process group, so Drop can stop wrangler, workerd and esbuild together.
            .process_group(0)
            .spawn()
            .expect("spawn wrangler dev (run `make setup`)");
        let agent = ureq::Agent::new_with_config(
            ureq::Agent::config_builder()
                .http_status_as_error(false)
                .timeout_global(Some(Duration::from_secs(120)))
                .build(),
        );
        Self {
            child,
            base: format!("http://127.0.0.1:{port}"),
            state,
            agent,
        }
    }

    /// Waits until the worker serves; `Err` with the log's tail if wrangler exited first.
    fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!("({status}) {}", self.log_tail()));
            }
            // Our worker's JSON error (404, or 401/503/500 when access control or config
            // refuses) means workerd is serving the bundle; this path touches no object.
            if self.serves_json() {
                return Ok(());
            }
            assert!(
                Instant::now() < deadline,
                "wrangler dev did not serve within {STARTUP_TIMEOUT:?}:\n{}",
                self.log_tail()
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// The same worker, reached past wrangler's dev proxy (a second workerd in front of the
    /// worker's, which production does not have), with a new connection for every request.
    ///
    /// Through the proxy, a request now and then meets a pooled connection that the worker's
    /// workerd is closing (kj closes an idle one after 5 s on both ends: the client's
    /// `idleTimeout`, the server's `pipelineTimeout`) and fails with "Network connection lost.".
    /// wrangler 4.86's proxy then answers a POST 503 "Your worker restarted mid-request" (it
    /// compares the request's whole URL with the worker's origin, so it takes every such
    /// failure for a restart) and re-queues a GET, whose replay throws "Cannot reconstruct a
    /// Request with a used body": a 500 for the next request to arrive, and the GET never
    /// answers. Straight to the worker's workerd with pooled connections, 14 of 2,000 soak
    /// requests still met a closing connection ("Peer disconnected"); with a connection per
    /// request, none. docs/guards.md has the evidence. `E2E_VIA_PROXY=1` keeps the proxy (and
    /// the pool), to see the difference.
    #[allow(dead_code, reason = "used by the soak, not every test binary")]
    pub fn past_proxy(mut self) -> Self {
        if std::env::var_os("E2E_VIA_PROXY").is_some() {
            return self;
        }
        let proxy = std::mem::take(&mut self.base);
        self.agent = ureq::Agent::new_with_config(
            ureq::Agent::config_builder()
                .http_status_as_error(false)
                .timeout_global(Some(Duration::from_secs(120)))
                .max_idle_connections(0)
                .build(),
        );
        for port in self.runtime_listening_ports() {
            if proxy.ends_with(&format!(":{port}")) {
                continue;
            }
            // workerd listens on other ports too (its inspector, its RPC port: probing that
            // one logs "incoming RPC message exceeds size limit"); the worker answers on one.
            self.base = format!("http://127.0.0.1:{port}");
            if self.serves_json() {
                return self;
            }
        }
        panic!(
            "no port of the worker's own workerd serves it:\n{}",
            self.log_tail()
        );
    }

    /// The TCP ports this instance's `workerd` processes listen on (wrangler's proxy and the
    /// worker's runtime, which wrangler starts on port 0), from /proc.
    fn runtime_listening_ports(&self) -> Vec<u16> {
        let mut ports = Vec::new();
        for path in self.runtime_processes() {
            let inodes: Vec<String> = fs::read_dir(path.join("fd"))
                .into_iter()
                .flatten()
                .flatten()
                .filter_map(|fd| fs::read_link(fd.path()).ok())
                .filter_map(|link| {
                    let link = link.to_string_lossy().into_owned();
                    Some(link.strip_prefix("socket:[")?.strip_suffix(']')?.to_owned())
                })
                .collect();
            let table = fs::read_to_string(path.join("net/tcp")).unwrap_or_default();
            for line in table.lines().skip(1) {
                let fields: Vec<&str> = line.split_whitespace().collect();
                // local_address is HEXIP:HEXPORT; state 0A is LISTEN; field 9 the inode.
                let (Some(local), Some(&"0A"), Some(inode)) =
                    (fields.get(1), fields.get(3), fields.get(9))
                else {
                    continue;
                };
                if !inodes.iter().any(|i| i == inode) {
                    continue;
                }
                if let Some(port) = local
                    .rsplit_once(':')
                    .and_then(|(_, p)| u16::from_str_radix(p, 16).ok())
                    && !ports.contains(&port)
                {
                    ports.push(port);
                }
            }
        }
        ports
    }

    /// /proc entries of this instance's `workerd` processes (those in its process group).
    fn runtime_processes(&self) -> Vec<PathBuf> {
        let group = self.child.id();
        let mut out = Vec::new();
        for entry in fs::read_dir("/proc").into_iter().flatten().flatten() {
            let path = entry.path();
            let Ok(stat) = fs::read_to_string(path.join("stat")) else {
                continue;
            };
            // comm is parenthesised and may contain spaces; fields after it are plain.
            let Some((head, rest)) = stat.rsplit_once(") ") else {
                continue;
            };
            let fields: Vec<&str> = rest.split_whitespace().collect();
            let in_group = fields.get(2).and_then(|g| g.parse::<u32>().ok()) == Some(group);
            if in_group && head.ends_with("(workerd") {
                out.push(path);
            }
        }
        out
    }

    #[allow(dead_code, reason = "used by benches/e2e.rs, which includes this file")]
    /// Peak and current resident memory (KiB) of this instance's `workerd` processes, read
    /// from /proc: (VmHWM, VmRSS) summed over the process group.
    pub fn runtime_memory_kib(&self) -> (u64, u64) {
        let mut totals = (0, 0);
        for path in self.runtime_processes() {
            let status = fs::read_to_string(path.join("status")).unwrap_or_default();
            let kib = |name: &str| {
                status
                    .lines()
                    .find(|l| l.starts_with(name))
                    .and_then(|l| l.split_whitespace().nth(1))
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or(0)
            };
            totals.0 += kib("VmHWM:");
            totals.1 += kib("VmRSS:");
        }
        totals
    }

    fn serves_json(&self) -> bool {
        let Ok(mut response) = self.agent.get(format!("{}/__ready", self.base)).call() else {
            return false;
        };
        response
            .body_mut()
            .read_to_string()
            .ok()
            .and_then(|text| serde_json::from_str::<serde_json::Value>(&text).ok())
            .is_some_and(|json| json["success"] == false && json["error"]["code"].is_string())
    }

    /// The last lines wrangler printed.
    /// Everything wrangler and the worker printed so far.
    #[allow(dead_code, reason = "used by the layouts bench")]
    pub fn log(&self) -> String {
        fs::read_to_string(self.state.join("wrangler.log")).unwrap_or_default()
    }

    /// Runs `program args...` (a client session against this worker) from the project root
    /// and parses the one JSON line it prints; its output and the worker's log tail are the
    /// failure message.
    pub fn run_json(&self, what: &str, program: impl AsRef<Path>, args: &[&str]) -> Value {
        let program = program.as_ref();
        let output = Command::new(program)
            .current_dir(root())
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("run {what} ({}): {e}", program.display()));
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "{what} failed:\n{stdout}\n{}\n{}",
            String::from_utf8_lossy(&output.stderr),
            self.log_tail()
        );
        serde_json::from_str(stdout.trim())
            .unwrap_or_else(|e| panic!("{what} printed no JSON line ({e}): {stdout}"))
    }

    pub fn log_tail(&self) -> String {
        let log = fs::read_to_string(self.state.join("wrangler.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    fn try_send(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Result<Answer, ureq::Error> {
        let url = format!("{}{path}", self.base);
        let mut req = ureq::http::Request::builder().method(method).uri(&url);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let mut response = self.agent.run(req.body(body.to_vec()).expect("request"))?;
        let status = response.status().as_u16();
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let allow = header("allow");
        let retry_after = header("retry-after");
        let isolate = header("x-model-isolate");
        let text = response.body_mut().read_to_string()?;
        let json = serde_json::from_str(&text).unwrap_or_else(|e| {
            panic!("{method} {path}: status {status}, body is not JSON ({e}): {text:?}")
        });
        Ok(Answer {
            status,
            allow,
            retry_after,
            isolate,
            json,
        })
    }

    /// Sends a request and parses the JSON answer; panics on transport failure.
    pub fn request(&self, method: &str, path: &str) -> Answer {
        self.request_with(method, path, &[])
    }

    /// As [`LocalWorker::request`], with extra headers.
    pub fn request_with(&self, method: &str, path: &str, headers: &[(&str, &str)]) -> Answer {
        self.send(method, path, headers, b"")
    }

    /// Sends a request with a body and parses the JSON answer; panics on transport failure.
    pub fn send(&self, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Answer {
        self.try_send(method, path, headers, body)
            .unwrap_or_else(|e| panic!("{method} {path}: {e}\n{}", self.log_tail()))
    }

    /// `GET path` answered with bytes (not JSON): status, `Content-Type`, body.
    #[allow(dead_code, reason = "used by the e2e tests, not the bench")]
    pub fn get_bytes(&self, path: &str) -> (u16, Option<String>, Vec<u8>) {
        self.get_bytes_with(path, &[])
    }

    /// As [`LocalWorker::get_bytes`], with extra headers.
    #[allow(dead_code, reason = "used by the e2e tests, not the bench")]
    pub fn get_bytes_with(
        &self,
        path: &str,
        headers: &[(&str, &str)],
    ) -> (u16, Option<String>, Vec<u8>) {
        let url = format!("{}{path}", self.base);
        let mut req = ureq::http::Request::builder().method("GET").uri(&url);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let mut response = self
            .agent
            .run(req.body(Vec::new()).expect("request"))
            .unwrap_or_else(|e| panic!("GET {path}: {e}\n{}", self.log_tail()));
        let status = response.status().as_u16();
        let content_type = response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let body = response
            .body_mut()
            .with_config()
            .limit(u64::MAX)
            .read_to_vec()
            .expect("read body");
        (status, content_type, body)
    }

    /// `POST path` with a JSON body.
    #[allow(dead_code, reason = "used by the e2e tests, not the bench")]
    pub fn post_json(
        &self,
        path: &str,
        body: &serde_json::Value,
        headers: &[(&str, &str)],
    ) -> Answer {
        let mut all = vec![("Content-Type", "application/json")];
        all.extend_from_slice(headers);
        self.send("POST", path, &all, body.to_string().as_bytes())
    }

    /// `GET path`.
    pub fn get(&self, path: &str) -> Answer {
        self.request("GET", path)
    }

    /// What the R2 model injected so far (`GET /__model/stats`): calls, 429s, 5xx, delays.
    #[allow(dead_code, reason = "used by some e2e tests and the benches")]
    pub fn model_stats(&self) -> Value {
        let answer = self.get("/__model/stats");
        assert_eq!(
            answer.status, 200,
            "not running under a model: {:?}",
            answer.json
        );
        answer.json
    }

    fn object_url(&self, key: &str) -> String {
        // wrangler dev's local explorer API: reads and writes the running instance's R2
        // in-process, as another writer would (a second process on the same state directory
        // would race workerd for its SQLite files).
        format!(
            "{}/cdn-cgi/explorer/api/r2/buckets/{BUCKET}/objects/{}",
            self.base,
            key.replace('/', "%2F")
        )
    }

    /// Writes an object into this worker's local R2 unconditionally, as another writer would.
    pub fn put_object(&self, key: &str, bytes: &[u8]) {
        let response = self
            .agent
            .put(&self.object_url(key))
            .send(bytes)
            .unwrap_or_else(|e| panic!("put {key}: {e}"));
        assert_eq!(response.status().as_u16(), 200, "put {key}");
    }

    /// The user's newest manifest: the commit slot (`manifest.json`, `manifest-<i>.json`)
    /// holding the highest `commit`; `None` if no slot exists.
    pub fn newest_manifest(&self, user: &str) -> Option<serde_json::Value> {
        (0..5)
            .filter_map(|slot| {
                let key = if slot == 0 {
                    format!("{user}/manifest.json")
                } else {
                    format!("{user}/manifest-{slot}.json")
                };
                self.object(&key)
            })
            .map(|bytes| serde_json::from_slice::<serde_json::Value>(&bytes).unwrap())
            .max_by_key(|m| m["commit"].as_u64().unwrap_or(0))
    }

    /// The object's bytes in this worker's local R2; `None` if missing.
    pub fn object(&self, key: &str) -> Option<Vec<u8>> {
        let mut response = self
            .agent
            .get(&self.object_url(key))
            .call()
            .unwrap_or_else(|e| panic!("get {key}: {e}"));
        match response.status().as_u16() {
            200 => Some(
                response
                    .body_mut()
                    .with_config()
                    .limit(u64::MAX)
                    .read_to_vec()
                    .expect("read object"),
            ),
            404 => None,
            other => panic!("get {key}: status {other}"),
        }
    }
}

impl LocalWorker {
    /// One custom metadata value of the object in this worker's local R2 (`None` if the
    /// object or the value is missing).
    #[allow(dead_code, reason = "used by the e2e tests, not the bench")]
    pub fn object_metadata(&self, key: &str, name: &str) -> Option<String> {
        let response = self
            .agent
            .get(&self.object_url(key))
            .call()
            .unwrap_or_else(|e| panic!("get {key}: {e}"));
        // The explorer API answers each custom metadata value as a header of its own.
        response
            .headers()
            .get(format!("x-r2-custom-metadata-{name}"))
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    }
}

impl Drop for LocalWorker {
    fn drop(&mut self) {
        let group = format!("-{}", self.child.id());
        let _ = Command::new("kill").args(["-TERM", "--", &group]).status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = Command::new("kill")
            .args(["-KILL", "--", &group])
            .stderr(Stdio::null())
            .status();
        let _ = self.child.wait();
        // E2E_KEEP_STATE=1 keeps the state directory (its wrangler.log) after a passing run.
        if std::thread::panicking() || std::env::var_os("E2E_KEEP_STATE").is_some() {
            eprintln!("kept {}", self.state.display());
        } else {
            let _ = fs::remove_dir_all(&self.state);
        }
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("find a free loopback port")
}

#[allow(unused_imports, reason = "the e2e tests use it, the bench does not")]
pub use workers_sqlite_poc::testing::row_counts;

/// Seconds since the epoch, as tokens count expiry.
pub fn now_s() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A per-user token for `user`, signed with `secret`, valid until `expires_s`.
pub fn token(secret: &str, user: &str, expires_s: u64) -> String {
    workers_sqlite_poc::auth::mint(
        secret,
        &workers_sqlite_poc::request::UserId::parse(Some(user)).unwrap(),
        expires_s,
    )
}

/// sha256 of bytes, hex.
pub fn sha256(bytes: &[u8]) -> String {
    use sha2::Digest as _;
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}
