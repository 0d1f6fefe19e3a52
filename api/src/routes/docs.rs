//! The OpenAPI document at `/openapi.json` and Swagger UI at `/docs/`.
//!
//! These are the routes `utoipa-swagger-ui`'s `Router` conversion builds,
//! registered here like every other route so that each is observed under
//! its own template (that conversion's router could only be wrapped whole,
//! as a layer, with no template known to it). The files come from the
//! crate's own [`utoipa_swagger_ui::serve`], vendored into the binary.

use std::sync::{Arc, LazyLock};

use axum::Router;
use axum::body::Bytes;
use axum::http::header;
use axum::response::{IntoResponse, Redirect, Response};
use utoipa::openapi::OpenApi;
use utoipa_swagger_ui::Config;

use crate::error::ApiError;
use crate::extract::ValidPath;
use crate::routes::{Routes as _, get};
use crate::state::AppState;

/// Where the document is served, and where Swagger UI reads it.
const DOCUMENT: &str = "/openapi.json";

/// Swagger UI's configuration: the one document.
static CONFIG: LazyLock<Arc<Config<'static>>> = LazyLock::new(|| Arc::new(Config::new([DOCUMENT])));

/// Routes of this module, serving `document` (written once, here).
pub(crate) fn router(document: &OpenApi) -> Router<AppState> {
    // Writing it fails only if a schema's serialization does: a bug, that
    // then answers 500 (and is logged) instead of stopping the api.
    let document = document.to_json().map(Bytes::from).map_err(Arc::new);
    let document = move || {
        let document = document.clone();
        async move {
            match document {
                Ok(json) => ([(header::CONTENT_TYPE, "application/json")], json).into_response(),
                Err(error) => {
                    ApiError::Internal(anyhow::anyhow!("writing the OpenAPI document: {error}"))
                        .into_response()
                }
            }
        }
    };
    Router::new()
        .at(DOCUMENT, get(document))
        .at("/docs", get(|| async { Redirect::to("/docs/") }))
        .at("/docs/", get(|| file(String::new())))
        .at(
            "/docs/{*rest}",
            get(|ValidPath(rest): ValidPath<String>| file(rest)),
        )
}

/// One of Swagger UI's files, by its path under `/docs/` (`""`: the page).
async fn file(rest: String) -> Response {
    match utoipa_swagger_ui::serve(&rest, CONFIG.clone()) {
        Ok(Some(file)) => {
            let content_type = (header::CONTENT_TYPE, file.content_type);
            if file.gzpipped {
                let encoding = (header::CONTENT_ENCODING, "gzip".to_owned());
                ([content_type, encoding], file.bytes).into_response()
            } else {
                ([content_type], file.bytes).into_response()
            }
        }
        Ok(None) => ApiError::NotFound(format!("no Swagger UI file {rest:?}")).into_response(),
        Err(error) => {
            ApiError::Internal(anyhow::anyhow!("serving Swagger UI: {error}")).into_response()
        }
    }
}
