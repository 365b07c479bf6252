//! The demo chat page and its Socket.IO client, compiled into the binary and served by
//! `tether node`: [`INDEX_HTML`] at `/` and [`CLIENT_JS`] at `/tether-client.js`.
//!
//! Both are our own code (no third-party client bundle) and load nothing from elsewhere, so
//! the page works offline. `client.js` is a small Engine.IO v4 / Socket.IO v5 browser client
//! (`window.TetherIO.connect(url?, opts)`): polling handshake, long polling, WebSocket upgrade
//! with probe, heartbeats, acks, reconnection with back-off and jitter. The page talks to the
//! node's demo application: `welcome`, `whoami`, `hello`, `chat`, `join`, `leave`, `presence`.
//!
//! Element ids the browser tests rely on: `#node`, `#transport`, `#status` (its text contains
//! "connected" while connected, and `data-state` is `connected`, `connecting` or `lost`),
//! `#name`, `#text`, `#send`, `#messages` (each chat message an element of class `msg` with
//! the sender's node in `data-node`), `#online` (the entry of this page's own session has class
//! `me`, and its "(you)" is an element of class `you`), `#hint` (the first-time hint in the
//! message pane, hidden once a message arrives).

/// The chat page, served at `/`.
pub const INDEX_HTML: &str = include_str!("index.html");

/// The browser client, served at `/tether-client.js`.
pub const CLIENT_JS: &str = include_str!("client.js");

/// Where the page loads the client from.
pub const CLIENT_JS_PATH: &str = "/tether-client.js";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn assets_are_not_empty() {
        assert!(!INDEX_HTML.trim().is_empty());
        assert!(!CLIENT_JS.trim().is_empty());
    }

    #[test]
    fn page_loads_the_client_and_has_the_test_ids() {
        assert!(INDEX_HTML.contains(&format!("src=\"{CLIENT_JS_PATH}\"")));
        for id in [
            "node",
            "transport",
            "status",
            "name",
            "text",
            "send",
            "messages",
            "online",
            "hint",
        ] {
            assert!(
                INDEX_HTML.contains(&format!("id=\"{id}\"")),
                "index.html lacks id=\"{id}\""
            );
        }
        assert!(
            INDEX_HTML.contains("\"msg\""),
            "chat messages carry class msg"
        );
        assert!(
            INDEX_HTML.contains("dataset.node"),
            "chat messages carry data-node"
        );
    }

    #[test]
    fn page_is_self_contained() {
        // Offline: nothing loaded from another origin.
        for needle in ["http://", "https://", "src=\"//", "href=\"//", "@import"] {
            assert!(
                !INDEX_HTML.contains(needle),
                "index.html refers to {needle}"
            );
        }
    }

    #[test]
    fn client_exposes_tether_io() {
        assert!(CLIENT_JS.contains("global.TetherIO = {"));
        assert!(CLIENT_JS.contains("EIO=4"));
        assert!(CLIENT_JS.contains("\"2probe\""));
    }
}
