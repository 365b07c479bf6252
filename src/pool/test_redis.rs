//! A throwaway redis-server for the pool's unit tests: on a unix socket in a temporary
//! directory, killed on drop, and able to be killed and started again on the same
//! socket. (Integration tests have their own in `tests/support`, which they cannot share
//! with the library's unit tests.)

use std::process::Stdio;
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::Client;
use tokio::process::{Child, Command};

pub(crate) struct TestRedis {
    child: Option<Child>,
    /// `redis+unix://…/r.sock`.
    pub url: String,
    dir: tempfile::TempDir,
}

impl TestRedis {
    pub async fn start() -> TestRedis {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("redis+unix://{}", dir.path().join("r.sock").display());
        let mut r = TestRedis {
            child: None,
            url,
            dir,
        };
        r.restart().await;
        r
    }

    pub fn url(&self) -> String {
        self.url.clone()
    }

    /// Starts the server (again) and waits until it answers PING.
    pub async fn restart(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", "0", "--save", "", "--appendonly", "no"])
            .arg("--unixsocket")
            .arg(self.dir.path().join("r.sock"))
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("redis-server must be installed (tests/setup.sh)");
        self.child = Some(child);
        let client = Client::open(self.url.as_str()).unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(mut c) = client.get_multiplexed_async_connection().await {
                if redis::cmd("PING").exec_async(&mut c).await.is_ok() {
                    return;
                }
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "redis-server did not start"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// A connection for commands the test sends itself (CLIENT KILL, XLEN, ...).
    pub async fn admin(&self) -> MultiplexedConnection {
        Client::open(self.url.as_str())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap()
    }

    /// Kills the server (it can be started again with [`TestRedis::restart`]).
    pub async fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().await.unwrap();
        }
    }

    pub async fn stop(mut self) {
        self.kill().await;
    }
}
