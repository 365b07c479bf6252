//! The registry's connection: one Redis server through a `ConnectionManager` (which
//! reconnects by itself), or a Redis Cluster through a `ClusterConnection` (made in the
//! background, since the cluster may be unreachable when tether starts, then following
//! the cluster's topology by itself). Both speak RESP3, so pub/sub messages arrive as
//! pushes on the same connection as the commands.

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::{
    Cmd, ErrorKind, FromRedisValue, IntoConnectionInfo, ProtocolVersion, PushInfo, RedisError,
    RedisResult,
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::RedisAt;

/// How long one attempt to connect may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// How long a command may take before it counts as failed.
pub(super) const RESPONSE_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Clone)]
pub(super) enum Conn {
    Node(ConnectionManager),
    /// Empty until the first connection to the cluster succeeds.
    Cluster(Arc<ArcSwapOption<ClusterConnection>>),
}

impl Conn {
    /// Opens (lazily) a connection to `at`; pushes go to `pushes`. Must run inside the
    /// tokio runtime; a cluster's connection is made by a task that ends with `stop`.
    pub(super) fn open(
        at: &RedisAt,
        pushes: mpsc::UnboundedSender<PushInfo>,
        stop: &CancellationToken,
    ) -> RedisResult<Conn> {
        match at {
            RedisAt::Node(url) => {
                let info = url.as_str().into_connection_info()?;
                let settings = info
                    .redis_settings()
                    .clone()
                    .set_protocol(ProtocolVersion::RESP3);
                let client = redis::Client::open(info.set_redis_settings(settings))?;
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(CONNECT_TIMEOUT))
                    .set_response_timeout(Some(RESPONSE_TIMEOUT))
                    .set_number_of_retries(1)
                    .set_min_delay(Duration::from_millis(50))
                    .set_max_delay(Duration::from_millis(500))
                    .set_push_sender(pushes)
                    .set_automatic_resubscription();
                Ok(Conn::Node(ConnectionManager::new_lazy_with_config(
                    client, config,
                )?))
            }
            RedisAt::Cluster(nodes) => {
                let client = ClusterClientBuilder::new(nodes.iter().map(String::as_str))
                    .use_protocol(ProtocolVersion::RESP3)
                    .connection_timeout(CONNECT_TIMEOUT)
                    .response_timeout(RESPONSE_TIMEOUT)
                    .retries(1)
                    .push_sender(pushes)
                    .build()?;
                let slot: Arc<ArcSwapOption<ClusterConnection>> = Arc::default();
                let fill = Arc::clone(&slot);
                let stop = stop.clone();
                tokio::spawn(async move {
                    loop {
                        tokio::select! {
                            _ = stop.cancelled() => return,
                            c = client.get_async_connection() => match c {
                                Ok(c) => {
                                    fill.store(Some(Arc::new(c)));
                                    return;
                                }
                                Err(e) => {
                                    tracing::debug!(error = %e, "registry: cannot reach the cluster yet");
                                }
                            },
                        }
                        tokio::select! {
                            _ = stop.cancelled() => return,
                            _ = tokio::time::sleep(CONNECT_TIMEOUT) => {}
                        }
                    }
                });
                Ok(Conn::Cluster(slot))
            }
        }
    }

    fn cluster(slot: &ArcSwapOption<ClusterConnection>) -> RedisResult<ClusterConnection> {
        match slot.load().as_deref() {
            Some(c) => Ok(c.clone()),
            None => Err(RedisError::from((
                ErrorKind::Io,
                "not connected to the cluster yet",
            ))),
        }
    }

    pub(super) async fn query<T: FromRedisValue>(&self, cmd: &Cmd) -> RedisResult<T> {
        match self {
            Conn::Node(c) => cmd.query_async(&mut c.clone()).await,
            Conn::Cluster(slot) => cmd.query_async(&mut Self::cluster(slot)?).await,
        }
    }

    /// Sends every command, replies ignored: one pipeline to a single server; to a
    /// cluster, each command on its own (a pipeline must stay within one slot, and the
    /// keys of a batch are spread over all of them), all at once.
    pub(super) async fn batch(&self, cmds: Vec<Cmd>) -> RedisResult<()> {
        match self {
            Conn::Node(c) => {
                let mut pipe = redis::pipe();
                for cmd in cmds {
                    pipe.add_command(cmd).ignore();
                }
                pipe.query_async::<()>(&mut c.clone()).await
            }
            Conn::Cluster(slot) => {
                let conn = Self::cluster(slot)?;
                let mut set = tokio::task::JoinSet::new();
                for cmd in cmds {
                    let mut conn = conn.clone();
                    set.spawn(async move { cmd.query_async::<()>(&mut conn).await });
                }
                let mut result = Ok(());
                while let Some(done) = set.join_next().await {
                    match done {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => result = Err(e),
                        Err(e) => {
                            result = Err(RedisError::from((
                                ErrorKind::Io,
                                "task failed",
                                e.to_string(),
                            )))
                        }
                    }
                }
                result
            }
        }
    }

    pub(super) async fn subscribe(&self, channel: &str) -> RedisResult<()> {
        match self {
            Conn::Node(c) => c.clone().subscribe(channel).await,
            Conn::Cluster(slot) => Self::cluster(slot)?.subscribe(channel).await,
        }
    }
}
