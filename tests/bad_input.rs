//! Hostile and broken input gets a clear answer, and the proxy keeps serving.

mod support;

use support::*;

async fn still_serves(tether: &TetherHandle) {
    let hs = get(tether.addr, None, &eio_path(None), &[]).await;
    assert_eq!(
        hs.status,
        200,
        "a good handshake after bad input: {}",
        hs.text()
    );
    assert!(hs.text().starts_with("0{\"sid\":"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_clear_answers_and_the_proxy_keeps_serving() {
    let node = NodeServer::spawn("node-1", None, &[]).await;
    let yaml = sockets(std::slice::from_ref(&node))
        .route("{ path_prefix: \"/socket.io/\", backend: sockets }")
        .build();
    let tether = TetherHandle::start(&yaml).await;

    // Malformed query strings: not Engine.IO, or a sid that cannot be one.
    for path in [
        "/socket.io/?EIO=4&transport=polling&sid=",
        "/socket.io/?EIO=4&transport=polling&sid=a%20b",
        "/socket.io/?sid=abc&&&=&EIO=4&transport=polling",
    ] {
        let r = get(tether.addr, None, path, &[]).await;
        assert_eq!(r.status, 400, "{path}: {}", r.text());
        assert!(
            r.text().contains("Session ID unknown"),
            "{path}: {}",
            r.text()
        );
        still_serves(&tether).await;
    }
    let r = get(
        tether.addr,
        None,
        "/socket.io/?EIO=9&transport=polling",
        &[],
    )
    .await;
    assert_eq!(
        r.status, 400,
        "the node refuses an unsupported protocol version"
    );
    still_serves(&tether).await;

    // A path no route serves.
    let r = get(tether.addr, None, "/not-socket-io/x", &[]).await;
    assert_eq!(r.status, 404);
    still_serves(&tether).await;

    // Oversized headers.
    let big = "x".repeat(64 * 1024);
    let r = get(tether.addr, None, &eio_path(None), &[("x-big", &big)]).await;
    assert_eq!(r.status, 431);
    still_serves(&tether).await;

    // A garbage request line.
    let r = raw_exchange(tether.addr, None, b"\x16\x03\x01 NONSENSE \xff\r\n\r\n").await;
    assert_eq!(r.status, 400);
    still_serves(&tether).await;

    tether.stop().await;
}
