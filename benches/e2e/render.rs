//! The benchmark's tables (Markdown) and chart (SVG).

use std::fmt::Write as _;

use super::cold::ColdStart;
use super::common::{SIZES_KB, size_label};
use super::results::{SizeResult, field, stats};

/// The first measured size whose figure (`f`, NaN when not measured) reaches `limit` ms.
fn first_reaching(results: &[SizeResult], limit: u32, f: &dyn Fn(&SizeResult) -> f64) -> String {
    results
        .iter()
        .find(|r| f(r) >= f64::from(limit))
        .map_or_else(
            || {
                format!(
                    "not reached up to {}",
                    size_label(results.last().map_or(0, |r| r.size_kb))
                )
            },
            |r| size_label(r.size_kb),
        )
}

/// The spec's tables and the comparisons, in Markdown.
pub fn render_tables(results: &[SizeResult], target: &str, requests: usize) -> String {
    let mut md = String::new();
    let _ = writeln!(
        md,
        "Target: {target}; {requests} warm requests per size after 2 warm-ups; a fresh isolate's first request is reported as cold. Locally each size runs twice: with the version cache off (every request downloads and parses: the plain columns) and on (warm requests are cache hits: the cache-hit columns). Times in ms, p50 / p95.\n"
    );
    let _ = writeln!(
        md,
        "**1. Network (R2 transfer)**\n\n| DB size | bytes | download p50 | download p95 | cache-hit check p50 | upload p50 | upload p95 |\n|---|---|---|---|---|---|---|"
    );
    for r in results {
        let (d50, d95) = r.warm_stats("/timing_breakdown/load/download_ms");
        let (u50, u95) = r.warm_stats("/timing_breakdown/save/upload_ms");
        let (h50, _) = r.hit_stats("/timing_breakdown/load/download_ms");
        let _ = writeln!(
            md,
            "| {} | {} | {d50:.1} | {d95:.1} | {h50:.1} | {u50:.1} | {u95:.1} |",
            size_label(r.size_kb),
            r.size_bytes
        );
    }
    let _ = writeln!(
        md,
        "\n**2. SQLite CPU (in workerd)**\n\n| DB size | parse p50 | parse p95 | query p50 | serialize p50 | cold wasm_init | cold parse |\n|---|---|---|---|---|---|---|"
    );
    for r in results {
        let (p50, p95) = r.warm_stats("/timing_breakdown/load/parse_ms");
        let (q50, _) = r.warm_stats("/timing_breakdown/query_ms");
        let (s50, _) = r.warm_stats("/timing_breakdown/save/serialize_ms");
        let _ = writeln!(
            md,
            "| {} | {p50:.1} | {p95:.1} | {q50:.1} | {s50:.1} | {:.1} | {:.1} |",
            size_label(r.size_kb),
            field(&r.cold, "/timing_breakdown/load/wasm_init_ms"),
            field(&r.cold, "/timing_breakdown/load/parse_ms")
        );
    }
    let _ = writeln!(
        md,
        "\n**3. Total overhead**\n\n| DB size | load p50 | load p95 | load (cache hit) p50 | save p50 | save p95 | load status (p50) | save status (p50) | client p50 | client p95 | client (cache hit) p50 | client (hit, save=auto) p50 | cold client |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|"
    );
    let t = workers_sqlite_poc::delay::Thresholds::default();
    for r in results {
        let (l50, l95) = r.warm_stats("/timing_breakdown/load/total_ms");
        let (s50, s95) = r.warm_stats("/timing_breakdown/save/total_ms");
        let (c50, c95) = r.client_stats();
        let (lh50, _) = r.hit_stats("/timing_breakdown/load/total_ms");
        let (ch50, _) = r.hit_client_stats();
        let (ca50, _) = stats(r.hits_auto.iter().map(|s| s.client_ms).collect());
        let band = |ms: f64| format!("{:?}", t.classify(ms).0).to_lowercase();
        let _ = writeln!(
            md,
            "| {} | {l50:.1} | {l95:.1} | {lh50:.1} | {s50:.1} | {s95:.1} | {} | {} | {c50:.1} | {c95:.1} | {ch50:.1} | {ca50:.1} | {:.1} |",
            size_label(r.size_kb),
            band(l50),
            band(s50),
            r.cold.client_ms
        );
    }
    let _ = writeln!(
        md,
        "\n**4. Storage floor**\n\nThe same R2 get + put of the same bytes without the worker or SQLite (wrangler dev's explorer API, timed by the client; it also carries the body over loopback HTTP both ways, which the worker does not), next to the worker's full round trip with the cache off.\n\n| DB size | bare get+put p50 | bare get+put p95 | worker round trip p50 | worker / floor |\n|---|---|---|---|---|"
    );
    for r in results {
        let (c50, _) = r.client_stats();
        let line = match r.floor_ms {
            Some((f50, f95)) => format!("{f50:.1} | {f95:.1} | {c50:.1} | {:.2}", c50 / f50),
            None => format!("n/a | n/a | {c50:.1} | n/a"),
        };
        let _ = writeln!(md, "| {} | {line} |", size_label(r.size_kb));
    }
    let _ = writeln!(
        md,
        "\n**5. R2 route vs Durable Object route**\n\nThe R2 route moves the whole database on every request (cache off: download + parse + upload; the client's round trip). The Durable Object route (`GET /do`, after a one-off move there, `POST /migrate?to=durable_object`) answers the same question from data that already lives in the object: nothing is transferred. Client round trips, ms.\n\n| DB size | R2 route p50 | R2 route p95 | R2 band (load+save p50) | R2 cache hit + save=auto p50 | DO route p50 | DO route p95 | DO band | one-off move |\n|---|---|---|---|---|---|---|---|---|"
    );
    let band = |ms: f64| format!("{:?}", t.classify(ms).0).to_lowercase();
    for r in results {
        let (c50, c95) = r.client_stats();
        let sync = r.warm_stats("/timing_breakdown/load/total_ms").0
            + r.warm_stats("/timing_breakdown/save/total_ms").0;
        let (ca50, _) = stats(r.hits_auto.iter().map(|s| s.client_ms).collect());
        let (do_line, do_band) = match &r.durable {
            Some((import, queries)) => {
                let (d50, d95) = stats(queries.iter().map(|s| s.client_ms).collect());
                let load = stats(
                    queries
                        .iter()
                        .map(|s| field(s, "/delay_analysis/load/ms"))
                        .collect(),
                )
                .0;
                (
                    format!("{d50:.1} | {d95:.1}"),
                    format!("{} | {:.0}", band(load), import.client_ms),
                )
            }
            None => ("n/a | n/a".into(), "n/a | n/a".into()),
        };
        let _ = writeln!(
            md,
            "| {} | {c50:.1} | {c95:.1} | {} | {ca50:.1} | {do_line} | {do_band} |",
            size_label(r.size_kb),
            band(sync)
        );
    }
    let _ = writeln!(
        md,
        "\n**6. Where each route crosses the thresholds** (first measured size whose p50 sync delay, load + save for R2 and the Durable Object round trip's load for `GET /do`, reaches the threshold)\n\n| threshold | R2 route | Durable Object route |\n|---|---|---|"
    );
    for (name, limit) in [
        ("100 ms (acceptable)", t.optimal_ms),
        ("300 ms (warning)", t.acceptable_ms),
        ("500 ms (slow)", t.warning_ms),
        ("1000 ms (critical)", t.critical_ms),
    ] {
        let first = |f: &dyn Fn(&SizeResult) -> Option<f64>| {
            first_reaching(results, limit, &|r| f(r).unwrap_or(f64::NAN))
        };
        let r2 = first(&|r| {
            Some(
                r.warm_stats("/timing_breakdown/load/total_ms").0
                    + r.warm_stats("/timing_breakdown/save/total_ms").0,
            )
        });
        let dur = first(&|r| {
            r.durable.as_ref().map(|(_, q)| {
                stats(
                    q.iter()
                        .map(|s| field(s, "/delay_analysis/load/ms"))
                        .collect(),
                )
                .0
            })
        });
        let _ = writeln!(md, "| {name} | {r2} | {dur} |");
    }
    let _ = writeln!(
        md,
        "\n**8. The write path** (`POST /query`, cache on, so every request starts from a version-cache hit; a request that writes uploads the whole database). Client round trip p50 / p95 and the report's save total p50, ms.\n\n| DB size | insert 1 row | insert 100 rows | update 1% of rows | read-only batch (cache hit) | save p50 (1 row) | band (load+save, 1 row) |\n|---|---|---|---|---|---|---|"
    );
    for r in results {
        let cell = |name: &str| {
            r.writes.iter().find(|(n, _)| *n == name).map_or_else(
                || "n/a".to_owned(),
                |(_, s)| {
                    let (p50, p95) = stats(s.iter().map(|x| x.client_ms).collect());
                    format!("{p50:.1} / {p95:.1}")
                },
            )
        };
        let one = r.writes.iter().find(|(n, _)| *n == "insert 1 row");
        let (save, sync) = one.map_or((f64::NAN, f64::NAN), |(_, s)| {
            let save = stats(
                s.iter()
                    .map(|x| field(x, "/timing_breakdown/save/total_ms"))
                    .collect(),
            )
            .0;
            let load = stats(
                s.iter()
                    .map(|x| field(x, "/timing_breakdown/load/total_ms"))
                    .collect(),
            )
            .0;
            (save, load + save)
        });
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {save:.1} | {} |",
            size_label(r.size_kb),
            cell("insert 1 row"),
            cell("insert 100 rows"),
            cell("update 1% of rows"),
            cell("read-only batch, cache hit"),
            format!("{:?}", t.classify(sync).0).to_lowercase()
        );
    }
    let _ = writeln!(
        md,
        "\n**9. Where the write path crosses the thresholds** (first measured size whose p50 client round trip reaches it)\n\n| threshold | insert 1 row | insert 100 rows | update 1% of rows | read-only batch (cache hit) |\n|---|---|---|---|---|"
    );
    for (name, limit) in [
        ("100 ms", t.optimal_ms),
        ("300 ms", t.acceptable_ms),
        ("500 ms", t.warning_ms),
        ("1000 ms", t.critical_ms),
    ] {
        let first = |kind: &str| {
            first_reaching(results, limit, &|r| {
                r.writes
                    .iter()
                    .find(|(n, _)| *n == kind)
                    .map_or(f64::NAN, |(_, s)| {
                        stats(s.iter().map(|x| x.client_ms).collect()).0
                    })
            })
        };
        let _ = writeln!(
            md,
            "| {name} | {} | {} | {} | {} |",
            first("insert 1 row"),
            first("insert 100 rows"),
            first("update 1% of rows"),
            first("read-only batch, cache hit")
        );
    }
    let _ = writeln!(
        md,
        "\n**11. Both routes, the same requests** (client round trip p50 ms; R2 with the version cache on, the Durable Object after an import; the 90/10 mix is {} requests, every tenth a one-row insert, p50 / mean)\n\n| DB size | read: R2 | read: DO | insert 1 row: R2 | insert 1 row: DO | insert 100 rows: R2 | insert 100 rows: DO | update 1%: R2 | update 1%: DO | mix: R2 | mix: DO |\n|---|---|---|---|---|---|---|---|---|---|---|",
        results.first().map_or(0, |r| r.mix.0.len())
    );
    let p50 = |v: &[super::runner::Sample]| stats(v.iter().map(|x| x.client_ms).collect()).0;
    let mean = |v: &[super::runner::Sample]| {
        v.iter().map(|x| x.client_ms).sum::<f64>() / v.len().max(1) as f64
    };
    let kind = |w: &[(&'static str, Vec<super::runner::Sample>)], name: &str| {
        w.iter()
            .find(|(n, _)| *n == name)
            .map_or(f64::NAN, |(_, s)| p50(s))
    };
    for r in results {
        let _ = writeln!(
            md,
            "| {} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} / {:.1} | {:.1} / {:.1} |",
            size_label(r.size_kb),
            kind(&r.writes, "read-only batch, cache hit"),
            kind(&r.do_writes, "read-only batch, cache hit"),
            kind(&r.writes, "insert 1 row"),
            kind(&r.do_writes, "insert 1 row"),
            kind(&r.writes, "insert 100 rows"),
            kind(&r.do_writes, "insert 100 rows"),
            kind(&r.writes, "update 1% of rows"),
            kind(&r.do_writes, "update 1% of rows"),
            p50(&r.mix.0),
            mean(&r.mix.0),
            p50(&r.mix.1),
            mean(&r.mix.1),
        );
    }
    let _ = writeln!(
        md,
        "\n**12. Where each route crosses the thresholds, by request kind** (first measured size whose client round trip reaches the threshold: p50 for reads and writes, the mean for the mix, since one request in ten is a write)\n\n| threshold | reads: R2 | reads: DO | 1-row writes: R2 | 1-row writes: DO | mix: R2 | mix: DO |\n|---|---|---|---|---|---|---|"
    );
    for (name, limit) in [
        ("100 ms", t.optimal_ms),
        ("300 ms", t.acceptable_ms),
        ("500 ms", t.warning_ms),
        ("1000 ms", t.critical_ms),
    ] {
        let first = |f: &dyn Fn(&SizeResult) -> f64| first_reaching(results, limit, f);
        let _ = writeln!(
            md,
            "| {name} | {} | {} | {} | {} | {} | {} |",
            first(&|r| kind(&r.writes, "read-only batch, cache hit")),
            first(&|r| kind(&r.do_writes, "read-only batch, cache hit")),
            first(&|r| kind(&r.writes, "insert 1 row")),
            first(&|r| kind(&r.do_writes, "insert 1 row")),
            first(&|r| mean(&r.mix.0)),
            first(&|r| mean(&r.mix.1)),
        );
    }
    let _ = writeln!(
        md,
        "\n**7. Memory**\n\nwasm memory is the instance's linear memory after the size's requests (it never shrinks, so it is the high-water mark of SQLite and Rust allocations). The body streams straight into SQLite's buffer and the upload streams out in 1 MiB chunks, so the isolate's peak for a request is about wasm + 1 MiB (before: wasm + 2 x size, a whole JS copy of the body and one of the upload). The workerd column is the whole local runtime's peak RSS growth, simulated R2 included: an upper bound.\n\n| DB size | wasm memory | wasm / size | est. isolate peak (wasm + 1 MiB) | before (wasm + 2 x size) | workerd peak RSS growth |\n|---|---|---|---|---|---|"
    );
    let mb = |b: f64| b / 1_048_576.0;
    for r in results {
        let wasm = r.wasm_memory_bytes();
        let workerd = r
            .peak_memory_kib
            .map(|(d, _)| format!("{:.1} MB", d as f64 / 1024.0))
            .unwrap_or_else(|| "n/a".into());
        let _ = writeln!(
            md,
            "| {} | {:.1} MB | {:.2} | {:.1} MB | {:.1} MB | {workerd} |",
            size_label(r.size_kb),
            mb(wasm),
            wasm / r.size_bytes as f64,
            mb(wasm) + 1.0,
            mb(wasm + 2.0 * r.size_bytes as f64)
        );
    }
    // The defaults, from the measurement: fixed overhead from the smallest size, bytes of wasm
    // memory per byte of database from the largest.
    if let (Some(small), Some(large)) = (results.first(), results.last()) {
        let fixed = mb(small.wasm_memory_bytes() - small.size_bytes as f64);
        let ratio = large.wasm_memory_bytes() / large.size_bytes as f64;
        let max_db = 32.0;
        let cache = 32.0;
        let result_cap = 8.0;
        let chunk = 1.0;
        let js_heap = 8.0;
        let worst = fixed + js_heap + cache + 2.0 * (ratio * max_db + chunk) + 2.0 * result_cap;
        let _ = writeln!(
            md,
            "\nDefaults within the isolate's 128 MB (from this run: fixed wasm overhead {fixed:.1} MiB, {ratio:.2} bytes of wasm memory per byte of database at {}): a full version cache of {cache:.0} MiB (`CACHE_MAX_BYTES`, so a 20 MiB database stays cached), plus two concurrent cache misses at `MAX_DB_BYTES` = {max_db:.0} MiB each with a 1 MiB upload chunk, plus two results at `MAX_RESULT_BYTES` = {result_cap:.0} MiB, plus {js_heap:.0} MiB of JS heap: {fixed:.1} + {js_heap:.0} + {cache:.0} + 2 x ({ratio:.2} x {max_db:.0} + {chunk:.0}) + 2 x {result_cap:.0} = **{worst:.0} MiB** of 128.",
            size_label(large.size_kb)
        );
    }
    md
}

/// (legend, colour, (size KB, ms) points).
type Series = (&'static str, &'static str, Vec<(f64, f64)>);

/// Delay against size, with the delay bands, as SVG.
pub fn render_svg(results: &[SizeResult], target: &str) -> String {
    let (w, h, left, right, top, bottom) = (820.0, 460.0, 70.0, 20.0, 40.0, 60.0);
    let series: Vec<Series> = vec![
        (
            "load total p50",
            "#1f77b4",
            results
                .iter()
                .map(|r| {
                    (
                        r.size_kb as f64,
                        r.warm_stats("/timing_breakdown/load/total_ms").0,
                    )
                })
                .collect(),
        ),
        (
            "save total p50",
            "#9467bd",
            results
                .iter()
                .map(|r| {
                    (
                        r.size_kb as f64,
                        r.warm_stats("/timing_breakdown/save/total_ms").0,
                    )
                })
                .collect(),
        ),
        (
            "load total p50, cache hit",
            "#2ca02c",
            results
                .iter()
                .map(|r| {
                    (
                        r.size_kb as f64,
                        r.hit_stats("/timing_breakdown/load/total_ms").0,
                    )
                })
                .collect(),
        ),
        (
            "client round trip p50",
            "#222222",
            results
                .iter()
                .map(|r| (r.size_kb as f64, r.client_stats().0))
                .collect(),
        ),
    ];
    let max_ms = series
        .iter()
        .flat_map(|s| s.2.iter().map(|p| p.1))
        .fold(0.0_f64, f64::max);
    let y_max = (max_ms * 1.1).max(1100.0);
    let (x_min, x_max) = (100.0_f64.log10(), 51_200.0_f64.log10());
    let x = |kb: f64| left + (kb.log10() - x_min) / (x_max - x_min) * (w - left - right);
    let y = |ms: f64| top + (1.0 - ms.min(y_max) / y_max) * (h - top - bottom);
    let mut svg = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">"#
    );
    let _ = write!(svg, r#"<rect width="{w}" height="{h}" fill="white"/>"#);
    let bands = [
        (0.0, 100.0, "#d9f2d9", "optimal"),
        (100.0, 300.0, "#eef7d0", "acceptable"),
        (300.0, 500.0, "#fff3c4", "warning"),
        (500.0, 1000.0, "#ffe0c2", "slow"),
        (1000.0, y_max, "#ffd0d0", "critical"),
    ];
    for (lo, hi, color, name) in bands {
        let _ = write!(
            svg,
            r##"<rect x="{left}" y="{:.1}" width="{:.1}" height="{:.1}" fill="{color}"/><text x="{:.1}" y="{:.1}" fill="#666" text-anchor="end">{name}</text>"##,
            y(hi),
            w - left - right,
            y(lo) - y(hi),
            w - right - 4.0,
            y(hi) + 14.0
        );
    }
    for ms in [0.0, 100.0, 300.0, 500.0, 1000.0] {
        let _ = write!(
            svg,
            r##"<line x1="{left}" x2="{:.1}" y1="{:.1}" y2="{:.1}" stroke="#999" stroke-dasharray="3,3"/><text x="{:.1}" y="{:.1}" text-anchor="end">{ms} ms</text>"##,
            w - right,
            y(ms),
            y(ms),
            left - 6.0,
            y(ms) + 4.0
        );
    }
    for kb in SIZES_KB {
        let _ = write!(
            svg,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
            x(*kb as f64),
            h - bottom + 18.0,
            size_label(*kb)
        );
    }
    let _ = write!(
        svg,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">database size (log scale)</text>"#,
        (left + w - right) / 2.0,
        h - 16.0
    );
    let _ = write!(
        svg,
        r#"<text x="{left}" y="22" font-size="14">Sync delay vs database size: {}</text>"#,
        target.replace('&', "&amp;").replace('<', "&lt;")
    );
    for (i, (name, color, points)) in series.iter().enumerate() {
        let path: Vec<String> = points
            .iter()
            .map(|(kb, ms)| format!("{:.1},{:.1}", x(*kb), y(*ms)))
            .collect();
        let _ = write!(
            svg,
            r#"<polyline points="{}" fill="none" stroke="{color}" stroke-width="2"/>"#,
            path.join(" ")
        );
        for (kb, ms) in points {
            let _ = write!(
                svg,
                r#"<circle cx="{:.1}" cy="{:.1}" r="3" fill="{color}"/>"#,
                x(*kb),
                y(*ms)
            );
        }
        let ly = top + 16.0 + i as f64 * 16.0;
        let _ = write!(
            svg,
            r#"<line x1="{:.1}" x2="{:.1}" y1="{ly:.1}" y2="{ly:.1}" stroke="{color}" stroke-width="2"/><text x="{:.1}" y="{:.1}">{name}</text>"#,
            left + 10.0,
            left + 30.0,
            left + 36.0,
            ly + 4.0
        );
    }
    svg.push_str("</svg>\n");
    svg
}

/// The cold-start comparison, in Markdown (empty when it did not run).
pub fn render_cold(cold: &[ColdStart]) -> String {
    if cold.is_empty() {
        return String::new();
    }
    let mut md = String::new();
    let _ = writeln!(
        md,
        "\n**10. Cold start** (local `wrangler dev`, {} fresh starts per worker, medians in ms). Startup is spawn to \"Ready on\": workerd loads the bundle, which compiles and instantiates the wasm (the same wrangler overhead is in both rows, so the difference is this worker's module). The first request of a fresh isolate pays lazy compilation of the code it runs and, for this worker, SQLite's initialisation.\n\n| worker | startup | first request | warm request | first - warm | SQLite init (in first) |\n|---|---|---|---|---|---|",
        cold.first().map_or(0, |c| c.first_ms.len())
    );
    for c in cold {
        let med = |v: &[f64]| stats(v.to_vec()).0;
        let init = if c.sqlite_init_ms.is_empty() {
            "n/a".to_owned()
        } else {
            format!("{:.1}", med(&c.sqlite_init_ms))
        };
        let _ = writeln!(
            md,
            "| {} | {:.0} | {:.1} | {:.1} | {:.1} | {init} |",
            c.name,
            med(&c.startup_ms),
            med(&c.first_ms),
            med(&c.warm_ms),
            med(&c.first_ms) - med(&c.warm_ms)
        );
    }
    md
}
