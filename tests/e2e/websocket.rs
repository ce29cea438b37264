//! Hrana over WebSocket against the real `workerd`: the upgrade's refusals, then the
//! published clients' WebSocket transports, unchanged, on one worker.

use std::io::{Read, Write};
use std::net::TcpStream;

use crate::harness::{LocalWorker, now_s, row_counts, token};

/// The status line and headers a raw WebSocket handshake on `path` gets.
fn handshake(worker: &LocalWorker, path: &str, protocols: Option<&str>) -> String {
    let address = worker.base.trim_start_matches("http://");
    let mut socket = TcpStream::connect(address).expect("connect");
    socket
        .set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    let protocol = protocols.map_or(String::new(), |p| {
        format!("Sec-WebSocket-Protocol: {p}\r\n")
    });
    write!(
        socket,
        "GET {path} HTTP/1.1\r\nHost: {address}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{protocol}\r\n"
    )
    .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") && socket.read(&mut byte).unwrap_or(0) == 1 {
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    if head.starts_with("HTTP/1.1 4") {
        // The refusal's JSON body, for the message.
        let mut body = vec![0u8; 2048];
        let n = socket.read(&mut body).unwrap_or(0);
        return head + &String::from_utf8_lossy(&body[..n]);
    }
    head
}

/// `ws://HOST/db/<user>/` (the URL's own path, as both clients request it): a plain GET is
/// 426 naming the ws:// URL, a handshake offering no subprotocol of ours is 400 naming what it
/// offered, hrana3 is preferred. Then `@libsql/client` with a ws:// URL (values, stored SQL,
/// batches through hrana3 cursors, a read batch refusing writes, transactions committed,
/// rolled back and one that lost a race refused with nothing stored, 20 concurrent inserts
/// all stored, another user's and an expired token refused at hello) and Python
/// `libsql-client` 0.3.1's WebSocket mode (hrana2: values, batches, a transaction committed
/// and rolled back, another user's token refused). Their writes are in the stored database.
#[test]
fn websocket_clients_work_unchanged() {
    let secret = "e2e-ws-secret";
    let worker = LocalWorker::start_with_vars(&[], &[("TOKEN_SECRET", secret)]);
    let now = now_s();
    let mint = |user: &str, expires: u64| token(secret, user, expires);

    let plain = worker.get("/db/wsjs/");
    assert_eq!(plain.status, 426, "{}", plain.json);
    assert_eq!(plain.json["error"]["code"], "upgrade_required");
    assert!(
        plain.json["error"]["message"]
            .as_str()
            .unwrap()
            .contains("ws://")
    );
    let refused = handshake(&worker, "/db/wsjs/", Some("hrana1"));
    assert!(refused.starts_with("HTTP/1.1 400"), "{refused}");
    assert!(refused.contains("offered hrana1"), "{refused}");
    let none = handshake(&worker, "/db/wsjs/", None);
    assert!(none.starts_with("HTTP/1.1 400"), "{none}");
    let accepted = handshake(&worker, "/db/wsjs", Some("hrana3-protobuf, hrana3, hrana2"));
    assert!(accepted.starts_with("HTTP/1.1 101"), "{accepted}");
    assert!(
        accepted
            .to_ascii_lowercase()
            .contains("sec-websocket-protocol: hrana3\r\n"),
        "{accepted}"
    );
    let bad_user = worker.get("/db/a.b/");
    assert_eq!(bad_user.status, 400);

    let ws = worker.base.replace("http://", "ws://");
    let seen = worker.run_json(
        "@libsql/client ws session",
        "node",
        &[
            "tests/e2e/ws_clients.mjs",
            &format!("{ws}/db/wsjs/"),
            &mint("wsjs", now + 600),
            &mint("someone", now + 600),
            &mint("wsjs", now - 1),
        ],
    );
    eprintln!("@libsql/client over ws://: {seen}");
    assert_eq!(seen["concurrent"], 20);
    assert_eq!(seen["lost_race"]["code"], "TRANSACTION_CONFLICT");
    assert_eq!(seen["read_batch"], "SQLITE_READONLY");

    let python = concat!(env!("CARGO_MANIFEST_DIR"), "/target/venv/bin/python");
    let seen = worker.run_json(
        "Python ws session",
        python,
        &[
            "tests/e2e/python_ws.py",
            &format!("{ws}/db/wspy/"),
            &mint("wspy", now + 600),
            &mint("wsjs", now + 600),
        ],
    );
    eprintln!("libsql-client 0.3.1 over ws://: {seen}");
    assert_eq!(seen["committed"], 5);

    for (user, table, rows) in [("wsjs", "vals", 30), ("wspy", "pyws", 5)] {
        let bearer = format!("Bearer {}", mint(user, now + 600));
        let (status, _, stored) = worker.get_bytes_with(
            &format!("/export?user={user}"),
            &[("Authorization", &bearer)],
        );
        assert_eq!(status, 200);
        let counts = row_counts(&stored);
        assert!(
            counts.contains(&(table.to_owned(), rows)),
            "{user}: {counts:?}"
        );
    }
}
