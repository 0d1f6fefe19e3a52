//! `POST /api/v1/publish-market-event`: upstream systems report market
//! changes; the api validates the event, appends it to the event stream and
//! publishes it on the channel, and answers at once.
//!
//! The body is the event envelope of [`shared::events`]. An empty body, or
//! the original service's plain string `Recalculate_Triggered_v1`, means
//! `recalculate_all`, so the original's publishers keep working. Bad input
//! gets a 4xx with the JSON error body naming the field, and is never
//! published.

use axum::Json;
use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use shared::events::{EventError, MAX_EVENT_BYTES};
use utoipa::ToSchema;

use crate::error::{ApiError, ErrorBody};
use crate::routes::{Routes as _, post};
use crate::state::AppState;

/// Routes of this module.
pub(crate) fn router() -> Router<AppState> {
    Router::new().at("/api/v1/publish-market-event", post(publish))
}

/// The answer to a publish.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub(crate) struct EventPublished {
    /// Always `Event published`.
    pub status: String,
    /// The pub/sub channel it went to.
    pub channel: String,
    /// The event's id (assigned when the body had none).
    pub event_id: String,
    /// Subscribers of the channel that received it, as PUBLISH reported.
    pub receivers: u64,
}

impl From<EventError> for ApiError {
    fn from(e: EventError) -> Self {
        match e.label {
            "malformed_json" => ApiError::InvalidJson(format!("{}: {}", e.field, e.reason)),
            "too_many_products" => ApiError::TooLarge {
                detail: e.to_string(),
                field: e.field,
            },
            "too_large" => ApiError::PayloadTooLarge(MAX_EVENT_BYTES),
            _ => ApiError::Validation {
                detail: e.to_string(),
                fields: vec![e.field],
            },
        }
    }
}

/// Publishes one market event.
#[utoipa::path(post, path = "/api/v1/publish-market-event", tag = "events",
    request_body(content = String, description = "A market event envelope (JSON), empty, or `Recalculate_Triggered_v1`; see docs/market-events.md for the kinds and their data", content_type = "application/json"),
    responses(
        (status = 202, description = "Appended to the event stream and published", body = EventPublished),
        (status = 400, description = "Not JSON", body = ErrorBody),
        (status = 413, description = "More than 10,000 products, or a body over 2 MiB", body = ErrorBody),
        (status = 422, description = "Unknown kind or invalid field", body = ErrorBody),
        (status = 503, description = "Redis unavailable", body = ErrorBody),
    ))]
pub(crate) async fn publish(
    State(state): State<AppState>,
    body: Body,
) -> Result<(StatusCode, Json<EventPublished>), ApiError> {
    let bytes = axum::body::to_bytes(body, MAX_EVENT_BYTES)
        .await
        .map_err(|_| ApiError::PayloadTooLarge(MAX_EVENT_BYTES))?;
    let mut event = shared::events::parse(&bytes)?;
    let published = publish_traced(&state, &mut event).await.map_err(|e| {
        tracing::error!(error = %e, "publishing a market event failed");
        ApiError::Unavailable("the event stream (Redis) is unavailable; retry later".into())
    })?;
    metrics::counter!("events_published_total", "kind" => event.kind.as_str()).increment(1);
    Ok((
        StatusCode::ACCEPTED,
        Json(EventPublished {
            status: "Event published".into(),
            channel: state.events.channel().to_string(),
            event_id: event.event_id,
            receivers: published.receivers,
        }),
    ))
}

/// Publishes inside a producer span, whose trace context the event carries:
/// the listener's span for it is that span's child.
async fn publish_traced(
    state: &AppState,
    event: &mut shared::events::MarketEvent,
) -> redis::RedisResult<shared::event_bus::Published> {
    use tracing::Instrument as _;
    let span = shared::telemetry::producer_span(state.events.channel());
    span.record("messaging.message.id", event.event_id.as_str());
    async {
        if let Some((parent, trace_state)) = shared::telemetry::current_trace_context() {
            event.traceparent = Some(parent);
            event.tracestate = trace_state;
        }
        state.events.publish(event).await
    }
    .instrument(span)
    .await
}
