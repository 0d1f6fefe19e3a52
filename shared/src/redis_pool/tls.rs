//! TLS for `rediss://`: the extra roots of `REDIS_CA_FILE` beside the
//! system's, and [`RedisPool::check_tls`], which tells at startup whether
//! a server's certificate is refused.

use crate::config::RedisSettings;

use super::*;

/// The roots to trust for TLS: the system's and `REDIS_CA_FILE`'s, as PEM;
/// `None` without a CA file (the driver then reads the system's itself).
pub(crate) fn extra_roots(
    settings: &RedisSettings,
) -> redis::RedisResult<Option<redis::TlsCertificates>> {
    let Some(path) = &settings.ca_file else {
        return Ok(None);
    };
    let mut pem = Vec::new();
    for cert in rustls_native_certs::load_native_certs().certs {
        pem.extend_from_slice(pem_certificate(cert.as_ref()).as_bytes());
    }
    pem.extend(std::fs::read(path)?);
    Ok(Some(redis::TlsCertificates {
        client_tls: None,
        root_cert: Some(pem),
    }))
}

/// A DER certificate as PEM.
pub(crate) fn pem_certificate(der: &[u8]) -> String {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = String::from("-----BEGIN CERTIFICATE-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str("-----END CERTIFICATE-----\n");
    out
}

/// A client for one server (or seed node), with the extra roots if any.
pub(crate) fn single_client(
    url: &str,
    roots: &Option<redis::TlsCertificates>,
) -> redis::RedisResult<redis::Client> {
    match roots {
        Some(certs) => redis::Client::build_with_tls(url, certs.clone()),
        None => redis::Client::open(url),
    }
}

/// Whether a connection failed because the server's certificate was refused.
pub(crate) fn is_certificate_error(e: &redis::RedisError) -> bool {
    let text = e.to_string().to_ascii_lowercase();
    text.contains("certificate") || text.contains("unknownissuer") || text.contains("invalid peer")
}

impl RedisPool {
    /// With TLS, whether a server refuses to be trusted: opens one
    /// connection and returns the error when it fails on the server's
    /// certificate. Any other outcome (success, an unreachable server, no
    /// TLS) is `Ok`: a service starts while Redis is down, but not with a
    /// CA that can never verify it.
    pub async fn check_tls(&self) -> Result<(), String> {
        let tls = match &self.inner.clients {
            Clients::Single(c) => matches!(
                c.get_connection_info().addr(),
                redis::ConnectionAddr::TcpTls { .. }
            ),
            Clients::Cluster { seeds, .. } => seeds.iter().any(|c| {
                matches!(
                    c.get_connection_info().addr(),
                    redis::ConnectionAddr::TcpTls { .. }
                )
            }),
        };
        if !tls {
            return Ok(());
        }
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.inner.timeout))
            .set_response_timeout(Some(self.inner.timeout));
        let client = match &self.inner.clients {
            Clients::Single(c) => Some(c),
            Clients::Cluster { seeds, .. } => seeds.first(),
        };
        let probe = match client {
            Some(c) => c
                .get_multiplexed_async_connection_with_config(&config)
                .await
                .map(|_| ()),
            None => Ok(()),
        };
        match probe {
            Err(e) if is_certificate_error(&e) => Err(e.to_string()),
            _ => Ok(()),
        }
    }
}
