//! Typed settings, read once from the environment at startup.
//!
//! Each binary builds its own `Settings` from the pieces defined here
//! ([`RedisSettings`], [`DatabaseSettings`], [`TelemetrySettings`],
//! [`CacheSettings`]). Every field documents its variable and default, and the
//! same list lives in `.env.example` and in docs/configuration.md. A value that does not
//! parse stops startup with a [`ConfigError`] naming the variable, instead of
//! silently falling back to a default.

mod resource;

use std::fmt::Display;
use std::str::FromStr;
use std::time::Duration;

pub use resource::parse_resource_attributes;
use resource::service_name_of;

/// A setting that is present but unusable. The message always names the
/// variable, so an operator can fix the deployment without reading code.
#[derive(Debug, thiserror::Error)]
#[error("invalid value {value:?} for environment variable {var}: {reason}")]
pub struct ConfigError {
    /// The environment variable that holds the bad value.
    pub var: &'static str,
    /// The value as it was found.
    pub value: String,
    /// Why it was rejected.
    pub reason: String,
}

impl ConfigError {
    /// Builds an error for `var` holding `value`.
    pub fn new(var: &'static str, value: impl Into<String>, reason: impl Display) -> Self {
        Self {
            var,
            value: value.into(),
            reason: reason.to_string(),
        }
    }
}

/// Reads `var`, or `None` when it is unset or empty.
///
/// Empty counts as unset so that a `.env` line like `OTEL_EXPORTER_OTLP_ENDPOINT=`
/// means "off" rather than "the empty endpoint".
pub fn env_opt(var: &'static str) -> Option<String> {
    std::env::var(var).ok().filter(|v| !v.trim().is_empty())
}

/// Reads and parses `var`, falling back to `default` when it is unset.
pub fn env_or<T>(var: &'static str, default: T) -> Result<T, ConfigError>
where
    T: FromStr,
    T::Err: Display,
{
    match env_opt(var) {
        None => Ok(default),
        Some(raw) => raw
            .trim()
            .parse()
            .map_err(|e| ConfigError::new(var, raw, e)),
    }
}

/// Like [`env_or`], and also rejects values outside `min..=max`.
pub fn env_in_range<T>(var: &'static str, default: T, min: T, max: T) -> Result<T, ConfigError>
where
    T: FromStr + PartialOrd + Display + Copy,
    T::Err: Display,
{
    let value = env_or(var, default)?;
    if value < min || value > max {
        return Err(ConfigError::new(
            var,
            value.to_string(),
            format!("must be between {min} and {max}"),
        ));
    }
    Ok(value)
}

/// A duration in milliseconds from `var` (default, bounds in ms): the
/// [`env_in_range`] of every `…_MS` variable.
pub fn env_millis(
    var: &'static str,
    default: u64,
    min: u64,
    max: u64,
) -> Result<Duration, ConfigError> {
    env_in_range(var, default, min, max).map(Duration::from_millis)
}

/// A duration in seconds from `var` (default, bounds in s): the
/// [`env_in_range`] of every `…_SECS` variable.
pub fn env_secs(
    var: &'static str,
    default: u64,
    min: u64,
    max: u64,
) -> Result<Duration, ConfigError> {
    env_in_range(var, default, min, max).map(Duration::from_secs)
}

/// Where Redis is and how the services talk to it.
#[derive(Debug, Clone)]
pub struct RedisSettings {
    /// `REDIS_URL`: the Redis server (`redis://` or, with TLS, `rediss://`),
    /// or with [`Self::cluster`] a comma-separated list of seed nodes of a
    /// Redis Cluster. Defaults to `redis://127.0.0.1:6379`.
    pub url: String,
    /// `REDIS_CLUSTER`: speak Redis Cluster (`true`) or to one server
    /// (`false`, the default).
    pub cluster: bool,
    /// `REDIS_CA_FILE`: a PEM file of extra root certificates to trust for a
    /// `rediss://` URL (a private CA), beside the system's. Read and checked
    /// at startup; unset: the system's roots only.
    pub ca_file: Option<std::path::PathBuf>,
    /// `REDIS_NAMESPACE`: prefix of every key, so that several deployments or
    /// test runs can share one Redis. Defaults to `pricing`.
    pub namespace: String,
    /// `REDIS_POOL_SIZE`: multiplexed connections per process (1–64). Each one
    /// pipelines many concurrent requests; fewer sockets batch more commands per
    /// write, which measured cheaper for both the api and Redis. Defaults to 2.
    pub pool_size: usize,
    /// `REDIS_TIMEOUT_MS`: connect and response timeout. A read path that
    /// cannot reach Redis within it falls back to the store. Defaults to 500.
    pub timeout: Duration,
    /// `REDIS_WAIT_REPLICAS`: after a write that must survive a failover (a
    /// queued job, an appended market event, a lock acquisition), wait until
    /// this many replicas acknowledge it (`WAIT`). 0 (the default) waits for
    /// none. Redis replication stays asynchronous: this narrows the window
    /// in which a failover loses such a write, it does not close it.
    pub wait_replicas: u32,
    /// `REDIS_WAIT_TIMEOUT_MS`: the longest such a `WAIT` blocks; past it the
    /// write stands on the primary alone (logged and counted). Defaults to 100.
    pub wait_timeout: Duration,
}

impl RedisSettings {
    /// Reads `REDIS_URL`, `REDIS_CLUSTER`, `REDIS_CA_FILE`, `REDIS_NAMESPACE`,
    /// `REDIS_POOL_SIZE`, `REDIS_TIMEOUT_MS`, `REDIS_WAIT_REPLICAS` and
    /// `REDIS_WAIT_TIMEOUT_MS`.
    pub fn from_env() -> Result<Self, ConfigError> {
        let url = env_or("REDIS_URL", "redis://127.0.0.1:6379".to_string())?;
        let cluster = env_bool("REDIS_CLUSTER", false)?;
        let ca_file = env_opt("REDIS_CA_FILE").map(std::path::PathBuf::from);
        let settings = Self {
            url,
            cluster,
            ca_file,
            namespace: env_or("REDIS_NAMESPACE", "pricing".to_string())?,
            pool_size: env_in_range("REDIS_POOL_SIZE", 2, 1, 64)?,
            timeout: env_millis("REDIS_TIMEOUT_MS", 500, 10, 60_000)?,
            wait_replicas: env_in_range("REDIS_WAIT_REPLICAS", 0, 0, 16)?,
            wait_timeout: env_millis("REDIS_WAIT_TIMEOUT_MS", 100, 1, 60_000)?,
        };
        settings.validate()?;
        Ok(settings)
    }

    /// Checks what [`Self::from_env`] read: every URL parses, one scheme
    /// for all, several only with `REDIS_CLUSTER`, and a CA file only for
    /// `rediss://`, holding PEM certificates.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let urls = self.urls();
        if urls.is_empty() {
            return Err(ConfigError::new("REDIS_URL", &self.url, "names no server"));
        }
        for url in &urls {
            redis::Client::open(*url).map_err(|e| ConfigError::new("REDIS_URL", &self.url, e))?;
        }
        if urls.len() > 1 && !self.cluster {
            return Err(ConfigError::new(
                "REDIS_URL",
                &self.url,
                "several servers need REDIS_CLUSTER=true",
            ));
        }
        if urls
            .iter()
            .any(|u| self.is_tls() != u.starts_with("rediss://"))
        {
            return Err(ConfigError::new(
                "REDIS_URL",
                &self.url,
                "mixes redis:// and rediss:// nodes",
            ));
        }
        validate_namespace(&self.namespace)?;
        if let Some(path) = &self.ca_file {
            let shown = path.display().to_string();
            if !self.is_tls() {
                return Err(ConfigError::new(
                    "REDIS_CA_FILE",
                    shown,
                    "is only used with rediss:// URLs, and REDIS_URL is not one",
                ));
            }
            let pem =
                std::fs::read(path).map_err(|e| ConfigError::new("REDIS_CA_FILE", &shown, e))?;
            if !String::from_utf8_lossy(&pem).contains("-----BEGIN CERTIFICATE-----") {
                return Err(ConfigError::new(
                    "REDIS_CA_FILE",
                    shown,
                    "holds no PEM certificate",
                ));
            }
        }
        Ok(())
    }

    /// The URLs in [`Self::url`]: one server, or the cluster's seed nodes.
    pub fn urls(&self) -> Vec<&str> {
        self.url
            .split(',')
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .collect()
    }

    /// Whether the connections use TLS (`rediss://`).
    pub fn is_tls(&self) -> bool {
        self.url.trim_start().starts_with("rediss://")
    }

    /// Settings for a given server and namespace with the other defaults; used by tests and tools.
    pub fn for_url(url: impl Into<String>, namespace: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            cluster: false,
            ca_file: None,
            namespace: namespace.into(),
            pool_size: 2,
            timeout: Duration::from_millis(500),
            wait_replicas: 0,
            wait_timeout: Duration::from_millis(100),
        }
    }

    /// [`Self::for_url`] for a Redis Cluster with these seed nodes.
    pub fn for_cluster(seeds: &[String], namespace: impl Into<String>) -> Self {
        Self {
            cluster: true,
            ..Self::for_url(seeds.join(","), namespace)
        }
    }
}

/// Reads a boolean `var` (`true`/`false`, `1`/`0`, `yes`/`no`, any case).
pub fn env_bool(var: &'static str, default: bool) -> Result<bool, ConfigError> {
    match env_opt(var) {
        None => Ok(default),
        Some(raw) => match raw.trim().to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" => Ok(true),
            "false" | "0" | "no" => Ok(false),
            _ => Err(ConfigError::new(var, raw, "expected true or false")),
        },
    }
}

fn validate_namespace(ns: &str) -> Result<(), ConfigError> {
    let ok = !ns.is_empty()
        && ns.len() <= 64
        && ns
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ':'));
    if ok {
        Ok(())
    } else {
        Err(ConfigError::new(
            "REDIS_NAMESPACE",
            ns,
            "must be 1-64 characters of [A-Za-z0-9_.:-]",
        ))
    }
}

/// Which implementation of the catalog store a `DATABASE_URL` names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DatabaseBackend {
    /// `sqlite:`: one file on this machine, the embedded default.
    Sqlite,
    /// `postgres://` or `postgresql://`: one catalog shared by every
    /// service on every machine.
    Postgres,
}

impl DatabaseBackend {
    /// The backend a URL's scheme names, or `None` for any other scheme.
    pub fn of_url(url: &str) -> Option<Self> {
        let scheme = url.split_once(':').map(|(s, _)| s.to_ascii_lowercase())?;
        match scheme.as_str() {
            "sqlite" => Some(Self::Sqlite),
            "postgres" | "postgresql" => Some(Self::Postgres),
            _ => None,
        }
    }
}

/// Where the catalog store is and how the services talk to it.
#[derive(Debug, Clone)]
pub struct DatabaseSettings {
    /// `DATABASE_URL`: the catalog store, by scheme: `sqlite://path` (the
    /// file and its folder are created if missing) or `postgres://…` /
    /// `postgresql://…`. Defaults to `sqlite://data/pricing.db`.
    pub url: String,
    /// The store that [`Self::url`]'s scheme names.
    pub backend: DatabaseBackend,
    /// `DATABASE_MAX_CONNECTIONS`: size of the store's connection pool (1–256). Defaults to 8.
    pub max_connections: u32,
    /// `DATABASE_CONNECT_TIMEOUT_MS`: how long opening a connection, or
    /// waiting for a free pooled one, may take before the call fails (a
    /// price read then answers 503). Defaults to 3000.
    pub connect_timeout: Duration,
    /// `DATABASE_STATEMENT_TIMEOUT_MS`: PostgreSQL's `statement_timeout`
    /// for every statement the services send; 0 turns it off. SQLite has no
    /// such limit (its writers wait at most 5 s for a lock). Defaults to 10000.
    pub statement_timeout: Duration,
}

impl DatabaseSettings {
    /// Reads `DATABASE_URL`, `DATABASE_MAX_CONNECTIONS`,
    /// `DATABASE_CONNECT_TIMEOUT_MS` and `DATABASE_STATEMENT_TIMEOUT_MS`.
    pub fn from_env() -> Result<Self, ConfigError> {
        let url = env_or("DATABASE_URL", "sqlite://data/pricing.db".to_string())?;
        let backend = DatabaseBackend::of_url(&url).ok_or_else(|| {
            ConfigError::new(
                "DATABASE_URL",
                redact_url_password(&url),
                "expected a sqlite://, postgres:// or postgresql:// URL",
            )
        })?;
        Ok(Self {
            url,
            backend,
            max_connections: env_in_range("DATABASE_MAX_CONNECTIONS", 8, 1, 256)?,
            connect_timeout: env_millis("DATABASE_CONNECT_TIMEOUT_MS", 3_000, 10, 600_000)?,
            statement_timeout: env_millis("DATABASE_STATEMENT_TIMEOUT_MS", 10_000, 0, 3_600_000)?,
        })
    }

    /// Settings for `url` with the other defaults; used by tests and tools.
    /// An unknown scheme is taken as SQLite, whose driver then refuses it.
    pub fn for_url(url: impl Into<String>, max_connections: u32) -> Self {
        let url = url.into();
        Self {
            backend: DatabaseBackend::of_url(&url).unwrap_or(DatabaseBackend::Sqlite),
            url,
            max_connections,
            connect_timeout: Duration::from_secs(3),
            statement_timeout: Duration::from_secs(10),
        }
    }

    /// [`Self::url`] with any password replaced by `***`, for messages and logs.
    pub fn redacted_url(&self) -> String {
        redact_url_password(&self.url)
    }
}

/// `url` with the password of its userinfo (`scheme://user:password@host`)
/// replaced by `***`; other URLs are returned as they are.
pub fn redact_url_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{scheme}://{user}:***@{host}{tail}"),
            None => url.to_string(),
        },
        None => url.to_string(),
    }
}

/// How prices are cached.
#[derive(Debug, Clone, Copy)]
pub struct CacheSettings {
    /// `CACHE_TTL_SECS`: lifetime of a cached price, in seconds (1–86400). Defaults to 60.
    pub ttl: Duration,
}

impl CacheSettings {
    /// Reads `CACHE_TTL_SECS`.
    pub fn from_env() -> Result<Self, ConfigError> {
        Ok(Self {
            ttl: env_secs("CACHE_TTL_SECS", 60, 1, 86_400)?,
        })
    }
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable, coloured when the output is a terminal.
    Pretty,
    /// One JSON object per line, for log shippers.
    Json,
}

impl FromStr for LogFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "pretty" | "text" => Ok(Self::Pretty),
            "json" => Ok(Self::Json),
            _ => Err("expected `pretty` or `json`".into()),
        }
    }
}

/// Logging and tracing export.
#[derive(Debug, Clone)]
pub struct TelemetrySettings {
    /// `OTEL_SERVICE_NAME`: the service name on exported spans. Defaults to the
    /// binary's own (`pricing-api`, `pricing-worker`, `pricing-listener`).
    pub service_name: String,
    /// `OTEL_EXPORTER_OTLP_ENDPOINT`: the OTLP collector. Unset, or
    /// `OTEL_SDK_DISABLED=true`, means no export at all.
    pub otlp_endpoint: Option<String>,
    /// `OTEL_EXPORTER_OTLP_PROTOCOL`: `grpc` (default) or `http/protobuf`.
    pub otlp_protocol: OtlpProtocol,
    /// `OTEL_TRACES_SAMPLER` and `OTEL_TRACES_SAMPLER_ARG`: which traces are
    /// kept. Defaults to `parentbased_always_on`.
    pub sampler: TraceSampler,
    /// `OTEL_BSP_SCHEDULE_DELAY` (ms, default 5,000): the longest a finished
    /// span waits before it is sent (a full batch goes at once).
    pub batch_delay: Duration,
    /// `OTEL_BSP_MAX_QUEUE_SIZE` (default 65,536): finished spans waiting to
    /// be sent, at most; more are dropped (with a warning a minute).
    pub max_queue: usize,
    /// `OTEL_BSP_MAX_EXPORT_BATCH_SIZE` (default 512, at most
    /// `OTEL_BSP_MAX_QUEUE_SIZE`): spans per export request, at most. Larger
    /// batches mean fewer requests (and wake-ups of the export thread) for
    /// the same spans; the collector must accept the bigger messages.
    pub max_export_batch: usize,
    /// `LOG_FORMAT`: `pretty` (default) or `json`.
    pub log_format: LogFormat,
    /// `RUST_LOG`: the env-filter directive. Defaults to `info`.
    pub log_filter: String,
    /// `OTEL_RESOURCE_ATTRIBUTES`: more resource attributes on exported
    /// spans (`deployment.environment.name=staging,service.version=abc`,
    /// values percent-encoded), as [`parse_resource_attributes`] reads them.
    /// `service.name` here names the service unless `OTEL_SERVICE_NAME`
    /// does; the others are sent as given, and override this crate's
    /// `service.version` and `telemetry.sdk.language`.
    pub resource_attributes: Vec<(String, String)>,
}

/// Which traces are kept, as OpenTelemetry's `OTEL_TRACES_SAMPLER` names
/// them; the ratio comes from `OTEL_TRACES_SAMPLER_ARG` (0–1, default 1).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub enum TraceSampler {
    /// `always_on`: every trace, whatever the parent decided.
    AlwaysOn,
    /// `always_off`: none.
    AlwaysOff,
    /// `traceidratio`: this fraction of trace ids, whatever the parent decided.
    TraceIdRatio(f64),
    /// `parentbased_always_on` (the default): the parent's decision; every root.
    #[default]
    ParentBasedAlwaysOn,
    /// `parentbased_always_off`: the parent's decision; no root.
    ParentBasedAlwaysOff,
    /// `parentbased_traceidratio`: the parent's decision; this fraction of roots.
    ParentBasedTraceIdRatio(f64),
}

impl TraceSampler {
    /// Reads `OTEL_TRACES_SAMPLER` and `OTEL_TRACES_SAMPLER_ARG`.
    pub fn from_env() -> Result<Self, ConfigError> {
        let ratio = || -> Result<f64, ConfigError> {
            let r = env_or("OTEL_TRACES_SAMPLER_ARG", 1.0f64)?;
            if !(0.0..=1.0).contains(&r) {
                return Err(ConfigError::new(
                    "OTEL_TRACES_SAMPLER_ARG",
                    r.to_string(),
                    "must be a ratio between 0 and 1",
                ));
            }
            Ok(r)
        };
        let Some(name) = env_opt("OTEL_TRACES_SAMPLER") else {
            return Ok(Self::default());
        };
        Ok(match name.trim().to_ascii_lowercase().as_str() {
            "always_on" => Self::AlwaysOn,
            "always_off" => Self::AlwaysOff,
            "traceidratio" => Self::TraceIdRatio(ratio()?),
            "parentbased_always_on" | "" => Self::ParentBasedAlwaysOn,
            "parentbased_always_off" => Self::ParentBasedAlwaysOff,
            "parentbased_traceidratio" => Self::ParentBasedTraceIdRatio(ratio()?),
            _ => {
                return Err(ConfigError::new(
                    "OTEL_TRACES_SAMPLER",
                    &name,
                    "expected always_on, always_off, traceidratio, parentbased_always_on, \
                     parentbased_always_off or parentbased_traceidratio",
                ));
            }
        })
    }
}

/// How spans travel to the collector.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum OtlpProtocol {
    /// OTLP over gRPC (port 4317 by convention).
    #[default]
    Grpc,
    /// OTLP over HTTP with protobuf bodies (port 4318, path `/v1/traces`).
    HttpProtobuf,
}

impl std::str::FromStr for OtlpProtocol {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim() {
            "grpc" => Ok(OtlpProtocol::Grpc),
            "http/protobuf" => Ok(OtlpProtocol::HttpProtobuf),
            other => Err(format!(
                "unknown protocol {other:?}; expected grpc or http/protobuf"
            )),
        }
    }
}

impl TelemetrySettings {
    /// Reads the telemetry variables; `default_service` names the binary.
    pub fn from_env(default_service: &str) -> Result<Self, ConfigError> {
        let log_filter = env_or("RUST_LOG", "info".to_string())?;
        tracing_subscriber::EnvFilter::try_new(&log_filter)
            .map_err(|e| ConfigError::new("RUST_LOG", &log_filter, e))?;
        let otlp_endpoint = env_opt("OTEL_EXPORTER_OTLP_ENDPOINT");
        if let Some(ep) = &otlp_endpoint
            && !(ep.starts_with("http://") || ep.starts_with("https://"))
        {
            return Err(ConfigError::new(
                "OTEL_EXPORTER_OTLP_ENDPOINT",
                ep,
                "must start with http:// or https://",
            ));
        }
        // The OpenTelemetry spec reads this one case-insensitively.
        let disabled = match env_opt("OTEL_SDK_DISABLED") {
            None => false,
            Some(v) if v.trim().eq_ignore_ascii_case("true") => true,
            Some(v) if v.trim().eq_ignore_ascii_case("false") || v.trim().is_empty() => false,
            Some(v) => {
                return Err(ConfigError::new(
                    "OTEL_SDK_DISABLED",
                    &v,
                    "expected true or false",
                ));
            }
        };
        let resource_attributes = match env_opt("OTEL_RESOURCE_ATTRIBUTES") {
            None => Vec::new(),
            Some(raw) => parse_resource_attributes(&raw)
                .map_err(|e| ConfigError::new("OTEL_RESOURCE_ATTRIBUTES", raw, e))?,
        };
        let max_queue = env_in_range("OTEL_BSP_MAX_QUEUE_SIZE", 65_536, 512, 10_000_000)?;
        let max_export_batch = env_in_range("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", 512, 1, 10_000_000)?;
        if max_export_batch > max_queue {
            return Err(ConfigError::new(
                "OTEL_BSP_MAX_EXPORT_BATCH_SIZE",
                max_export_batch.to_string(),
                format!("must be at most OTEL_BSP_MAX_QUEUE_SIZE ({max_queue})"),
            ));
        }
        Ok(Self {
            service_name: service_name_of(
                env_opt("OTEL_SERVICE_NAME"),
                &resource_attributes,
                default_service,
            ),
            otlp_endpoint: otlp_endpoint.filter(|_| !disabled),
            otlp_protocol: env_or("OTEL_EXPORTER_OTLP_PROTOCOL", OtlpProtocol::Grpc)?,
            sampler: TraceSampler::from_env()?,
            batch_delay: env_millis("OTEL_BSP_SCHEDULE_DELAY", 5_000, 1, 3_600_000)?,
            max_queue,
            max_export_batch,
            log_format: env_or("LOG_FORMAT", LogFormat::Pretty)?,
            log_filter,
            resource_attributes,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_error_names_the_variable() {
        let err = ConfigError::new("CACHE_TTL_SECS", "abc", "invalid digit");
        assert!(err.to_string().contains("CACHE_TTL_SECS"));
        assert!(err.to_string().contains("abc"));
    }

    #[test]
    fn namespace_rejects_spaces_and_empty() {
        assert!(validate_namespace("pricing").is_ok());
        assert!(validate_namespace("test:run-1").is_ok());
        assert!(validate_namespace("").is_err());
        assert!(validate_namespace("has space").is_err());
    }

    #[test]
    fn database_urls_pick_their_backend_and_hide_passwords() {
        use DatabaseBackend::*;
        assert_eq!(DatabaseBackend::of_url("sqlite://data/x.db"), Some(Sqlite));
        assert_eq!(DatabaseBackend::of_url("sqlite::memory:"), Some(Sqlite));
        assert_eq!(DatabaseBackend::of_url("postgres://u@h/db"), Some(Postgres));
        assert_eq!(
            DatabaseBackend::of_url("PostgreSQL://u@h/db"),
            Some(Postgres)
        );
        assert_eq!(DatabaseBackend::of_url("mysql://u@h/db"), None);
        assert_eq!(DatabaseBackend::of_url("data/x.db"), None);
        assert_eq!(
            redact_url_password("postgres://pricing:s3cr@t@10.0.0.5:5432/pricing?sslmode=require"),
            "postgres://pricing:***@10.0.0.5:5432/pricing?sslmode=require"
        );
        assert_eq!(
            redact_url_password("postgres://pricing@h/db"),
            "postgres://pricing@h/db"
        );
        assert_eq!(
            redact_url_password("sqlite://data/x.db"),
            "sqlite://data/x.db"
        );
    }

    #[test]
    fn log_format_parses_both_spellings() {
        assert_eq!("JSON".parse::<LogFormat>(), Ok(LogFormat::Json));
        assert_eq!("pretty".parse::<LogFormat>(), Ok(LogFormat::Pretty));
        assert!("yaml".parse::<LogFormat>().is_err());
    }
}
