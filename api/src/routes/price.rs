//! Price reads: `POST /api/v1/price`, `GET /api/v1/price/{product_id}` and
//! `POST /api/v1/prices/batch`.

use axum::Router;
use axum::extract::State;

use crate::error::{ApiError, ErrorBody};
use crate::extract::{JsonBody, ValidJson, ValidPath, ValidQuery, parse_object};
use crate::model::{
    BatchRequest, BatchResponse, PriceDetail, PriceQuery, PriceRequest, check_location,
    check_product_id,
};
use crate::render::PriceJson;
use crate::routes::{Routes as _, get, post};
use crate::service;
use crate::state::AppState;

/// Routes of this module.
pub(crate) fn router() -> Router<AppState> {
    Router::new()
        .at("/api/v1/price", post(post_price))
        .at("/api/v1/price/{product_id}", get(get_price))
        .at("/api/v1/prices/batch", post(post_batch))
}

/// Price of one product for one customer (cache-aside).
#[utoipa::path(
    post, path = "/api/v1/price", tag = "prices",
    request_body = PriceRequest<'_>,
    responses(
        (status = 200, description = "The price; `source` says whether it came from the cache", body = PriceDetail),
        (status = 400, description = "Body is not JSON", body = ErrorBody),
        (status = 404, description = "Unknown product", body = ErrorBody),
        (status = 413, description = "Body over 64 KiB", body = ErrorBody),
        (status = 415, description = "Body is not application/json", body = ErrorBody),
        (status = 422, description = "Missing, ill-typed, unknown or invalid field", body = ErrorBody),
        (status = 503, description = "Catalog store unavailable (and no cached price)", body = ErrorBody),
    )
)]
pub(crate) async fn post_price(
    State(state): State<AppState>,
    JsonBody(body): JsonBody,
) -> Result<PriceJson<PriceDetail>, ApiError> {
    let req: PriceRequest<'_> = parse_object(&body)?;
    check_product_id("product_id", &req.product_id)?;
    check_location(req.user_location.as_deref())?;
    Ok(PriceJson(
        service::price(&state, &req.product_id, req.is_prime_member).await?,
    ))
}

/// Price of one product, addressed by path.
#[utoipa::path(
    get, path = "/api/v1/price/{product_id}", tag = "prices",
    params(("product_id" = String, Path, description = "Product id"), PriceQuery),
    responses(
        (status = 200, description = "The price", body = PriceDetail),
        (status = 404, description = "Unknown product", body = ErrorBody),
        (status = 422, description = "Invalid product id or query", body = ErrorBody),
        (status = 503, description = "Catalog store unavailable", body = ErrorBody),
    )
)]
pub(crate) async fn get_price(
    State(state): State<AppState>,
    ValidPath(product_id): ValidPath<String>,
    ValidQuery(query): ValidQuery<PriceQuery>,
) -> Result<PriceJson<PriceDetail>, ApiError> {
    check_product_id("product_id", &product_id)?;
    check_location(query.user_location.as_deref())?;
    Ok(PriceJson(
        service::price(&state, &product_id, query.is_prime_member).await?,
    ))
}

/// Prices of up to 1,000 products in one round trip.
#[utoipa::path(
    post, path = "/api/v1/prices/batch", tag = "prices",
    request_body = BatchRequest,
    responses(
        (status = 200, description = "Prices of the known products; unknown ids in `not_found`", body = BatchResponse),
        (status = 400, description = "Body is not JSON", body = ErrorBody),
        (status = 413, description = "Body over 64 KiB", body = ErrorBody),
        (status = 422, description = "Empty, over-long or invalid id list", body = ErrorBody),
        (status = 503, description = "Catalog store unavailable", body = ErrorBody),
    )
)]
pub(crate) async fn post_batch(
    State(state): State<AppState>,
    ValidJson(req): ValidJson<BatchRequest>,
) -> Result<PriceJson<BatchResponse>, ApiError> {
    let ids = req.unique_ids()?;
    Ok(PriceJson(
        service::batch(&state, ids, req.is_prime_member).await?,
    ))
}
