//! Process plumbing that the proxy and the bundled tools (node pool, load generator) share,
//! so each exists once: the accept loop, the way to take a lock, retry back-off, signals,
//! and the process-wide metrics recorder. Nothing here knows about HTTP or Socket.IO.
//!
//! - [`accept`] accepts on a bound listener until told to stop, riding out failed accepts;
//!   [`gate`] caps open connections by making it wait.
//! - [`sync`] the one way to take a `std` mutex; [`ip_text`] an address as text, cheaply.
//! - [`backoff`] delays that double from a minimum to a maximum.
//! - [`signal`] SIGINT/SIGTERM into one cancellation token; a second signal exits.
//! - [`recorder`] the process-wide Prometheus recorder.
//! - [`throttle`] at most one log line per cause per interval, with a count of the rest;
//!   [`clock`] the coarse clock it (and server conditions) read.

pub mod accept;
pub mod backoff;
pub mod clock;
pub mod gate;
pub mod ip_text;
pub mod recorder;
pub mod signal;
pub mod sync;
pub mod throttle;

pub use backoff::Backoff;
pub use ip_text::IpText;
pub use sync::lock;
