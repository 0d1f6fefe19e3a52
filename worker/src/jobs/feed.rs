//! The market-data feed: competitor prices fetched over HTTP or HTTPS during
//! a recalculation, when `MARKET_DATA_URL` is set.
//!
//! `GET {MARKET_DATA_URL}/competitor-prices?ids=P-1,P-2` must answer
//! `{"prices": [{"product_id": "P-1", "competitor": "acme", "price": 12.5}, …]}`.
//! Products the feed does not mention keep the competitor prices stored
//! from market events.
//!
//! A page of the catalog is asked in several requests, [`FEED_CONCURRENCY`]
//! at a time, each with as many ids as fit in [`FEED_IDS_BYTES`] (at most
//! [`FEED_BATCH`]), which keeps URLs below the 8 KiB that proxies and
//! servers commonly accept. Fields the feed adds beyond these are
//! ignored, so the feed can grow without breaking recalculations.
//!
//! HTTPS is verified against the system's root certificates (rustls with
//! the platform verifier), plus those of `MARKET_DATA_CA_FILE` when it is
//! set, for a feed behind a private CA.
//!
//! Each request carries the `traceparent` (and `tracestate`) of the job's
//! span. Failure classes, as the job's retry policy needs them: a timeout, a
//! refused connection, a 5xx, a 408 or a 429 is [`JobError::Retryable`];
//! any other 4xx, a body that is not the shape above, or a server
//! certificate the worker refuses (a setting to fix, which a retry would
//! only repeat) is [`JobError::Permanent`].

use std::collections::HashMap;
use std::time::Duration;

use futures::{StreamExt as _, TryStreamExt as _};
use queue::JobError;
use reqwest::StatusCode;
use serde::Deserialize;

/// Most product ids in one feed request.
pub const FEED_BATCH: usize = 1_000;

/// Most bytes of ids (with their commas) in one request's query string, so
/// the whole URL stays under the 8 KiB limit common to proxies and servers.
pub const FEED_IDS_BYTES: usize = 6_000;

/// Feed requests in flight at once for one page of the catalog.
pub const FEED_CONCURRENCY: usize = 4;

/// How the worker reaches the feed.
#[derive(Debug, Clone)]
pub struct FeedSettings {
    /// `MARKET_DATA_URL`: the feed's base URL, `http://` or `https://`.
    /// Unset: no feed.
    pub url: String,
    /// `MARKET_DATA_CA_FILE`: extra root certificates (PEM) to trust for an
    /// `https://` feed, beside the system's. Unset: the system's only.
    pub extra_roots: Vec<reqwest::Certificate>,
    /// `MARKET_DATA_CONNECT_TIMEOUT_MS`: connect timeout. Defaults to 3,000.
    pub connect_timeout: Duration,
    /// `MARKET_DATA_TIMEOUT_MS`: total timeout of one request. Defaults to 5,000.
    pub timeout: Duration,
}

/// One competitor price from the feed.
#[derive(Debug, Clone, Deserialize)]
pub struct FedPrice {
    /// The product.
    pub product_id: String,
    /// Who asks this price.
    pub competitor: String,
    /// The price.
    pub price: f64,
}

#[derive(Debug, Deserialize)]
struct FeedBody {
    prices: Vec<FedPrice>,
}

/// A client of the feed.
#[derive(Clone)]
pub struct Feed {
    client: reqwest::Client,
    base: String,
}

impl Feed {
    /// A client with the configured timeouts and trusted roots.
    pub fn new(settings: &FeedSettings) -> Result<Self, reqwest::Error> {
        let mut builder = reqwest::Client::builder()
            .connect_timeout(settings.connect_timeout)
            .timeout(settings.timeout);
        if !settings.extra_roots.is_empty() {
            builder = builder.tls_certs_merge(settings.extra_roots.iter().cloned());
        }
        Ok(Self {
            client: builder.build()?,
            base: settings.url.trim_end_matches('/').to_string(),
        })
    }

    /// The lowest fed competitor price per product among `ids`, asked
    /// [`FEED_BATCH`] ids to a request, [`FEED_CONCURRENCY`] at a time. The
    /// first failure fails the whole call.
    pub async fn lowest_prices(&self, ids: &[&str]) -> Result<HashMap<String, f64>, JobError> {
        // Collected first: a lazy `map` here makes the job's future lose `Send`.
        let requests: Vec<_> = batches(ids).map(|batch| self.fetch(batch)).collect();
        let batches: Vec<HashMap<String, f64>> = futures::stream::iter(requests)
            .buffer_unordered(FEED_CONCURRENCY)
            .try_collect()
            .await?;
        let mut lowest = HashMap::with_capacity(ids.len());
        for batch in batches {
            for (id, price) in batch {
                lowest
                    .entry(id)
                    .and_modify(|v: &mut f64| *v = v.min(price))
                    .or_insert(price);
            }
        }
        Ok(lowest)
    }

    /// One request: the lowest fed price per product among `ids`.
    async fn fetch(&self, ids: &[&str]) -> Result<HashMap<String, f64>, JobError> {
        // Product ids are [A-Za-z0-9_.:-] only, so they need no escaping.
        let url = format!("{}/competitor-prices?ids={}", self.base, ids.join(","));
        let mut request = self.client.get(&url);
        // The W3C trace context of the job's span, so the feed's own traces
        // join the job's.
        if let Some((parent, state)) = shared::telemetry::current_trace_context() {
            request = request.header("traceparent", parent);
            if let Some(state) = state {
                request = request.header("tracestate", state);
            }
        }
        let response = request.send().await.map_err(|e| {
            if refused_certificate(&e) {
                JobError::Permanent(format!(
                    "market-data feed's certificate refused: {}",
                    error_chain(&e)
                ))
            } else {
                JobError::Retryable(format!("market-data feed unreachable: {}", error_chain(&e)))
            }
        })?;
        let status = response.status();
        if status.is_server_error()
            || status == StatusCode::REQUEST_TIMEOUT
            || status == StatusCode::TOO_MANY_REQUESTS
        {
            return Err(JobError::Retryable(format!(
                "market-data feed answered {status}"
            )));
        }
        if !status.is_success() {
            return Err(JobError::Permanent(format!(
                "market-data feed answered {status}"
            )));
        }
        let bytes = response
            .bytes()
            .await
            .map_err(|e| JobError::Retryable(format!("market-data feed body: {e}")))?;
        let body: FeedBody = serde_json::from_slice(&bytes).map_err(|e| {
            JobError::Permanent(format!("market-data feed sent a malformed body: {e}"))
        })?;
        let mut lowest = HashMap::new();
        for p in body.prices {
            if !(p.price.is_finite() && p.price > 0.0) {
                return Err(JobError::Permanent(format!(
                    "market-data feed sent price {} for {}",
                    p.price, p.product_id
                )));
            }
            lowest
                .entry(p.product_id)
                .and_modify(|v: &mut f64| *v = v.min(p.price))
                .or_insert(p.price);
        }
        Ok(lowest)
    }
}

/// Whether `e` failed because the server's certificate was refused
/// (unknown issuer, wrong name, expired, …).
fn refused_certificate(e: &reqwest::Error) -> bool {
    let mut next = std::error::Error::source(e);
    while let Some(err) = next {
        if let Some(rustls::Error::InvalidCertificate(_)) = err.downcast_ref::<rustls::Error>() {
            return true;
        }
        // An io::Error's `source` skips the error it wraps, and the TLS
        // connector wraps rustls's error in two of them: look inside.
        next = match err.downcast_ref::<std::io::Error>() {
            Some(io) => io
                .get_ref()
                .map(|inner| inner as &(dyn std::error::Error + 'static)),
            None => err.source(),
        };
    }
    false
}

/// `e` and its causes, joined by ": " (reqwest's own message leaves the
/// cause out, which is the part an operator needs).
fn error_chain(e: &reqwest::Error) -> String {
    let mut out = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(err) = source {
        out.push_str(": ");
        out.push_str(&err.to_string());
        source = err.source();
    }
    out
}

/// Splits `ids` into runs of at most [`FEED_BATCH`] ids and
/// [`FEED_IDS_BYTES`] bytes of query string each (a single longer id still
/// goes alone).
fn batches<'a>(ids: &'a [&'a str]) -> impl Iterator<Item = &'a [&'a str]> + 'a {
    let mut rest = ids;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let (mut n, mut bytes) = (0, 0);
        while n < rest.len() && n < FEED_BATCH {
            let add = rest[n].len() + usize::from(n > 0);
            if n > 0 && bytes + add > FEED_IDS_BYTES {
                break;
            }
            bytes += add;
            n += 1;
        }
        let (batch, tail) = rest.split_at(n);
        rest = tail;
        Some(batch)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_cover_every_id_once_within_both_limits() {
        let owned: Vec<String> = (0..5_000).map(|i| format!("PRODUCT-{i:06}")).collect();
        let ids: Vec<&str> = owned.iter().map(String::as_str).collect();
        let got: Vec<&[&str]> = batches(&ids).collect();
        assert!(got.len() > 1);
        for b in &got {
            assert!(b.len() <= FEED_BATCH);
            assert!(b.join(",").len() <= FEED_IDS_BYTES, "{}", b.join(",").len());
        }
        let flat: Vec<&str> = got.concat();
        assert_eq!(flat, ids);
    }

    #[test]
    fn short_ids_fill_a_batch_and_an_oversized_id_goes_alone() {
        let ids = vec!["P-1"; 2_500];
        let sizes: Vec<usize> = batches(&ids).map(<[&str]>::len).collect();
        assert_eq!(sizes, vec![1_000, 1_000, 500]);
        let long = "x".repeat(FEED_IDS_BYTES + 1);
        let ids = vec!["P-1", long.as_str(), "P-2"];
        let got: Vec<&[&str]> = batches(&ids).collect();
        assert_eq!(got, vec![&["P-1"][..], &[long.as_str()][..], &["P-2"][..]]);
        assert_eq!(batches(&[]).count(), 0);
    }
}
