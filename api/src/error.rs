//! `ApiError`: the one error type at the HTTP boundary.
//!
//! Every failure a handler can meet becomes one variant, and every variant
//! answers with the same JSON body, `{"error": code, "detail": message,
//! "fields": [...]}`, so clients can branch on `error` and show `detail`.
//! A 5xx is logged with its cause; the client gets a generic message.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use shared::store::StoreError;
use utoipa::ToSchema;

/// The JSON body of every error response.
#[derive(Debug, Serialize, serde::Deserialize, ToSchema)]
pub(crate) struct ErrorBody {
    /// Machine-readable code, e.g. `validation_error`.
    pub error: String,
    /// Human-readable explanation.
    pub detail: String,
    /// The request fields at fault, when there are any.
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub fields: Vec<String>,
}

/// The refusals every admin endpoint can answer besides its own, for the
/// OpenAPI document: list it in a path's `responses(...)`.
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)] // Only its OpenAPI description is used.
pub(crate) enum AdminRefusal {
    /// `ADMIN_TOKEN` is set and no bearer token was sent.
    #[response(
        status = 401,
        description = "ADMIN_TOKEN is set and no bearer token was sent"
    )]
    Unauthorized(ErrorBody),
    /// A wrong bearer token, or a request from another site.
    #[response(
        status = 403,
        description = "Wrong bearer token, or a cross-site request (`cross_site`)"
    )]
    Forbidden(ErrorBody),
}

/// Everything that can go wrong while serving a request.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 400: the body is not JSON, or is truncated.
    #[error("{0}")]
    InvalidJson(String),
    /// 422: well-formed JSON with missing, ill-typed, unknown or invalid fields.
    #[error("{detail}")]
    Validation {
        /// What is wrong.
        detail: String,
        /// The fields at fault.
        fields: Vec<String>,
    },
    /// 415: the body is not declared as `application/json`.
    #[error("expected Content-Type: application/json")]
    UnsupportedMediaType,
    /// 413: the body is over the size limit.
    #[error("request body is larger than {0} bytes")]
    PayloadTooLarge(usize),
    /// 413: the body names more items than one request may (e.g. products per event).
    #[error("{detail}")]
    TooLarge {
        /// What is over the limit.
        detail: String,
        /// The field at fault.
        field: String,
    },
    /// 401: an admin endpoint was called without a bearer token.
    #[error("this endpoint needs Authorization: Bearer <ADMIN_TOKEN>")]
    Unauthorized,
    /// 403: the bearer token is wrong.
    #[error("the bearer token is not valid for this endpoint")]
    Forbidden,
    /// A mutating call sent by a page of another site (its `Sec-Fetch-Site`
    /// or `Origin` header says so): refused, whatever it carries.
    #[error("cross-site request refused: a mutating call must come from this api's own origin")]
    CrossSite,
    /// 404: the product (or route) does not exist.
    #[error("{0}")]
    NotFound(String),
    /// 409: the request conflicts with the resource's state.
    #[error("{0}")]
    Conflict(String),
    /// 405: the route exists but not with this method.
    #[error("method not allowed on this route")]
    MethodNotAllowed,
    /// 503: a dependency needed for this answer is down.
    #[error("{0}")]
    Unavailable(String),
    /// 500: a bug or an unexpected failure; the cause is logged, not returned.
    #[error("internal error")]
    Internal(#[source] anyhow::Error),
}

impl ApiError {
    /// A 422 about one field.
    pub fn field(field: &str, detail: impl Into<String>) -> Self {
        ApiError::Validation {
            detail: detail.into(),
            fields: vec![field.to_string()],
        }
    }

    fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            ApiError::InvalidJson(_) => (StatusCode::BAD_REQUEST, "invalid_json"),
            ApiError::Validation { .. } => (StatusCode::UNPROCESSABLE_ENTITY, "validation_error"),
            ApiError::UnsupportedMediaType => {
                (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type")
            }
            ApiError::PayloadTooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
            ApiError::TooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, "too_many_items"),
            ApiError::Unauthorized => (StatusCode::UNAUTHORIZED, "unauthorized"),
            ApiError::Forbidden => (StatusCode::FORBIDDEN, "forbidden"),
            ApiError::CrossSite => (StatusCode::FORBIDDEN, "cross_site"),
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            ApiError::MethodNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
            ApiError::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            ApiError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "service_unavailable"),
            ApiError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal_error"),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Unavailable(_) => {
                tracing::error!(error = %e, "catalog store unavailable");
                ApiError::Unavailable("the catalog store is unavailable; retry later".into())
            }
            other => ApiError::Internal(other.into()),
        }
    }
}

impl From<queue::QueueError> for ApiError {
    fn from(e: queue::QueueError) -> Self {
        match e {
            queue::QueueError::Redis(_) => {
                tracing::error!(error = %e, "queue unavailable");
                ApiError::Unavailable("the job queue (Redis) is unavailable; retry later".into())
            }
            other => ApiError::Internal(other.into()),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        let fields = match &self {
            ApiError::Validation { fields, .. } => fields.clone(),
            ApiError::TooLarge { field, .. } => vec![field.clone()],
            ApiError::CrossSite => vec!["Origin".to_string()],
            _ => Vec::new(),
        };
        if let ApiError::Internal(cause) = &self {
            tracing::error!(error = ?cause, "request failed");
        }
        let body = ErrorBody {
            error: code.to_string(),
            detail: self.to_string(),
            fields,
        };
        (status, Json(body)).into_response()
    }
}
