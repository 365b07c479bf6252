//! The names tether uses in Redis: a contract with operators and with other services
//! that ask Redis which server holds a session. Changing one is a breaking change.
//!
//! - `{prefix}:{backend}:sid:{<sid>}` — a string, the id of the server (as in tether's
//!   config) holding session `<sid>` of `backend`, with a time to live of the session's
//!   liveness window (its `pingInterval + pingTimeout` plus `sessions.idle_margin`),
//!   refreshed while the session lives and deleted when it ends. The braces are literal:
//!   the sid is the key's Redis Cluster hash tag, so sessions spread over every slot
//!   while anything later stored per session lands beside its key.
//! - `{prefix}:states` — a hash of the operator states set through any instance's
//!   admin API: field `["<backend>","<server>"]` (a JSON array, as names may hold any
//!   character), value `draining` or `maint`. `ready` removes the field.
//! - `{prefix}:admin` — the pub/sub channel those changes are announced on, one JSON
//!   object per message: `{"from":"<instance>","backend":"…","server":"…","state":"…"}`,
//!   with `"migrate_rate":R` added (state `draining`) when the change is a migration that
//!   every instance runs on its own sessions at R per second. Readers ignore fields
//!   they do not know, so older instances take a migration as a drain.

/// The key of one session.
pub fn session(prefix: &str, backend: &str, sid: &str) -> String {
    let mut k = String::with_capacity(prefix.len() + backend.len() + sid.len() + 8);
    k.push_str(prefix);
    k.push(':');
    k.push_str(backend);
    k.push_str(":sid:{");
    k.push_str(sid);
    k.push('}');
    k
}

/// The hash of operator states.
pub fn states(prefix: &str) -> String {
    format!("{prefix}:states")
}

/// The field of one server in [`states`].
pub fn state_field(backend: &str, server: &str) -> String {
    serde_json::json!([backend, server]).to_string()
}

/// Reads a field of [`states`] back; `None` when it is not one of ours.
pub fn parse_state_field(field: &str) -> Option<(String, String)> {
    serde_json::from_str::<(String, String)>(field).ok()
}

/// The admin channel.
pub fn channel(prefix: &str) -> String {
    format!("{prefix}:admin")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_key_tags_its_sid_for_cluster() {
        assert_eq!(
            session("tether", "chat", "Xy_9-AAAB"),
            "tether:chat:sid:{Xy_9-AAAB}"
        );
    }

    #[test]
    fn a_state_field_survives_any_name() {
        for (b, s) in [("chat", "n1"), ("a:b", "c/d"), ("\"q\"", "x,y]")] {
            let f = state_field(b, s);
            assert_eq!(parse_state_field(&f), Some((b.to_owned(), s.to_owned())));
        }
        assert_eq!(parse_state_field("chat/n1"), None);
        assert_eq!(parse_state_field("[1,2]"), None);
    }
}
