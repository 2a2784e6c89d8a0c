//! Configuration: a TOML file, then environment variables, then flags (flags win; list flags
//! add to the file's lists). Every field is documented in README.md.

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    time::Duration,
};

use anyhow::{bail, Context};
use clap::{Parser, ValueEnum};
use serde::Deserialize;

use identity::Identity;

use crate::routing::{Balancer, Protocol};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Plain,
    Json,
}

/// Command line; every flag also reads `GATEWAY_<NAME>` from the environment.
#[derive(Debug, Parser, Default)]
#[command(
    name = "gateway",
    version,
    about = "mTLS multicluster gateway: a drop-in for linkerd-gateway"
)]
pub struct Cli {
    /// TOML config file.
    #[arg(long, env = "GATEWAY_CONFIG")]
    pub config: Option<PathBuf>,
    /// mTLS listener [default: 0.0.0.0:4143].
    #[arg(long, env = "GATEWAY_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Admin listener for /ready, /live, /metrics; keep it off the LoadBalancer
    /// [default: 0.0.0.0:4191].
    #[arg(long, env = "GATEWAY_ADMIN_LISTEN")]
    pub admin_listen: Option<SocketAddr>,
    /// Probe listener serving only /ready (mTLS or plaintext), the one admin port to publish,
    /// or `off` [default: 0.0.0.0:4181].
    #[arg(long, env = "GATEWAY_PROBE_LISTEN", value_name = "ADDR|off")]
    pub probe_listen: Option<String>,
    /// Control listener serving tap (mTLS, only to --tap-svc-name); keep it off the
    /// LoadBalancer [default: 0.0.0.0:4190] (also LINKERD2_PROXY_CONTROL_LISTEN_ADDR).
    #[arg(long, env = "GATEWAY_CONTROL_LISTEN")]
    pub control_listen: Option<SocketAddr>,
    /// The identity allowed to tap (viz's tap controller); without it tap is off (also
    /// LINKERD2_PROXY_TAP_SVC_NAME).
    #[arg(long, env = "GATEWAY_TAP_SVC_NAME")]
    pub tap_svc_name: Option<String>,
    /// PEM file of the trust anchor(s) client certificates must chain to.
    #[arg(long, env = "GATEWAY_TRUST_ANCHORS")]
    pub trust_anchors: Option<PathBuf>,
    /// The gateway's certificate followed by its chain (PEM).
    #[arg(long, env = "GATEWAY_CERT")]
    pub cert: Option<PathBuf>,
    /// The gateway's private key (PEM, ECDSA P-256).
    #[arg(long, env = "GATEWAY_KEY")]
    pub key: Option<PathBuf>,
    /// Get the certificate from Linkerd's identity service at HOST:PORT instead of files
    /// (also LINKERD2_PROXY_IDENTITY_SVC_ADDR).
    #[arg(long, env = "GATEWAY_IDENTITY_SVC_ADDR")]
    pub identity_svc_addr: Option<String>,
    /// The identity service's own identity (also LINKERD2_PROXY_IDENTITY_SVC_NAME).
    #[arg(long, env = "GATEWAY_IDENTITY_SVC_NAME")]
    pub identity_svc_name: Option<String>,
    /// The gateway's identity to ask for (also LINKERD2_PROXY_IDENTITY_LOCAL_NAME).
    #[arg(long, env = "GATEWAY_IDENTITY")]
    pub identity: Option<String>,
    /// Discover cluster services' endpoints from Linkerd's destination service at HOST:PORT
    /// instead of DNS (also LINKERD2_PROXY_DESTINATION_SVC_ADDR).
    #[arg(long, env = "GATEWAY_DESTINATION_SVC_ADDR")]
    pub destination_svc_addr: Option<String>,
    /// The destination service's identity (also LINKERD2_PROXY_DESTINATION_SVC_NAME).
    #[arg(long, env = "GATEWAY_DESTINATION_SVC_NAME")]
    pub destination_svc_name: Option<String>,
    /// Authorize callers with Linkerd's policy service at HOST:PORT (also
    /// LINKERD2_PROXY_POLICY_SVC_ADDR).
    #[arg(long, env = "GATEWAY_POLICY_SVC_ADDR")]
    pub policy_svc_addr: Option<String>,
    /// The policy service's identity (also LINKERD2_PROXY_POLICY_SVC_NAME).
    #[arg(long, env = "GATEWAY_POLICY_SVC_NAME")]
    pub policy_svc_name: Option<String>,
    /// The workload the policy service is asked about (also LINKERD2_PROXY_POLICY_WORKLOAD).
    #[arg(long, env = "GATEWAY_POLICY_WORKLOAD")]
    pub policy_workload: Option<String>,
    /// Policy where no server is known: all-authenticated, all-unauthenticated,
    /// cluster-authenticated, cluster-unauthenticated or deny (also
    /// LINKERD2_PROXY_INBOUND_DEFAULT_POLICY) [default: all-authenticated].
    #[arg(long, env = "GATEWAY_DEFAULT_INBOUND_POLICY")]
    pub default_inbound_policy: Option<String>,
    /// The service-account token proving it (also LINKERD2_PROXY_IDENTITY_TOKEN_FILE)
    /// [default: /var/run/secrets/tokens/linkerd-identity-token].
    #[arg(long, env = "GATEWAY_IDENTITY_TOKEN_FILE")]
    pub identity_token_file: Option<PathBuf>,
    /// Static route AUTHORITY=[h2://]HOST:PORT[,HOST:PORT...] (repeatable).
    #[arg(long = "route", value_name = "AUTHORITY=HOST:PORT")]
    pub routes: Vec<String>,
    /// Names under `svc.<domain>` are resolved by DNS [default: cluster.local].
    #[arg(long, env = "GATEWAY_CLUSTER_DOMAIN")]
    pub cluster_domain: Option<String>,
    /// Allow only these caller identities: exact, or *.suffix (repeatable).
    #[arg(long = "allow-client", value_name = "PATTERN")]
    pub allow_clients: Vec<String>,
    /// Allow only these service hosts to be reached (repeatable).
    #[arg(long = "export", value_name = "HOST")]
    pub exported: Vec<String>,
    /// Fixed name resolution NAME=IP[,IP...], consulted before DNS (repeatable).
    #[arg(long = "host", value_name = "NAME=IP")]
    pub hosts: Vec<String>,
    /// How requests are spread over a service's addresses [default: p2c].
    #[arg(long, value_enum, env = "GATEWAY_BALANCER")]
    pub balancer: Option<Balancer>,
    /// Most concurrent authenticated caller connections [default: 10000].
    #[arg(long, env = "GATEWAY_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,
    /// Most connections still in their handshake; when full, the oldest is shed for a new one
    /// [default: 2048].
    #[arg(long, env = "GATEWAY_MAX_PENDING_CONNECTIONS")]
    pub max_pending_connections: Option<usize>,
    /// Most connections one caller identity may hold [default: 2500].
    #[arg(long, env = "GATEWAY_CALLER_MAX_CONNECTIONS")]
    pub caller_max_connections: Option<usize>,
    /// Most requests (streams) one caller identity may have open at once [default: 5000].
    #[arg(long, env = "GATEWAY_CALLER_MAX_CONCURRENT_REQUESTS")]
    pub caller_max_concurrent_requests: Option<usize>,
    /// Most requests per second one caller identity may send, bursts of a second's worth
    /// [default: unlimited].
    #[arg(long, env = "GATEWAY_CALLER_REQUESTS_PER_SECOND")]
    pub caller_requests_per_second: Option<f64>,
    /// TLS handshake deadline [default: 10s].
    #[arg(long, value_parser = humantime::parse_duration, env = "GATEWAY_HANDSHAKE_TIMEOUT")]
    pub handshake_timeout: Option<Duration>,
    /// Upstream connect deadline [default: 1s].
    #[arg(long, value_parser = humantime::parse_duration, env = "GATEWAY_CONNECT_TIMEOUT")]
    pub connect_timeout: Option<Duration>,
    /// Deadline for upstream response headers [default: 30s].
    #[arg(long, value_parser = humantime::parse_duration, env = "GATEWAY_RESPONSE_TIMEOUT")]
    pub response_timeout: Option<Duration>,
    /// How often the certificate files are checked for a renewal [default: 10s].
    #[arg(long, value_parser = humantime::parse_duration, env = "GATEWAY_CERT_RELOAD_INTERVAL")]
    pub cert_reload_interval: Option<Duration>,
    /// Deadline for a Linkerd transport header after the handshake [default: 10s].
    #[arg(long, value_parser = humantime::parse_duration, env = "GATEWAY_TRANSPORT_HEADER_TIMEOUT")]
    pub transport_header_timeout: Option<Duration>,
    /// An HTTP/1.1 connection with no request open is closed after this [default: 60s].
    #[arg(long, value_parser = humantime::parse_duration, env = "GATEWAY_HTTP1_IDLE_TIMEOUT")]
    pub http1_idle_timeout: Option<Duration>,
    /// An HTTP/2 connection with no stream open (PINGs aside) is closed after this
    /// [default: 10m].
    #[arg(long, value_parser = humantime::parse_duration, env = "GATEWAY_HTTP2_IDLE_TIMEOUT")]
    pub http2_idle_timeout: Option<Duration>,
    /// An opaque stream or upgraded tunnel with no byte either way is closed after this
    /// [default: 1h].
    #[arg(long, value_parser = humantime::parse_duration, env = "GATEWAY_OPAQUE_IDLE_TIMEOUT")]
    pub opaque_idle_timeout: Option<Duration>,
    /// A caller that takes no byte for this long while the gateway has some to send is cut
    /// off [default: 60s].
    #[arg(long, value_parser = humantime::parse_duration, env = "GATEWAY_WRITE_STALL_TIMEOUT")]
    pub write_stall_timeout: Option<Duration>,
    /// How long in-flight requests may finish after SIGTERM [default: 30s].
    #[arg(long, value_parser = humantime::parse_duration, env = "GATEWAY_DRAIN_TIMEOUT")]
    pub drain_timeout: Option<Duration>,
    /// Log format [default: plain].
    #[arg(long, value_enum, env = "GATEWAY_LOG_FORMAT")]
    pub log_format: Option<LogFormat>,
    /// Log filter, e.g. info or info,access=off (RUST_LOG wins when set) [default: info].
    #[arg(long, env = "GATEWAY_LOG_LEVEL")]
    pub log_level: Option<String>,
    /// Log one line per request (target `access`, level info) [default: off].
    #[arg(long, env = "GATEWAY_ACCESS_LOG")]
    pub access_log: bool,
    /// Threads that serve connections; 1 serves them all on one thread, with no hand-off
    /// between threads (also LINKERD2_PROXY_CORES) [default: the CPUs the process may use,
    /// its CPU quota included].
    #[arg(long, env = "GATEWAY_CORES")]
    pub cores: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub listen: Option<SocketAddr>,
    pub admin_listen: Option<SocketAddr>,
    pub probe_listen: Option<String>,
    pub control_listen: Option<SocketAddr>,
    pub tap_svc_name: Option<String>,
    pub trust_anchors: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub identity_svc_addr: Option<String>,
    pub identity_svc_name: Option<String>,
    pub identity: Option<String>,
    pub identity_token_file: Option<PathBuf>,
    pub destination_svc_addr: Option<String>,
    pub destination_svc_name: Option<String>,
    pub policy_svc_addr: Option<String>,
    pub policy_svc_name: Option<String>,
    pub policy_workload: Option<String>,
    pub default_inbound_policy: Option<String>,
    #[serde(default)]
    pub routes: Vec<RouteConfig>,
    pub cluster_domain: Option<String>,
    #[serde(default)]
    pub allow_clients: Vec<String>,
    pub exported_services: Option<Vec<String>>,
    #[serde(default)]
    pub hosts: HashMap<String, Vec<IpAddr>>,
    pub balancer: Option<Balancer>,
    pub max_connections: Option<usize>,
    pub max_pending_connections: Option<usize>,
    #[serde(default)]
    pub caller_limits: CallerLimitsFile,
    pub handshake_timeout: Option<String>,
    pub connect_timeout: Option<String>,
    pub response_timeout: Option<String>,
    pub drain_timeout: Option<String>,
    pub idle_timeout: Option<String>,
    pub http1_idle_timeout: Option<String>,
    pub http2_idle_timeout: Option<String>,
    pub opaque_idle_timeout: Option<String>,
    pub write_stall_timeout: Option<String>,
    pub header_read_timeout: Option<String>,
    pub transport_header_timeout: Option<String>,
    pub cert_reload_interval: Option<String>,
    pub dns_ttl: Option<String>,
    pub max_header_bytes: Option<usize>,
    pub max_concurrent_streams: Option<u32>,
    pub log_format: Option<LogFormat>,
    pub log_level: Option<String>,
    pub access_log: Option<bool>,
    pub cores: Option<usize>,
}

/// `[caller_limits]`: the budget of every caller identity, and `[[caller_limits.overrides]]`
/// for identity patterns (first match wins; unset fields fall back to the default).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CallerLimitsFile {
    pub max_connections: Option<usize>,
    pub max_concurrent_requests: Option<usize>,
    pub requests_per_second: Option<f64>,
    #[serde(default)]
    pub overrides: Vec<CallerLimitOverride>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CallerLimitOverride {
    /// An identity, or `*.suffix`.
    pub identity: String,
    pub max_connections: Option<usize>,
    pub max_concurrent_requests: Option<usize>,
    pub requests_per_second: Option<f64>,
}

impl CallerLimitOverride {
    pub fn limits(&self) -> crate::quota::Limits {
        crate::quota::Limits {
            max_connections: self.max_connections,
            max_concurrent_requests: self.max_concurrent_requests,
            requests_per_second: self.requests_per_second,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    pub authority: String,
    pub upstreams: Vec<String>,
    #[serde(default = "default_protocol")]
    pub protocol: Protocol,
}

fn default_protocol() -> Protocol {
    Protocol::Http1
}

/// Where the trust anchors come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AnchorsSource {
    File(PathBuf),
    /// PEM text, as `LINKERD2_PROXY_IDENTITY_TRUST_ANCHORS` carries it.
    Pem(String),
}

/// Where the gateway's own certificate comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdentitySource {
    /// PEM files (made by `identity`, or kept by cert-manager), reloaded when they change.
    Files { cert: PathBuf, key: PathBuf },
    /// Linkerd's identity service: Certify at start, renewed at 70 % of the lifetime.
    Certify {
        svc_addr: String,
        svc_name: Option<String>,
        local: String,
        token_file: PathBuf,
    },
}

/// Linkerd's destination service, for endpoint discovery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DestinationConfig {
    pub svc_addr: String,
    pub svc_name: Option<String>,
    /// `LINKERD2_PROXY_DESTINATION_CONTEXT`: sent as the context token.
    pub context: String,
}

/// Linkerd's policy service, for the gateway port's authorizations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyConfig {
    pub svc_addr: String,
    pub svc_name: Option<String>,
    /// Who is asking (`LINKERD2_PROXY_POLICY_WORKLOAD`), passed through as given.
    pub workload: String,
}

/// Linkerd's default projected service-account token path.
pub const DEFAULT_TOKEN_FILE: &str = "/var/run/secrets/tokens/linkerd-identity-token";

/// A `LINKERD2_PROXY_<name>` variable, as Linkerd's injector writes it; empty means unset.
fn linkerd_env(name: &str) -> Option<String> {
    std::env::var(format!("LINKERD2_PROXY_{name}"))
        .ok()
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
}

/// Most threads the gateway starts to serve connections.
pub const MAX_CORES: usize = 512;

/// The flag, else Linkerd's injector's `LINKERD2_PROXY_CORES`, else the file, else the CPUs
/// this process may run on (`available_parallelism` counts the affinity mask and the
/// cgroup's CPU quota: a pod limited to one CPU gets one thread).
fn resolve_cores(
    flag: Option<usize>,
    linkerd: Option<String>,
    file: Option<usize>,
) -> anyhow::Result<usize> {
    let linkerd = match linkerd {
        Some(v) => Some(
            v.parse::<usize>()
                .with_context(|| format!("LINKERD2_PROXY_CORES: {v:?} is not a number"))?,
        ),
        None => None,
    };
    let cores = match flag.or(linkerd).or(file) {
        Some(n) => n,
        None => std::thread::available_parallelism().map_or(1, |n| n.get()),
    };
    if !(1..=MAX_CORES).contains(&cores) {
        bail!("cores must be between 1 and {MAX_CORES}, not {cores}");
    }
    Ok(cores)
}

/// The resolved configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub admin_listen: SocketAddr,
    /// `None`: no probe listener (a workload's own proxy, say).
    pub probe_listen: Option<SocketAddr>,
    pub control_listen: SocketAddr,
    /// Who may tap; `None`: tap is off and the control port is not opened.
    pub tap_svc_name: Option<Identity>,
    pub trust_anchors: AnchorsSource,
    pub identity: IdentitySource,
    /// `None`: cluster names are resolved by DNS.
    pub destination: Option<DestinationConfig>,
    pub policy: Option<PolicyConfig>,
    /// The default inbound policy's name, when one was set or a policy service is used.
    pub default_inbound_policy: Option<String>,
    /// `LINKERD2_PROXY_POLICY_CLUSTER_NETWORKS`, for the `cluster-*` default policies.
    pub cluster_networks: Vec<String>,
    pub routes: Vec<RouteConfig>,
    pub cluster_domain: String,
    pub allow_clients: Vec<String>,
    pub exported: Option<Vec<String>>,
    pub hosts: HashMap<String, Vec<IpAddr>>,
    pub balancer: Balancer,
    pub max_connections: usize,
    /// Connections not yet authenticated; the oldest is shed when a new one finds it full.
    pub max_pending_connections: usize,
    /// Every caller identity's budget; `caller_overrides` by pattern.
    pub caller_limits: crate::quota::Limits,
    pub caller_overrides: Vec<CallerLimitOverride>,
    pub handshake_timeout: Duration,
    pub connect_timeout: Duration,
    pub response_timeout: Duration,
    pub drain_timeout: Duration,
    pub idle_timeout: Duration,
    /// Callers' connections: idle per kind, and write stalls.
    pub timeouts: crate::watchdog::Timeouts,
    pub header_read_timeout: Duration,
    pub header_timeout: Duration,
    pub cert_reload_interval: Duration,
    pub dns_ttl: Duration,
    pub max_header_bytes: usize,
    pub max_concurrent_streams: u32,
    pub log_format: LogFormat,
    pub log_level: String,
    pub access_log: bool,
    /// Threads serving connections: 1 runs the runtime on the main thread alone.
    pub cores: usize,
}

fn dur(field: &str, v: Option<String>, default: Duration) -> anyhow::Result<Duration> {
    match v {
        None => Ok(default),
        Some(s) => humantime::parse_duration(&s)
            .with_context(|| format!("{field}: {s:?} is not a duration")),
    }
}

/// A duration from the flag, else the file, else `default`.
fn pick(
    field: &str,
    flag: Option<Duration>,
    file: Option<String>,
    default: Duration,
) -> anyhow::Result<Duration> {
    match flag {
        Some(d) => Ok(d),
        None => dur(field, file, default),
    }
}

/// `AUTHORITY=[h2://]HOST:PORT[,HOST:PORT...]`.
pub fn parse_route_flag(s: &str) -> anyhow::Result<RouteConfig> {
    let Some((authority, rest)) = s.split_once('=') else {
        bail!("--route {s:?}: expected AUTHORITY=HOST:PORT");
    };
    let (protocol, rest) = match rest.strip_prefix("h2://") {
        Some(r) => (Protocol::Http2, r),
        None => (
            Protocol::Http1,
            rest.strip_prefix("http://").unwrap_or(rest),
        ),
    };
    let upstreams: Vec<String> = rest
        .split(',')
        .map(|u| u.trim().to_string())
        .filter(|u| !u.is_empty())
        .collect();
    if authority.trim().is_empty() || upstreams.is_empty() {
        bail!("--route {s:?}: expected AUTHORITY=HOST:PORT");
    }
    Ok(RouteConfig {
        authority: authority.trim().to_string(),
        upstreams,
        protocol,
    })
}

fn parse_host_flag(s: &str) -> anyhow::Result<(String, Vec<IpAddr>)> {
    let (name, ips) = s
        .split_once('=')
        .with_context(|| format!("--host {s:?}: expected NAME=IP"))?;
    let ips = ips
        .split(',')
        .map(|ip| {
            ip.trim()
                .parse::<IpAddr>()
                .with_context(|| format!("--host {s:?}: {ip:?} is not an IP"))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok((name.trim().to_string(), ips))
}

/// `ADDR` or `off`; unset means 0.0.0.0:4181.
fn parse_probe_listen(v: Option<String>) -> anyhow::Result<Option<SocketAddr>> {
    match v.as_deref().map(str::trim) {
        None => Ok(Some(SocketAddr::from(([0, 0, 0, 0], 4181)))),
        Some("off") => Ok(None),
        Some(a) => a
            .parse()
            .map(Some)
            .with_context(|| format!("probe_listen: {a:?} is not ADDR:PORT or off")),
    }
}

/// The cluster domain in Linkerd's gateway suffix list (`svc.cluster.local.`): the first
/// entry of the form `svc.<domain>`.
fn gateway_domain(suffixes: &str) -> Option<String> {
    suffixes
        .split(',')
        .filter_map(|s| s.trim().trim_end_matches('.').strip_prefix("svc."))
        .find(|d| !d.is_empty())
        .map(str::to_string)
}

impl Config {
    pub fn load(cli: Cli) -> anyhow::Result<Self> {
        let file: FileConfig = match &cli.config {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("config {}", path.display()))?;
                toml::from_str(&text).with_context(|| format!("config {}", path.display()))?
            }
            None => FileConfig::default(),
        };
        Self::resolve(cli, file)
    }

    /// The configuration a config file's text gives with no flags (what the config fuzz
    /// target drives; environment variables still apply).
    pub fn from_toml(text: &str) -> anyhow::Result<Self> {
        Self::resolve(Cli::default(), toml::from_str(text)?)
    }

    fn resolve(cli: Cli, file: FileConfig) -> anyhow::Result<Self> {
        let required = |flag: &str, cli: Option<PathBuf>, file: Option<PathBuf>| {
            cli.or(file).with_context(|| {
                format!(
                    "--{flag} is required (or `{}` in the config file)",
                    flag.replace('-', "_")
                )
            })
        };
        let mut routes = file.routes;
        for r in &cli.routes {
            routes.push(parse_route_flag(r)?);
        }
        let mut hosts = file.hosts;
        for h in &cli.hosts {
            let (name, ips) = parse_host_flag(h)?;
            hosts.insert(name, ips);
        }
        let mut allow_clients = file.allow_clients;
        allow_clients.extend(cli.allow_clients);
        let exported = match (file.exported_services, cli.exported) {
            (None, c) if c.is_empty() => None,
            (f, c) => Some(f.unwrap_or_default().into_iter().chain(c).collect()),
        };
        let trust_anchors = match cli.trust_anchors.or(file.trust_anchors) {
            Some(path) => AnchorsSource::File(path),
            None => match linkerd_env("IDENTITY_TRUST_ANCHORS") {
                Some(pem) => AnchorsSource::Pem(pem),
                None => bail!(
                    "--trust-anchors is required (or `trust_anchors` in the config file, or LINKERD2_PROXY_IDENTITY_TRUST_ANCHORS)"
                ),
            },
        };
        let identity_svc_addr = cli
            .identity_svc_addr
            .or_else(|| linkerd_env("IDENTITY_SVC_ADDR"))
            .or(file.identity_svc_addr);
        let identity = match identity_svc_addr {
            Some(svc_addr) => IdentitySource::Certify {
                svc_addr,
                svc_name: cli
                    .identity_svc_name
                    .or_else(|| linkerd_env("IDENTITY_SVC_NAME"))
                    .or(file.identity_svc_name),
                local: cli
                    .identity
                    .or_else(|| linkerd_env("IDENTITY_LOCAL_NAME"))
                    .or_else(|| linkerd_env("IDENTITY_SERVER_ID"))
                    .or(file.identity)
                    .context(
                        "--identity (or LINKERD2_PROXY_IDENTITY_LOCAL_NAME) is required with an identity service",
                    )?,
                token_file: cli
                    .identity_token_file
                    .or_else(|| linkerd_env("IDENTITY_TOKEN_FILE").map(PathBuf::from))
                    .or(file.identity_token_file)
                    .unwrap_or_else(|| PathBuf::from(DEFAULT_TOKEN_FILE)),
            },
            None => IdentitySource::Files {
                cert: required("cert", cli.cert, file.cert)?,
                key: required("key", cli.key, file.key)?,
            },
        };
        let cfg = Config {
            listen: cli
                .listen
                .or_else(|| linkerd_env("INBOUND_LISTEN_ADDR").and_then(|a| a.parse().ok()))
                .or(file.listen)
                .unwrap_or(SocketAddr::from(([0, 0, 0, 0], 4143))),
            admin_listen: cli
                .admin_listen
                .or_else(|| linkerd_env("ADMIN_LISTEN_ADDR").and_then(|a| a.parse().ok()))
                .or(file.admin_listen)
                .unwrap_or(SocketAddr::from(([0, 0, 0, 0], 4191))),
            probe_listen: parse_probe_listen(cli.probe_listen.or(file.probe_listen))?,
            control_listen: cli
                .control_listen
                .or_else(|| linkerd_env("CONTROL_LISTEN_ADDR").and_then(|a| a.parse().ok()))
                .or(file.control_listen)
                .unwrap_or(SocketAddr::from(([0, 0, 0, 0], 4190))),
            tap_svc_name: match cli
                .tap_svc_name
                .or_else(|| linkerd_env("TAP_SVC_NAME"))
                .or(file.tap_svc_name)
            {
                // Linkerd's injector sets it with tap disabled too; the variable wins.
                Some(_) if linkerd_env("TAP_DISABLED").is_some() => None,
                Some(n) => Some(
                    Identity::parse(&n).with_context(|| format!("tap_svc_name: {n:?}"))?,
                ),
                None => None,
            },
            trust_anchors,
            identity,
            destination: cli
                .destination_svc_addr
                .or_else(|| linkerd_env("DESTINATION_SVC_ADDR"))
                .or(file.destination_svc_addr)
                .map(|svc_addr| DestinationConfig {
                    svc_addr,
                    svc_name: cli
                        .destination_svc_name
                        .or_else(|| linkerd_env("DESTINATION_SVC_NAME"))
                        .or(file.destination_svc_name),
                    context: linkerd_env("DESTINATION_CONTEXT").unwrap_or_default(),
                }),
            policy: match cli
                .policy_svc_addr
                .or_else(|| linkerd_env("POLICY_SVC_ADDR"))
                .or(file.policy_svc_addr)
            {
                None => None,
                Some(svc_addr) => Some(PolicyConfig {
                    svc_addr,
                    svc_name: cli
                        .policy_svc_name
                        .or_else(|| linkerd_env("POLICY_SVC_NAME"))
                        .or(file.policy_svc_name),
                    workload: cli
                        .policy_workload
                        .or_else(|| linkerd_env("POLICY_WORKLOAD"))
                        .or(file.policy_workload)
                        .context("--policy-workload (or LINKERD2_PROXY_POLICY_WORKLOAD) is required with a policy service")?,
                }),
            },
            default_inbound_policy: cli
                .default_inbound_policy
                .or_else(|| linkerd_env("INBOUND_DEFAULT_POLICY"))
                .or(file.default_inbound_policy),
            cluster_networks: linkerd_env("POLICY_CLUSTER_NETWORKS")
                .map(|v| v.split(',').map(|n| n.trim().to_string()).filter(|n| !n.is_empty()).collect())
                .unwrap_or_else(|| {
                    ["10.0.0.0/8", "100.64.0.0/10", "172.16.0.0/12", "192.168.0.0/16", "fd00::/8"]
                        .map(String::from)
                        .to_vec()
                }),
            routes,
            cluster_domain: cli
                .cluster_domain
                .or_else(|| {
                    linkerd_env("INBOUND_GATEWAY_SUFFIXES").and_then(|s| gateway_domain(&s))
                })
                .or(file.cluster_domain)
                .unwrap_or_else(|| "cluster.local".into()),
            allow_clients,
            exported,
            hosts,
            balancer: cli.balancer.or(file.balancer).unwrap_or(Balancer::P2c),
            max_connections: cli
                .max_connections
                .or(file.max_connections)
                .unwrap_or(10_000),
            max_pending_connections: cli
                .max_pending_connections
                .or(file.max_pending_connections)
                .unwrap_or(2048),
            caller_limits: crate::quota::Limits {
                max_connections: Some(
                    cli.caller_max_connections
                        .or(file.caller_limits.max_connections)
                        .unwrap_or(2500),
                ),
                max_concurrent_requests: Some(
                    cli.caller_max_concurrent_requests
                        .or(file.caller_limits.max_concurrent_requests)
                        .unwrap_or(5000),
                ),
                requests_per_second: cli
                    .caller_requests_per_second
                    .or(file.caller_limits.requests_per_second)
                    .filter(|r| *r > 0.0),
            },
            caller_overrides: file.caller_limits.overrides,
            handshake_timeout: cli.handshake_timeout.map(Ok).unwrap_or_else(|| {
                dur(
                    "handshake_timeout",
                    file.handshake_timeout,
                    Duration::from_secs(10),
                )
            })?,
            connect_timeout: cli.connect_timeout.map(Ok).unwrap_or_else(|| {
                dur(
                    "connect_timeout",
                    file.connect_timeout,
                    Duration::from_secs(1),
                )
            })?,
            response_timeout: cli.response_timeout.map(Ok).unwrap_or_else(|| {
                dur(
                    "response_timeout",
                    file.response_timeout,
                    Duration::from_secs(30),
                )
            })?,
            drain_timeout: cli.drain_timeout.map(Ok).unwrap_or_else(|| {
                dur("drain_timeout", file.drain_timeout, Duration::from_secs(30))
            })?,
            idle_timeout: dur("idle_timeout", file.idle_timeout, Duration::from_secs(90))?,
            timeouts: crate::watchdog::Timeouts {
                http1_idle: pick(
                    "http1_idle_timeout",
                    cli.http1_idle_timeout,
                    file.http1_idle_timeout,
                    Duration::from_secs(60),
                )?,
                http2_idle: pick(
                    "http2_idle_timeout",
                    cli.http2_idle_timeout,
                    file.http2_idle_timeout,
                    Duration::from_secs(600),
                )?,
                opaque_idle: pick(
                    "opaque_idle_timeout",
                    cli.opaque_idle_timeout,
                    file.opaque_idle_timeout,
                    Duration::from_secs(3600),
                )?,
                write_stall: pick(
                    "write_stall_timeout",
                    cli.write_stall_timeout,
                    file.write_stall_timeout,
                    Duration::from_secs(60),
                )?,
            },
            header_read_timeout: dur(
                "header_read_timeout",
                file.header_read_timeout,
                Duration::from_secs(30),
            )?,
            header_timeout: cli.transport_header_timeout.map(Ok).unwrap_or_else(|| {
                dur(
                    "transport_header_timeout",
                    file.transport_header_timeout,
                    Duration::from_secs(10),
                )
            })?,
            cert_reload_interval: cli.cert_reload_interval.map(Ok).unwrap_or_else(|| {
                dur(
                    "cert_reload_interval",
                    file.cert_reload_interval,
                    Duration::from_secs(10),
                )
            })?,
            dns_ttl: dur("dns_ttl", file.dns_ttl, Duration::from_secs(5))?,
            max_header_bytes: file.max_header_bytes.unwrap_or(64 * 1024),
            max_concurrent_streams: file.max_concurrent_streams.unwrap_or(1000),
            log_format: cli
                .log_format
                .or(file.log_format)
                .unwrap_or(LogFormat::Plain),
            log_level: cli
                .log_level
                .or_else(|| linkerd_env("LOG"))
                .or(file.log_level)
                .unwrap_or_else(|| "info".into()),
            // Off unless asked for, as in Linkerd's proxy: a line per request costs about a
            // third more CPU per request and a write to stderr.
            access_log: cli.access_log || file.access_log.unwrap_or(false),
            cores: resolve_cores(cli.cores, linkerd_env("CORES"), file.cores)?,
        };
        if cfg.max_connections == 0 || cfg.max_pending_connections == 0 {
            bail!("max_connections and max_pending_connections must be at least 1");
        }
        Ok(cfg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_win_and_lists_add() {
        let dir = std::env::temp_dir().join(format!("gw-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("gw.toml");
        std::fs::write(
            &path,
            r#"
listen = "127.0.0.1:1"
trust_anchors = "a.crt"
cert = "c.crt"
key = "c.key"
connect_timeout = "250ms"
access_log = true
allow_clients = ["*.emojivoto.serviceaccount.identity.linkerd.cluster.local"]
[[routes]]
authority = "web-svc.emojivoto.svc.cluster.local:80"
upstreams = ["127.0.0.1:8080"]
[hosts]
"emoji-svc.emojivoto.svc.cluster.local" = ["127.0.0.1"]
"#,
        )
        .unwrap();
        let cli = Cli {
            config: Some(path.clone()),
            listen: Some("127.0.0.1:2".parse().unwrap()),
            routes: vec![
                "grpc.ns.svc.cluster.local:9090=h2://127.0.0.1:9090,127.0.0.1:9091".into(),
            ],
            ..Default::default()
        };
        let cfg = Config::load(cli).unwrap();
        assert_eq!(cfg.listen, "127.0.0.1:2".parse().unwrap());
        assert_eq!(cfg.admin_listen, "0.0.0.0:4191".parse().unwrap());
        assert_eq!(cfg.probe_listen, Some("0.0.0.0:4181".parse().unwrap()));
        assert_eq!(cfg.connect_timeout, Duration::from_millis(250));
        assert_eq!(cfg.routes.len(), 2);
        assert_eq!(cfg.routes[1].protocol, Protocol::Http2);
        assert_eq!(
            cfg.routes[1].upstreams,
            ["127.0.0.1:9090", "127.0.0.1:9091"]
        );
        assert_eq!(cfg.allow_clients.len(), 1);
        assert!(cfg.exported.is_none());
        assert!(cfg.access_log);
        std::fs::write(&path, "listen = \"127.0.0.1:1\"\nbogus = 1\n").unwrap();
        let err = Config::load(Cli {
            config: Some(path),
            ..Default::default()
        })
        .unwrap_err();
        assert!(
            format!("{err:#}").contains("unknown field `bogus`"),
            "{err:#}"
        );
        let err = Config::load(Cli::default()).unwrap_err();
        assert!(
            err.to_string().contains("--trust-anchors is required"),
            "{err}"
        );
        std::fs::remove_dir_all(dir).ok();
    }

    #[test]
    fn probe_listen_can_be_turned_off() {
        assert_eq!(parse_probe_listen(Some("off".into())).unwrap(), None);
        assert_eq!(
            parse_probe_listen(Some("127.0.0.1:9".into())).unwrap(),
            Some("127.0.0.1:9".parse().unwrap())
        );
        assert!(parse_probe_listen(Some("4181".into())).is_err());
    }

    #[test]
    fn cores_come_from_the_flag_then_linkerds_variable_then_the_file() {
        assert_eq!(
            resolve_cores(Some(1), Some("4".into()), Some(8)).unwrap(),
            1
        );
        assert_eq!(resolve_cores(None, Some("4".into()), Some(8)).unwrap(), 4);
        assert_eq!(resolve_cores(None, None, Some(8)).unwrap(), 8);
        let cpus = std::thread::available_parallelism().unwrap().get();
        assert_eq!(resolve_cores(None, None, None).unwrap(), cpus);
        assert!(resolve_cores(Some(0), None, None).is_err());
        assert!(resolve_cores(None, None, Some(MAX_CORES + 1)).is_err());
        let err = resolve_cores(None, Some("two".into()), None).unwrap_err();
        assert!(
            format!("{err:#}").contains("LINKERD2_PROXY_CORES"),
            "{err:#}"
        );
    }

    #[test]
    fn route_flag_errors() {
        assert!(parse_route_flag("nope").is_err());
        assert!(parse_route_flag("a=").is_err());
        assert_eq!(
            parse_route_flag("a:80=http://127.0.0.1:1")
                .unwrap()
                .protocol,
            Protocol::Http1
        );
    }
}
