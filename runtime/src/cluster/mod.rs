//! Bus mode: several `patchbay node` processes share pipelines over NATS JetStream. Every piece
//! of shared state lives in JetStream, reached through the `async-nats` crate:
//!
//! - the plugin store, an Object Store bucket holding each component under its sha256;
//! - pipeline definitions, a KV bucket with one entry per pipeline: its TOML, with each plugin
//!   referenced by sha256 (see [`definition`]);
//! - membership, a KV bucket where each node puts what it runs every second; entries expire
//!   [`NODE_TTL`] after a node's last heartbeat;
//! - leases, a KV bucket of slots taken by compare-and-set (see [`lease`]); an entry expires
//!   [`LEASE_TTL`] after its holder last renewed it;
//! - rolling upgrades in progress, a KV bucket driven by `cluster deploy` (see [`rollout`]);
//! - plugins' host state, a KV bucket (see [`state`]), so that state follows a pipeline that
//!   moves to another node.
//!
//! NATS 2.9 has no per-key TTL, so both expiring buckets expire whole entries by the bucket's
//! `max_age`, which a holder's renewals keep from reaching.
//!
//! It sits beside `cli`: it may import `config`, `assemble`, `pipeline`, `plugin` and `admin`
//! (a node serves the admin API), and only `cli` imports it.

use std::path::PathBuf;
use std::time::Duration;

use async_nats::jetstream::{self, kv, object_store};

pub mod definition;
mod keeper;
pub mod lease;
pub mod node;
pub mod report;
pub mod rollout;
pub mod state;

/// The Object Store bucket of plugins, each under its sha256 (lowercase hex).
pub const PLUGINS: &str = "patchbay-plugins";
/// The KV bucket of pipeline definitions, by pipeline name.
pub const PIPELINES: &str = "patchbay-pipelines";
/// The KV bucket of node heartbeats, by node name.
pub const NODES: &str = "patchbay-nodes";
/// The KV bucket of leases, `PIPELINE.SLOT`.
pub const LEASES: &str = "patchbay-leases";
/// The KV bucket of rolling upgrades in progress, by pipeline name.
pub const ROLLOUTS: &str = "patchbay-rollouts";
/// The KV bucket of plugins' host state, `PIPELINE.PLUGIN.KEY`.
pub const STATE: &str = "patchbay-state";

/// A node's entry expires this long after its last heartbeat.
pub const NODE_TTL: Duration = Duration::from_secs(6);
/// A lease expires this long after its holder last renewed it; a dead node's pipelines are
/// taken over within `LEASE_TTL + TICK` plus their start.
pub const LEASE_TTL: Duration = Duration::from_secs(5);
/// The longest one read of a whole bucket may take before it is tried again.
pub const READ_LIMIT: Duration = Duration::from_secs(3);
/// How often a node heartbeats, renews its leases and looks for work.
pub const TICK: Duration = Duration::from_secs(1);

/// How to reach the cluster's NATS servers. Credentials come from here or the environment,
/// never from a pipeline definition.
#[derive(Debug, Clone, clap::Args)]
pub struct ConnectArgs {
    /// NATS servers, comma-separated, e.g. `nats://10.0.0.1:4222,nats://10.0.0.2:4222`.
    #[arg(long = "cluster", env = "PATCHBAY_CLUSTER", value_name = "URLS")]
    pub servers: String,
    /// User name (with --nats-password).
    #[arg(long, env = "PATCHBAY_NATS_USER", requires = "nats_password")]
    pub nats_user: Option<String>,
    /// Password (with --nats-user).
    #[arg(long, env = "PATCHBAY_NATS_PASSWORD", hide_env_values = true)]
    pub nats_password: Option<String>,
    /// Authentication token.
    #[arg(long, env = "PATCHBAY_NATS_TOKEN", hide_env_values = true)]
    pub nats_token: Option<String>,
    /// A credentials file (JWT and NKey seed), as `nsc` writes them.
    #[arg(long, env = "PATCHBAY_NATS_CREDS", value_name = "FILE")]
    pub nats_creds: Option<PathBuf>,
    /// An NKey seed (`SU…`).
    #[arg(long, env = "PATCHBAY_NATS_NKEY", hide_env_values = true)]
    pub nats_nkey: Option<String>,
    /// Require TLS to the servers.
    #[arg(long, env = "PATCHBAY_NATS_TLS")]
    pub nats_tls: bool,
    /// CA certificate (PEM) the servers' certificates are checked against (implies TLS).
    #[arg(long, env = "PATCHBAY_NATS_CA", value_name = "FILE")]
    pub nats_ca: Option<PathBuf>,
    /// Client certificate (PEM), with --nats-key.
    #[arg(
        long,
        env = "PATCHBAY_NATS_CERT",
        value_name = "FILE",
        requires = "nats_key"
    )]
    pub nats_cert: Option<PathBuf>,
    /// Client certificate's key (PEM), with --nats-cert.
    #[arg(
        long,
        env = "PATCHBAY_NATS_KEY",
        value_name = "FILE",
        requires = "nats_cert"
    )]
    pub nats_key: Option<PathBuf>,
    /// Replicas of the cluster's buckets when this command creates them (1 to 5, at most the
    /// number of servers); existing buckets keep theirs.
    #[arg(long, env = "PATCHBAY_CLUSTER_REPLICAS", default_value_t = 1,
          value_parser = clap::value_parser!(u8).range(1..=5))]
    pub replicas: u8,
}

/// The cluster's buckets.
#[derive(Clone)]
pub struct Cluster {
    /// The connection.
    pub client: async_nats::Client,
    /// Plugin components by sha256.
    pub plugins: object_store::ObjectStore,
    /// Pipeline definitions by name.
    pub pipelines: kv::Store,
    /// Node heartbeats by node name.
    pub nodes: kv::Store,
    /// Leases by `PIPELINE.SLOT`.
    pub leases: kv::Store,
    /// Rolling upgrades in progress, by pipeline name.
    pub rollouts: kv::Store,
    /// Plugins' host state (see [`state`]).
    pub state: kv::Store,
}

impl Cluster {
    /// Connect (as `client_name`) and open the buckets, creating those that do not exist yet.
    pub async fn connect(args: &ConnectArgs, client_name: &str) -> anyhow::Result<Cluster> {
        let client = connect(args, client_name).await?;
        let js = jetstream::new(client.clone());
        let replicas = usize::from(args.replicas);
        let plugins = match js.get_object_store(PLUGINS).await {
            Ok(store) => store,
            Err(_) => js
                .create_object_store(object_store::Config {
                    bucket: PLUGINS.into(),
                    description: Some("patchbay plugin components by sha256".into()),
                    num_replicas: replicas,
                    ..Default::default()
                })
                .await
                .map_err(|e| bucket_error(PLUGINS, &e))?,
        };
        let pipelines = bucket(&js, PIPELINES, 10, Duration::ZERO, replicas).await?;
        let nodes = bucket(&js, NODES, 1, NODE_TTL, replicas).await?;
        let leases = bucket(&js, LEASES, 1, LEASE_TTL, replicas).await?;
        let rollouts = bucket(&js, ROLLOUTS, 1, Duration::ZERO, replicas).await?;
        let state = bucket(&js, STATE, 1, Duration::ZERO, replicas).await?;
        Ok(Cluster {
            client,
            plugins,
            pipelines,
            nodes,
            leases,
            rollouts,
            state,
        })
    }

    /// Every live entry of a KV bucket, by key. Tried three times, each bounded by
    /// [`READ_LIMIT`]: while the NATS servers elect a new leader for the bucket (one of them
    /// went), a read can go unanswered.
    pub async fn entries(store: &kv::Store) -> anyhow::Result<Vec<kv::Entry>> {
        let mut tries = 0;
        loop {
            let read = tokio::time::timeout(READ_LIMIT, Cluster::entries_once(store)).await;
            let read = read.unwrap_or_else(|_| {
                Err(anyhow::anyhow!(
                    "reading bucket `{}`: no answer within {READ_LIMIT:?}",
                    store.name
                ))
            });
            match read {
                Ok(entries) => return Ok(entries),
                Err(e) if tries >= 2 => return Err(e),
                Err(e) => {
                    tries += 1;
                    tracing::debug!("{e:#}; reading again");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
    }

    /// The keys come from the bucket's stream info (its subjects), the values from direct
    /// gets, which any replica answers. `kv::Store::keys` is not used: it creates a consumer,
    /// and NATS 2.9 may place that on a server that is down and never deliver.
    async fn entries_once(store: &kv::Store) -> anyhow::Result<Vec<kv::Entry>> {
        use futures_util::StreamExt;
        let mut subjects = store
            .stream
            .info_with_subjects(format!("{}>", store.prefix))
            .await
            .map_err(|e| anyhow::anyhow!("cannot list bucket `{}`: {e}", store.name))?;
        let mut names = Vec::new();
        while let Some(subject) = subjects.next().await {
            let (subject, _) =
                subject.map_err(|e| anyhow::anyhow!("listing bucket `{}`: {e}", store.name))?;
            if let Some(key) = subject.strip_prefix(&store.prefix) {
                names.push(key.to_owned());
            }
        }
        let mut entries = Vec::new();
        for key in names {
            // A key can expire or be deleted between the listing and the read.
            if let Some(entry) = store
                .entry(&key)
                .await
                .map_err(|e| anyhow::anyhow!("reading `{key}` of bucket `{}`: {e}", store.name))?
                && entry.operation == kv::Operation::Put
            {
                entries.push(entry);
            }
        }
        entries.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(entries)
    }
}

async fn bucket(
    js: &jetstream::Context,
    name: &str,
    history: i64,
    max_age: Duration,
    replicas: usize,
) -> anyhow::Result<kv::Store> {
    if let Ok(store) = js.get_key_value(name).await {
        return Ok(store);
    }
    // The stream `create_key_value` makes, made here: that function first reads the account's
    // JetStream info, and async-nats 0.52 cannot parse what NATS 2.9 answers (it lacks
    // `reserved_memory`), though the bucket needs nothing from it.
    let created = js
        .create_stream(jetstream::stream::Config {
            name: format!("KV_{name}"),
            subjects: vec![format!("$KV.{name}.>")],
            max_messages_per_subject: history,
            max_age,
            storage: jetstream::stream::StorageType::File,
            allow_rollup: true,
            deny_delete: true,
            allow_direct: true,
            discard: jetstream::stream::DiscardPolicy::New,
            num_replicas: replicas,
            ..Default::default()
        })
        .await;
    match js.get_key_value(name).await {
        Ok(store) => Ok(store),
        Err(e) => Err(match created {
            Err(created) => bucket_error(name, &created),
            Ok(_) => bucket_error(name, &e),
        }),
    }
}

fn bucket_error(name: &str, e: &dyn std::fmt::Display) -> anyhow::Error {
    anyhow::anyhow!(
        "cannot open or create JetStream bucket `{name}`: {e}; the servers need JetStream \
         enabled (`nats-server -js`), and --replicas at most the number of servers"
    )
}

async fn connect(args: &ConnectArgs, client_name: &str) -> anyhow::Result<async_nats::Client> {
    let mut addrs = Vec::new();
    for url in args
        .servers
        .split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
    {
        let addr: async_nats::ServerAddr = url.parse().map_err(|e| {
            anyhow::anyhow!(
                "--cluster: `{url}` is not a NATS server address ({e}); write nats://HOST:PORT"
            )
        })?;
        addrs.push(addr);
    }
    if addrs.is_empty() {
        anyhow::bail!("--cluster names no server; write nats://HOST:PORT[,nats://HOST:PORT…]");
    }
    // Once connected, the client reconnects on its own, to any server of the list, for ever.
    let mut options = async_nats::ConnectOptions::new()
        .name(client_name)
        .connection_timeout(Duration::from_secs(5));
    if let (Some(user), Some(password)) = (&args.nats_user, &args.nats_password) {
        options = options.user_and_password(user.clone(), password.clone());
    }
    if let Some(token) = &args.nats_token {
        options = options.token(token.clone());
    }
    if let Some(seed) = &args.nats_nkey {
        options = options.nkey(seed.clone());
    }
    if let Some(creds) = &args.nats_creds {
        options = options.credentials_file(creds).await.map_err(|e| {
            anyhow::anyhow!("--nats-creds {}: cannot read it: {e}", creds.display())
        })?;
    }
    if args.nats_tls || args.nats_ca.is_some() {
        options = options.require_tls(true);
    }
    if let Some(ca) = &args.nats_ca {
        options = options.add_root_certificates(ca.clone());
    }
    if let (Some(cert), Some(key)) = (&args.nats_cert, &args.nats_key) {
        options = options.add_client_certificate(cert.clone(), key.clone());
    }
    let connecting = options.connect(addrs);
    match tokio::time::timeout(Duration::from_secs(10), connecting).await {
        Ok(Ok(client)) => Ok(client),
        Ok(Err(e)) => Err(anyhow::anyhow!(
            "cannot connect to the cluster at {}: {e}: is nats-server running there (with \
             -js), and do the credentials match?",
            args.servers
        )),
        Err(_) => Err(anyhow::anyhow!(
            "cannot connect to the cluster at {} within 10s: is nats-server running there \
             (with -js), and do the credentials match?",
            args.servers
        )),
    }
}

/// A pipeline name as a KV key (letters, digits, `-` and `_` kept; anything else as `=XX`).
pub fn key_of(name: &str) -> String {
    let mut key = String::with_capacity(name.len());
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' {
            key.push(char::from(b));
        } else {
            key.push_str(&format!("={b:02X}"));
        }
    }
    key
}

/// The pipeline name a KV key stands for (the inverse of [`key_of`]).
pub fn name_of(key: &str) -> String {
    let bytes = key.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'='
            && let Some(hex) = key.get(i + 1..i + 3)
            && let Ok(b) = u8::from_str_radix(hex, 16)
        {
            out.push(b);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pipeline_names_round_trip_through_keys() {
        for name in ["orders", "eu orders", "a.b/c", "ünï", "x=41"] {
            let key = key_of(name);
            assert!(
                key.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_=".contains(&b)),
                "{key}"
            );
            assert_eq!(name_of(&key), name);
        }
        assert_eq!(key_of("eu orders"), "eu=20orders");
    }
}
