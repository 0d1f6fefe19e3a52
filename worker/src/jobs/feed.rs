//! The market-data feed: competitor prices fetched over HTTP during a
//! recalculation, when `MARKET_DATA_URL` is set.
//!
//! `GET {MARKET_DATA_URL}/competitor-prices?ids=P-1,P-2` must answer
//! `{"prices": [{"product_id": "P-1", "competitor": "acme", "price": 12.5}, …]}`.
//! Products the feed does not mention keep the competitor prices stored
//! from market events.
//!
//! Each request carries the `traceparent` (and `tracestate`) of the job's
//! span. Failure classes, as the job's retry policy needs them: a timeout, a
//! refused connection or a 5xx is [`JobError::Retryable`]; a 4xx or a body
//! that is not the shape above is [`JobError::Permanent`].

use std::collections::HashMap;
use std::time::Duration;

use serde::Deserialize;
use shared::queue::JobError;

/// How the worker reaches the feed.
#[derive(Debug, Clone)]
pub struct FeedSettings {
    /// `MARKET_DATA_URL`: the feed's base URL (plain HTTP). Unset: no feed.
    pub url: String,
    /// `MARKET_DATA_CONNECT_TIMEOUT_MS`: connect timeout. Defaults to 3,000.
    pub connect_timeout: Duration,
    /// `MARKET_DATA_TIMEOUT_MS`: total timeout of one request. Defaults to 5,000.
    pub timeout: Duration,
}

/// One competitor price from the feed.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FedPrice {
    /// The product.
    pub product_id: String,
    /// Who asks this price.
    pub competitor: String,
    /// The price.
    pub price: f64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
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
    /// A client with the configured timeouts.
    pub fn new(settings: &FeedSettings) -> Result<Self, reqwest::Error> {
        Ok(Self {
            client: reqwest::Client::builder()
                .connect_timeout(settings.connect_timeout)
                .timeout(settings.timeout)
                .build()?,
            base: settings.url.trim_end_matches('/').to_string(),
        })
    }

    /// The lowest fed competitor price per product among `ids`.
    pub async fn lowest_prices(&self, ids: &[&str]) -> Result<HashMap<String, f64>, JobError> {
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
        let response = request
            .send()
            .await
            .map_err(|e| JobError::Retryable(format!("market-data feed unreachable: {e}")))?;
        let status = response.status();
        if status.is_server_error() {
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
