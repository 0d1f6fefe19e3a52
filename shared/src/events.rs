//! Market events: the contract between publishers, the api and the listener.
//!
//! A [`MarketEvent`] reports one market change about some products. On the
//! wire it is a JSON envelope:
//!
//! ```json
//! {"event_id": "01JD…", "kind": "competitor_price_changed",
//!  "product_ids": ["P-1", "P-2"],
//!  "data": {"competitor": "acme", "prices": {"P-1": 12.5, "P-2": 8.0}},
//!  "occurred_at": "2026-11-22T05:00:00Z",
//!  "traceparent": "00-…-…-01", "tracestate": "…"}
//! ```
//!
//! | `kind` | `data` |
//! |---|---|
//! | `competitor_price_changed` | `{"competitor": str, "prices": {id: price > 0}}` |
//! | `demand_changed` | `{"demand": {id: index ≥ 0}}` |
//! | `stock_changed` | `{"stock": {id: units ≥ 0}}` |
//! | `cost_changed` | `{"unit_cost": {id: cost > 0}}` |
//! | `recalculate_all` | none (`{}` or absent) |
//!
//! `product_ids` may be left out: it is then the keys of the data's map.
//! When given, it must name exactly those keys. `event_id` (a ULID) and
//! `occurred_at` are assigned when missing. The original service's plain
//! string `Recalculate_Triggered_v1`, and an empty body, mean `recalculate_all`.
//!
//! [`parse`] validates all of that and names the offending field, so the api
//! answers 4xx and the listener dead-letters with the same reasons.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::domain::validate_product_id;

/// The string the original service publishes; accepted as `recalculate_all`.
pub const LEGACY_RECALCULATE: &str = "Recalculate_Triggered_v1";

/// Most products one event may name; more is refused (HTTP 413).
pub const MAX_PRODUCTS_PER_EVENT: usize = 10_000;

/// Largest event payload accepted, in bytes (a full event of 10,000 ids fits).
pub const MAX_EVENT_BYTES: usize = 2 * 1024 * 1024;

/// What changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// A competitor's prices; `data: {"competitor", "prices": {id: price}}`.
    CompetitorPriceChanged,
    /// Demand indexes; `data: {"demand": {id: index}}`.
    DemandChanged,
    /// Stock levels; `data: {"stock": {id: units}}`.
    StockChanged,
    /// Unit costs; `data: {"unit_cost": {id: cost}}`.
    CostChanged,
    /// Reprice the whole catalog; no data.
    RecalculateAll,
}

impl EventKind {
    /// The name on the wire, also the `kind` label of the metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::CompetitorPriceChanged => "competitor_price_changed",
            EventKind::DemandChanged => "demand_changed",
            EventKind::StockChanged => "stock_changed",
            EventKind::CostChanged => "cost_changed",
            EventKind::RecalculateAll => "recalculate_all",
        }
    }
}

/// The validated change an event carries.
#[derive(Debug, Clone, PartialEq)]
pub enum EventData {
    /// One competitor's prices per product.
    CompetitorPrices {
        /// Who asks these prices.
        competitor: String,
        /// Price per product.
        prices: BTreeMap<String, f64>,
    },
    /// Demand index per product.
    Demand(BTreeMap<String, f64>),
    /// Units in stock per product.
    Stock(BTreeMap<String, i64>),
    /// Unit cost per product.
    UnitCost(BTreeMap<String, f64>),
    /// Nothing: reprice everything.
    RecalculateAll,
}

impl EventData {
    /// The data as it goes on the wire.
    pub fn to_json(&self) -> serde_json::Value {
        match self {
            EventData::CompetitorPrices { competitor, prices } => {
                serde_json::json!({"competitor": competitor, "prices": prices})
            }
            EventData::Demand(m) => serde_json::json!({ "demand": m }),
            EventData::Stock(m) => serde_json::json!({ "stock": m }),
            EventData::UnitCost(m) => serde_json::json!({ "unit_cost": m }),
            EventData::RecalculateAll => serde_json::json!({}),
        }
    }
}

/// A validated market event.
#[derive(Debug, Clone, PartialEq)]
pub struct MarketEvent {
    /// Unique id (a ULID); deduplicates an event seen twice.
    pub event_id: String,
    /// What changed.
    pub kind: EventKind,
    /// The products it is about, sorted (empty for `recalculate_all`).
    pub product_ids: Vec<String>,
    /// The change itself.
    pub data: EventData,
    /// When it happened (assigned on arrival when the publisher did not say).
    pub occurred_at: DateTime<Utc>,
    /// W3C trace context of the span that published it.
    pub traceparent: Option<String>,
    /// W3C trace state that goes with `traceparent`.
    pub tracestate: Option<String>,
}

/// The envelope on the wire.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Wire {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    event_id: Option<String>,
    kind: EventKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    product_ids: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    data: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    occurred_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    traceparent: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    tracestate: Option<String>,
    /// Set by the api: this event is already in the stream, so a listener
    /// that sees it on the channel leaves it to the stream.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    durable: bool,
}

/// Why an event was refused: the field and the reason, plus a short
/// machine-readable label for metrics and the dead-letter list.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct EventError {
    /// `malformed_json`, `unknown_kind`, `invalid_field`, `too_many_products`
    /// or `too_large` (and, in the listener, `unknown_product`).
    pub label: &'static str,
    /// The offending field (`body` for the payload as a whole).
    pub field: String,
    /// What is wrong with it.
    pub reason: String,
}

impl EventError {
    fn new(label: &'static str, field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            label,
            field: field.into(),
            reason: reason.into(),
        }
    }

    fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::new("invalid_field", field, reason)
    }
}

/// A validated message as a listener receives it on the channel: the event
/// and what the envelope says about how it travels.
#[derive(Debug, Clone, PartialEq)]
pub struct Received {
    /// The event.
    pub event: MarketEvent,
    /// The api's copy of an event it also appended to the stream: a
    /// listener leaves it to the stream.
    pub durable: bool,
    /// The publisher gave the `event_id` (else it was assigned on parsing,
    /// so two receivers of the same message assign different ids).
    pub id_given: bool,
}
/// Parses and validates a payload. An empty (or all-blank) payload and the
/// legacy string mean `recalculate_all`. Missing `event_id` and
/// `occurred_at` are assigned.
pub fn parse(payload: &[u8]) -> Result<MarketEvent, EventError> {
    parse_as_of(payload, Utc::now())
}

/// [`parse`] as of `now`: a missing `occurred_at` becomes `now`, and one
/// more than [`MAX_CLOCK_AHEAD`] after `now` is refused. The listener parses
/// a stream entry as of the later of its append time (the entry id's,
/// Redis's clock) and its own clock, so an event the api accepted is not
/// refused later by a listener whose clock runs behind the api's.
pub fn parse_as_of(payload: &[u8], now: DateTime<Utc>) -> Result<MarketEvent, EventError> {
    parse_received_as_of(payload, now).map(|r| r.event)
}

/// [`parse`], also telling whether the envelope is marked `durable` and
/// whether it carried its own `event_id`.
pub fn parse_received(payload: &[u8]) -> Result<Received, EventError> {
    parse_received_as_of(payload, Utc::now())
}

/// [`parse_received`] as of `now` (see [`parse_as_of`]).
pub fn parse_received_as_of(payload: &[u8], now: DateTime<Utc>) -> Result<Received, EventError> {
    if payload.len() > MAX_EVENT_BYTES {
        return Err(EventError::new(
            "too_large",
            "body",
            format!("larger than {MAX_EVENT_BYTES} bytes"),
        ));
    }
    let text = std::str::from_utf8(payload)
        .map_err(|_| EventError::new("malformed_json", "body", "not UTF-8"))?
        .trim();
    if text.is_empty() || text == LEGACY_RECALCULATE || text == "\"Recalculate_Triggered_v1\"" {
        return Ok(Received {
            event: recalculate_all(),
            durable: false,
            id_given: false,
        });
    }
    let value: serde_json::Value = serde_json::from_str(text)
        .map_err(|e| EventError::new("malformed_json", "body", e.to_string()))?;
    if let Some(kind) = value.get("kind")
        && serde_json::from_value::<EventKind>(kind.clone()).is_err()
    {
        return Err(EventError::new(
            "unknown_kind",
            "kind",
            format!(
                "unknown kind {kind}; expected competitor_price_changed, demand_changed, \
                 stock_changed, cost_changed or recalculate_all"
            ),
        ));
    }
    let wire: Wire = serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let field = if path == "." {
            "body".to_string()
        } else {
            path
        };
        EventError::invalid(field, e.into_inner().to_string())
    })?;
    let (durable, id_given) = (wire.durable, wire.event_id.is_some());
    Ok(Received {
        event: validate(wire, now)?,
        durable,
        id_given,
    })
}

fn recalculate_all() -> MarketEvent {
    MarketEvent {
        event_id: ulid::Ulid::new().to_string(),
        kind: EventKind::RecalculateAll,
        product_ids: Vec::new(),
        data: EventData::RecalculateAll,
        occurred_at: Utc::now(),
        traceparent: None,
        tracestate: None,
    }
}

fn map_of<T: serde::de::DeserializeOwned>(
    data: &serde_json::Value,
    field: &str,
) -> Result<BTreeMap<String, T>, EventError> {
    let v = data
        .get(field)
        .ok_or_else(|| EventError::invalid(format!("data.{field}"), "missing"))?;
    serde_json::from_value(v.clone())
        .map_err(|e| EventError::invalid(format!("data.{field}"), e.to_string()))
}

fn check_numbers<T: Copy>(
    map: &BTreeMap<String, T>,
    field: &str,
    ok: impl Fn(T) -> bool,
    rule: &str,
) -> Result<(), EventError> {
    for (id, v) in map {
        if !ok(*v) {
            return Err(EventError::invalid(format!("data.{field}.{id}"), rule));
        }
    }
    Ok(())
}

fn validate(wire: Wire, now: DateTime<Utc>) -> Result<MarketEvent, EventError> {
    let event_id = match wire.event_id {
        Some(id) => {
            if id.is_empty()
                || id.len() > 64
                || !id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            {
                return Err(EventError::invalid(
                    "event_id",
                    "1-64 characters of [A-Za-z0-9_-] (a ULID is expected)",
                ));
            }
            id
        }
        None => ulid::Ulid::new().to_string(),
    };
    if let Some(tp) = &wire.traceparent
        && !valid_traceparent(tp)
    {
        return Err(EventError::invalid("traceparent", "not a W3C traceparent"));
    }
    let empty = serde_json::json!({});
    let data_json = wire.data.as_ref().unwrap_or(&empty);
    if wire.kind != EventKind::RecalculateAll && !data_json.is_object() {
        return Err(EventError::invalid("data", "must be an object"));
    }
    let data = match wire.kind {
        EventKind::CompetitorPriceChanged => {
            let competitor = data_json
                .get("competitor")
                .and_then(|c| c.as_str())
                .filter(|c| {
                    !c.trim().is_empty() && c.len() <= 128 && !c.chars().any(char::is_control)
                })
                .ok_or_else(|| {
                    EventError::invalid(
                        "data.competitor",
                        "a non-empty string of up to 128 characters, none a control character",
                    )
                })?
                .to_string();
            let prices: BTreeMap<String, f64> = map_of(data_json, "prices")?;
            check_numbers(
                &prices,
                "prices",
                |p: f64| p.is_finite() && p > 0.0,
                "must be a positive price",
            )?;
            EventData::CompetitorPrices { competitor, prices }
        }
        EventKind::DemandChanged => {
            let m: BTreeMap<String, f64> = map_of(data_json, "demand")?;
            check_numbers(
                &m,
                "demand",
                |d: f64| d.is_finite() && d >= 0.0,
                "must be a demand index ≥ 0",
            )?;
            EventData::Demand(m)
        }
        EventKind::StockChanged => {
            let m: BTreeMap<String, i64> = map_of(data_json, "stock")?;
            check_numbers(
                &m,
                "stock",
                |s: i64| s >= 0,
                "must be a whole number of units ≥ 0",
            )?;
            EventData::Stock(m)
        }
        EventKind::CostChanged => {
            let m: BTreeMap<String, f64> = map_of(data_json, "unit_cost")?;
            check_numbers(
                &m,
                "unit_cost",
                |c: f64| c.is_finite() && c > 0.0,
                "must be a positive cost",
            )?;
            EventData::UnitCost(m)
        }
        EventKind::RecalculateAll => {
            if wire.product_ids.as_ref().is_some_and(|p| !p.is_empty()) {
                return Err(EventError::invalid(
                    "product_ids",
                    "recalculate_all names no products",
                ));
            }
            EventData::RecalculateAll
        }
    };
    let keys: Vec<String> = match &data {
        EventData::CompetitorPrices { prices, .. } => prices.keys().cloned().collect(),
        EventData::Demand(m) | EventData::UnitCost(m) => m.keys().cloned().collect(),
        EventData::Stock(m) => m.keys().cloned().collect(),
        EventData::RecalculateAll => Vec::new(),
    };
    if keys.len() > MAX_PRODUCTS_PER_EVENT
        || wire
            .product_ids
            .as_ref()
            .is_some_and(|p| p.len() > MAX_PRODUCTS_PER_EVENT)
    {
        return Err(EventError::new(
            "too_many_products",
            "product_ids",
            format!("at most {MAX_PRODUCTS_PER_EVENT} products per event"),
        ));
    }
    if wire.kind != EventKind::RecalculateAll && keys.is_empty() {
        return Err(EventError::invalid("data", "names no product"));
    }
    for id in &keys {
        validate_product_id(id)
            .map_err(|e| EventError::invalid(format!("product_ids.{id}"), e.to_string()))?;
    }
    if let Some(mut ids) = wire.product_ids.clone() {
        ids.sort();
        ids.dedup();
        if ids != keys {
            return Err(EventError::invalid(
                "product_ids",
                "must name exactly the products in data",
            ));
        }
    }
    if let Some(t) = wire.occurred_at
        && t > now + MAX_CLOCK_AHEAD
    {
        // The catalog keeps the latest observation of each signal: one
        // stamped far ahead would shut out every real update until then.
        return Err(EventError::invalid(
            "occurred_at",
            format!(
                "is more than {} s ahead of this server's clock",
                MAX_CLOCK_AHEAD.num_seconds()
            ),
        ));
    }
    Ok(MarketEvent {
        event_id,
        kind: wire.kind,
        product_ids: keys,
        data,
        occurred_at: wire.occurred_at.unwrap_or(now),
        traceparent: wire.traceparent,
        tracestate: wire.tracestate.filter(|s| !s.is_empty()),
    })
}

/// How far ahead of the receiving server's clock an event's `occurred_at`
/// may be (clock skew between hosts); further is refused.
pub const MAX_CLOCK_AHEAD: chrono::Duration = chrono::Duration::minutes(5);

/// `00-<32 hex>-<16 hex>-<2 hex>`, ids not all zero.
fn valid_traceparent(tp: &str) -> bool {
    let parts: Vec<&str> = tp.split('-').collect();
    let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
    parts.len() == 4
        && hex(parts[0], 2)
        && hex(parts[1], 32)
        && hex(parts[2], 16)
        && hex(parts[3], 2)
        && parts[1].bytes().any(|b| b != b'0')
        && parts[2].bytes().any(|b| b != b'0')
}

impl MarketEvent {
    /// The envelope as JSON. `durable` marks the api's copy of an event it
    /// also appended to the stream.
    pub fn encode(&self, durable: bool) -> String {
        let wire = Wire {
            event_id: Some(self.event_id.clone()),
            kind: self.kind,
            product_ids: (!self.product_ids.is_empty()).then(|| self.product_ids.clone()),
            data: (self.kind != EventKind::RecalculateAll).then(|| self.data.to_json()),
            occurred_at: Some(self.occurred_at),
            traceparent: self.traceparent.clone(),
            tracestate: self.tracestate.clone(),
            durable,
        };
        // A struct of strings, numbers and maps always serialises.
        serde_json::to_string(&wire).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(payload: &str) -> EventError {
        parse(payload.as_bytes()).unwrap_err()
    }

    #[test]
    fn empty_body_and_legacy_string_mean_recalculate_all() {
        for p in [
            "",
            "  ",
            LEGACY_RECALCULATE,
            "\"Recalculate_Triggered_v1\"",
            r#"{"kind":"recalculate_all"}"#,
        ] {
            let e = parse(p.as_bytes()).unwrap();
            assert_eq!(e.kind, EventKind::RecalculateAll, "{p}");
            assert_eq!(e.event_id.len(), 26);
        }
    }

    #[test]
    fn an_occurred_at_far_ahead_of_the_clock_is_refused() {
        let at = |t: DateTime<Utc>| {
            format!(
                r#"{{"kind":"stock_changed","data":{{"stock":{{"P-1":5}}}},"occurred_at":"{}"}}"#,
                t.to_rfc3339()
            )
        };
        let ahead = err(&at(Utc::now()
            + MAX_CLOCK_AHEAD
            + chrono::Duration::minutes(1)));
        assert_eq!(ahead.field, "occurred_at");
        // Within the allowed skew, and in the past, it is kept as sent.
        let soon = Utc::now() + chrono::Duration::minutes(1);
        let e = parse(at(soon).as_bytes()).unwrap();
        assert_eq!(e.occurred_at.timestamp(), soon.timestamp());
        let past = Utc::now() - chrono::Duration::days(3);
        assert_eq!(
            parse(at(past).as_bytes()).unwrap().occurred_at.timestamp(),
            past.timestamp()
        );
    }

    #[test]
    fn a_competitor_event_round_trips_and_derives_its_products() {
        let e = parse(
            br#"{"kind":"competitor_price_changed","data":{"competitor":"acme","prices":{"P-2":8.0,"P-1":12.5}}}"#,
        )
        .unwrap();
        assert_eq!(e.product_ids, vec!["P-1", "P-2"]);
        let again = parse(e.encode(true).as_bytes()).unwrap();
        assert_eq!(again, e);
        let durable = parse_received(e.encode(true).as_bytes()).unwrap();
        assert!(durable.durable && durable.id_given);
        assert_eq!(durable.event, e);
        let plain = parse_received(e.encode(false).as_bytes()).unwrap();
        assert!(!plain.durable);
        // Garbage marked durable is still garbage, not a durable event.
        assert!(parse_received(br#"{"durable":true,"kind":"x"}"#).is_err());
        let legacy = parse_received(LEGACY_RECALCULATE.as_bytes()).unwrap();
        assert!(!legacy.durable && !legacy.id_given);
    }

    #[test]
    fn bad_events_name_the_field() {
        assert_eq!(err("{nope").label, "malformed_json");
        assert_eq!(err(r#"{"kind":"price_war"}"#).label, "unknown_kind");
        let e = err(r#"{"kind":"demand_changed","data":{"demand":{"P-1":-1}}}"#);
        assert_eq!(
            (e.label, e.field.as_str()),
            ("invalid_field", "data.demand.P-1")
        );
        let e = err(r#"{"kind":"stock_changed","data":{"stock":{"P-1":1.5}}}"#);
        assert_eq!(e.field, "data.stock");
        let e =
            err(r#"{"kind":"cost_changed","product_ids":["P-9"],"data":{"unit_cost":{"P-1":2}}}"#);
        assert_eq!(e.field, "product_ids");
        let e = err(r#"{"kind":"demand_changed","data":{"demand":{}}}"#);
        assert_eq!(e.field, "data");
        let e = err(r#"{"kind":"demand_changed","data":{"demand":{"bad id!":1}}}"#);
        assert!(e.field.starts_with("product_ids."), "{e:?}");
        let e = err(r#"{"kind":"demand_changed","extra":1,"data":{"demand":{"P-1":1}}}"#);
        assert_eq!(e.label, "invalid_field");
        let e = err(r#"{"kind":"recalculate_all","traceparent":"garbage"}"#);
        assert_eq!(e.field, "traceparent");
    }

    #[test]
    fn more_than_ten_thousand_products_is_refused() {
        let prices: BTreeMap<String, f64> = (0..=MAX_PRODUCTS_PER_EVENT)
            .map(|i| (format!("P-{i}"), 1.0))
            .collect();
        let body = serde_json::json!({"kind": "demand_changed", "data": {"demand": prices}});
        assert_eq!(err(&body.to_string()).label, "too_many_products");
    }
}
