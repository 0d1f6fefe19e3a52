//! The OpenAPI document, generated from the handlers' annotations.
//!
//! Served at `/openapi.json` and browsable at `/docs`. A test checks that
//! every route of the router appears here.

use utoipa::OpenApi;

use crate::error::ErrorBody;
use crate::model::{BatchRequest, BatchResponse, PriceDetail, PriceRequest, PriceSource};
use crate::routes::{ops, price};

/// The API description.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "Dynamic pricing API",
        description = "Cache-aside price reads over a Redis cache and a SQL catalog.",
    ),
    paths(
        price::post_price,
        price::get_price,
        price::post_batch,
        ops::health,
        ops::ready,
        ops::metrics,
    ),
    components(schemas(
        PriceRequest, PriceDetail, PriceSource, BatchRequest, BatchResponse, ErrorBody,
        ops::Health, ops::Readiness, ops::Check,
    )),
    tags(
        (name = "prices", description = "Price reads"),
        (name = "operations", description = "Health, readiness and metrics"),
    )
)]
pub struct ApiDoc;
