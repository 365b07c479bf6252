//! Session affinity at the protocol level, with real Node `socket.io` servers and a
//! raw HTTP client that chooses its source address and connection per request.

mod support;

use std::collections::BTreeMap;
use std::net::IpAddr;

use support::*;

fn ip(last: u8) -> Option<IpAddr> {
    Some(IpAddr::from([127, 0, 0, last]))
}

async fn nodes(n: usize) -> Vec<NodeServer> {
    let mut v = Vec::new();
    for i in 1..=n {
        v.push(NodeServer::spawn(&format!("node-{i}"), None, &[]).await);
    }
    v
}

/// POSTs a pong packet (`3`) for `sid`: 200 `ok` only from the node that owns it.
async fn post_pong(
    tether: &TetherHandle,
    from: Option<IpAddr>,
    sid: &str,
    extra: &str,
) -> RawResponse {
    let path = eio_path(Some(sid));
    let req = format!(
        "POST {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\nContent-Type: text/plain;charset=UTF-8\r\nContent-Length: 1\r\n{extra}\r\n3"
    );
    raw_exchange(tether.addr, from, req.as_bytes()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn learned_sid_pins_requests_whatever_their_source_address_or_connection() {
    let nodes = nodes(3).await;
    let tether = TetherHandle::start(&sockets(&nodes).build()).await;
    let mut sessions = Vec::new();
    for i in 0..12u8 {
        let hs = get(tether.addr, ip(10 + i), &eio_path(None), &[]).await;
        assert_eq!(hs.status, 200, "{}", hs.text());
        sessions.push(hs.sid());
    }
    for (i, sid) in sessions.iter().enumerate() {
        for from in [ip(100), ip(101 + i as u8), None] {
            let r = post_pong(&tether, from, sid, "").await;
            assert_eq!(
                (r.status, r.text().as_str()),
                (200, "ok"),
                "sid {sid} from {from:?}"
            );
        }
    }
    tether.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_sid_gets_engine_io_session_unknown_at_once() {
    let nodes = nodes(1).await;
    let tether = TetherHandle::start(&sockets(&nodes).build()).await;
    for path in [
        eio_path(Some("neverissued123456789")),
        eio_path(Some("%zz%00")),
    ] {
        let r = get(tether.addr, None, &path, &[]).await;
        assert_eq!(r.status, 400);
        assert_eq!(r.text(), r#"{"code":1,"message":"Session ID unknown"}"#);
    }
    tether.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_cookie_keeps_a_polling_session_across_a_tether_restart() {
    let nodes = nodes(3).await;
    let config = sockets(&nodes)
        .with("cookie:\n  secret: \"restart-test-secret-0123456789\"")
        .build();
    let first = TetherHandle::start(&config).await;
    let hs = get(first.addr, None, &eio_path(None), &[]).await;
    let sid = hs.sid();
    let set_cookie = hs
        .header("set-cookie")
        .expect("handshake sets the tether cookie")
        .to_owned();
    assert!(set_cookie.starts_with("tether="), "{set_cookie}");
    let cookie = set_cookie.split(';').next().unwrap().to_owned();
    first.stop().await;

    // A new tether has an empty sid table: only the cookie knows the server.
    let second = TetherHandle::start(&config).await;
    let without = post_pong(&second, None, &sid, "").await;
    assert_eq!(without.status, 400, "no table entry and no cookie");
    // A client cannot name a server by editing the cookie.
    let (name_value, _) = cookie.rsplit_once('.').unwrap();
    let forged = format!("Cookie: {name_value}.00000000000000000000000000000000\r\n");
    assert_eq!(post_pong(&second, None, &sid, &forged).await.status, 400);
    let with_cookie = post_pong(&second, None, &sid, &format!("Cookie: {cookie}\r\n")).await;
    assert_eq!(
        (with_cookie.status, with_cookie.text().as_str()),
        (200, "ok")
    );
    // The cookie's answer taught the new tether the sid: the cookie is no longer needed.
    let relearned = post_pong(&second, ip(77), &sid, "").await;
    assert_eq!((relearned.status, relearned.text().as_str()), (200, "ok"));
    second.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hash_placement_maps_source_addresses_alike_across_a_restart() {
    let nodes = nodes(3).await;
    let config = sockets(&nodes).with("placement: hash").build();
    let mut maps = Vec::new();
    for _run in 0..2 {
        let tether = TetherHandle::start(&config).await;
        let mut map = BTreeMap::new();
        for last in 10..50u8 {
            let hs = get(tether.addr, ip(last), &eio_path(None), &[]).await;
            let node = hs.header("x-node-id").expect("node id header").to_owned();
            map.insert(last, node);
        }
        tether.stop().await;
        maps.push(map);
    }
    let distinct: std::collections::BTreeSet<_> = maps[0].values().collect();
    assert!(
        distinct.len() == 3,
        "40 addresses should reach all 3 nodes: {:?}",
        maps[0]
    );
    assert_eq!(maps[0], maps[1], "placement changed across a restart");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copied_cookie_expires_instead_of_steering_sessions_for_ever() {
    let nodes = nodes(2).await;
    let config = sockets(&nodes)
        .with("cookie:\n  secret: \"expiry-test-secret-0123456789\"\n  max_age: 3s")
        .build();
    let first = TetherHandle::start(&config).await;
    let hs = get(first.addr, None, &eio_path(None), &[]).await;
    let sid = hs.sid();
    let cookie = hs
        .header("set-cookie")
        .expect("a cookie")
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    first.stop().await;

    // Within its validity the cookie still finds the session after a restart...
    let second = TetherHandle::start(&config).await;
    let fresh = post_pong(&second, None, &sid, &format!("Cookie: {cookie}\r\n")).await;
    assert_eq!((fresh.status, fresh.text().as_str()), (200, "ok"));
    second.stop().await;
    // ... past it, it finds nothing.
    tokio::time::sleep(std::time::Duration::from_millis(4200)).await;
    let third = TetherHandle::start(&config).await;
    let stale = post_pong(&third, None, &sid, &format!("Cookie: {cookie}\r\n")).await;
    assert_eq!(stale.status, 400, "a cookie past max_age: {}", stale.text());
    third.stop().await;
}
