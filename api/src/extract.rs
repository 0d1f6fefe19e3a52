//! Request extractors that turn every kind of bad input into an [`ApiError`].
//!
//! axum's own `Json` rejects bad bodies with plain-text messages. Clients of
//! this API get the JSON error body instead, with the offending field named:
//! [`ValidJson`] reports the JSON path of an ill-typed value, and the field
//! name of a missing or unknown one.

use axum::body::{Body, Bytes, HttpBody as _};
use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request};
use axum::http::header::CONTENT_TYPE;
use axum::http::request::Parts;
use http_body_util::BodyExt as _;
use serde::Deserialize;
use serde::de::DeserializeOwned;

use crate::error::ApiError;

/// Largest accepted request body, in bytes, however it is sent (with a
/// `Content-Length` or in chunks).
pub(crate) const MAX_BODY_BYTES: usize = 64 * 1024;

/// A JSON body, deserialised with errors that name the field at fault.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct ValidJson<T>(pub T);

impl<S, T> FromRequest<S> for ValidJson<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let JsonBody(bytes) = JsonBody::from_request(req, state).await?;
        parse_object(&bytes).map(ValidJson)
    }
}

/// The bytes of a JSON body, not yet parsed: for a handler that parses
/// them with [`parse_object`] into a type that borrows from them (the
/// price request's strings), where [`ValidJson`] would copy each.
#[derive(Debug, Clone, Default)]
pub(crate) struct JsonBody(pub Bytes);

impl<S> FromRequest<S> for JsonBody
where
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, _state: &S) -> Result<Self, Self::Rejection> {
        if !is_json(&req) {
            return Err(ApiError::UnsupportedMediaType);
        }
        // The limit is applied here, to the one extractor that reads a
        // body, rather than by axum's `DefaultBodyLimit` layer: that layer
        // wraps every route in one more boxed service, cloned and called on
        // every request (8% of the api's instructions on a near-cache hit).
        read_body(req.into_body(), MAX_BODY_BYTES)
            .await
            .map(JsonBody)
    }
}

/// Reads a whole body of at most `limit` bytes.
///
/// A body that arrives in one chunk (a small JSON body sent with its
/// length, as nearly every request's is) is taken as it is, and the end is
/// known from the length without asking for another frame. axum's
/// `to_bytes` first gathers the chunks in a list (an allocation) and polls
/// once more for the end: together a tenth of a near-cache hit's own work.
async fn read_body(body: Body, limit: usize) -> Result<Bytes, ApiError> {
    let mut body = http_body_util::Limited::new(body, limit);
    let mut first = Bytes::new();
    // Only when there is more than one chunk: all of them, joined.
    let mut joined = Vec::new();
    while !body.is_end_stream() {
        let Some(frame) = body.frame().await else {
            break;
        };
        let frame = frame.map_err(|error| {
            if error.is::<http_body_util::LengthLimitError>() {
                ApiError::PayloadTooLarge(limit)
            } else {
                ApiError::InvalidJson(format!("failed to read the request body: {error}"))
            }
        })?;
        let Ok(data) = frame.into_data() else {
            continue; // trailers
        };
        if first.is_empty() {
            first = data;
        } else {
            if joined.is_empty() {
                joined.extend_from_slice(&first);
            }
            joined.extend_from_slice(&data);
        }
    }
    Ok(if joined.is_empty() {
        first
    } else {
        joined.into()
    })
}

fn is_json(req: &Request) -> bool {
    let Some(value) = req.headers().get(CONTENT_TYPE) else {
        return false;
    };
    // The common case first, without splitting off parameters.
    if value.as_bytes().eq_ignore_ascii_case(b"application/json") {
        return true;
    }
    let Ok(value) = value.to_str() else {
        return false;
    };
    // Compared without a lowercased copy: this runs on every price request.
    let essence = value.split(';').next().unwrap_or("").trim().as_bytes();
    let has_prefix = |prefix: &[u8]| {
        essence
            .get(..prefix.len())
            .is_some_and(|head| head.eq_ignore_ascii_case(prefix))
    };
    let has_suffix = |suffix: &[u8]| {
        essence.len() >= suffix.len()
            && essence[essence.len() - suffix.len()..].eq_ignore_ascii_case(suffix)
    };
    essence.eq_ignore_ascii_case(b"application/json")
        || (has_prefix(b"application/") && has_suffix(b"+json"))
}

/// Like `parse_json`, but the body must be a JSON object. serde would
/// otherwise also accept a struct written as an array (`["P-1"]`), a form no
/// client means to send.
pub fn parse_object<'de, T: Deserialize<'de>>(bytes: &'de [u8]) -> Result<T, ApiError> {
    match bytes.iter().find(|b| !b.is_ascii_whitespace()) {
        Some(b'{') | None => parse_json(bytes),
        Some(_) => Err(ApiError::Validation {
            detail: "request body must be a JSON object".into(),
            fields: Vec::new(),
        }),
    }
}

/// Deserialises `bytes` into `T`, classifying the failure. A good body is
/// read once, by serde_json alone; only a bad one is read again with its
/// path tracked, to name the field at fault (tracking the path of every body
/// cost about as much CPU as the near cache's lookup, by perf).
///
/// JSON is UTF-8 (RFC 8259), and the body is checked as such once, whole:
/// read from bytes, serde_json checks every string, keys included, on its
/// own (a quarter of parsing a price request, by callgrind).
pub(crate) fn parse_json<'de, T: Deserialize<'de>>(bytes: &'de [u8]) -> Result<T, ApiError> {
    let text = std::str::from_utf8(bytes)
        .map_err(|e| ApiError::InvalidJson(format!("request body is not UTF-8: {e}")))?;
    if let Ok(value) = serde_json::from_str(text) {
        return Ok(value);
    }
    let mut de = serde_json::Deserializer::from_str(text);
    let value = serde_path_to_error::deserialize(&mut de).map_err(|err| {
        let path = err.path().to_string();
        let inner = err.into_inner();
        json_error(&path, &inner)
    })?;
    de.end().map_err(|e| {
        ApiError::InvalidJson(format!("trailing characters after the JSON body: {e}"))
    })?;
    Ok(value)
}

fn json_error(path: &str, err: &serde_json::Error) -> ApiError {
    use serde_json::error::Category;
    match err.classify() {
        Category::Syntax | Category::Eof | Category::Io => {
            ApiError::InvalidJson(format!("request body is not valid JSON: {err}"))
        }
        Category::Data => {
            let message = err.to_string();
            let field = if path.is_empty() || path == "." {
                // Missing and unknown fields are reported at their parent;
                // serde names them in backticks.
                backticked(&message).unwrap_or_default()
            } else {
                path.to_string()
            };
            let detail = strip_position(&message);
            ApiError::Validation {
                detail,
                fields: if field.is_empty() {
                    Vec::new()
                } else {
                    vec![field]
                },
            }
        }
    }
}

/// The field a query-string error is about. serde_urlencoded reports an
/// ill-typed value as `…query string: FIELD: reason` and an unknown field
/// as `…unknown field `FIELD`…`.
fn query_field(text: &str) -> String {
    let rest = text.split_once("query string: ").map_or(text, |(_, r)| r);
    if let Some((head, _)) = rest.split_once(':')
        && !head.is_empty()
        && head.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
    {
        return head.to_string();
    }
    backticked(rest).unwrap_or_default()
}

fn backticked(message: &str) -> Option<String> {
    let start = message.find('`')? + 1;
    let len = message[start..].find('`')?;
    Some(message[start..start + len].to_string())
}

fn strip_position(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(i) => message[..i].to_string(),
        None => message.to_string(),
    }
}

/// Path parameters, with a malformed one (bad percent-encoding, wrong type)
/// answered with the JSON error body instead of axum's plain text.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct ValidPath<T>(pub T);

impl<S, T> FromRequestParts<S> for ValidPath<T>
where
    S: Send + Sync,
    T: DeserializeOwned + Send,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let Path(value) =
            Path::<T>::from_request_parts(parts, state)
                .await
                .map_err(|rejection| ApiError::Validation {
                    detail: rejection.body_text(),
                    fields: Vec::new(),
                })?;
        Ok(ValidPath(value))
    }
}

/// Proof that the caller may use an admin endpoint: a handler that takes
/// it answers 401 without `Authorization: Bearer …` and 403 with a wrong
/// token, whenever `ADMIN_TOKEN` is set.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Admin;

impl FromRequestParts<crate::state::AppState> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &crate::state::AppState,
    ) -> Result<Self, Self::Rejection> {
        refuse_cross_site(&parts.headers)?;
        let Some(expected) = state.admin_token.as_deref() else {
            return Ok(Admin);
        };
        let given = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(bearer)
            .ok_or(ApiError::Unauthorized)?;
        if constant_time_eq(given.trim().as_bytes(), expected.as_bytes()) {
            Ok(Admin)
        } else {
            Err(ApiError::Forbidden)
        }
    }
}

/// Refuses a request that a browser says comes from another site, so that
/// no page elsewhere can make a visitor's browser call an admin endpoint
/// (cross-site request forgery), also when `ADMIN_TOKEN` is unset. As Go's
/// `CrossOriginProtection` does: `Sec-Fetch-Site` (sent by every current
/// browser) must be `same-origin` or `none`; without it, an `Origin` must
/// name this host (`Host`). A request with neither comes from no browser
/// (curl, a script) and passes.
pub(crate) fn refuse_cross_site(headers: &axum::http::HeaderMap) -> Result<(), ApiError> {
    use axum::http::header::{HOST, ORIGIN};
    if let Some(site) = headers.get("sec-fetch-site") {
        return match site.as_bytes() {
            b"same-origin" | b"none" => Ok(()),
            _ => Err(ApiError::CrossSite),
        };
    }
    let Some(origin) = headers.get(ORIGIN) else {
        return Ok(());
    };
    let host = headers.get(HOST).and_then(|h| h.to_str().ok());
    let origin_host = origin
        .to_str()
        .ok()
        .and_then(|o| o.split_once("://"))
        .map(|(_, rest)| rest.trim_end_matches('/'));
    match (origin_host, host) {
        (Some(o), Some(h)) if o.eq_ignore_ascii_case(h) => Ok(()),
        _ => Err(ApiError::CrossSite),
    }
}

/// The credentials of an `Authorization: Bearer <token>` value; the scheme
/// is case-insensitive (RFC 9110, section 11.1).
fn bearer(value: &str) -> Option<&str> {
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then_some(token)
}

/// Compares without leaking, through timing, how much of a guess was right.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A query string, deserialised with errors in the JSON error body.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct ValidQuery<T>(pub T);

impl<S, T> FromRequestParts<S> for ValidQuery<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let Query(value) =
            Query::<T>::from_request_parts(parts, state)
                .await
                .map_err(|rejection| {
                    let text = rejection.body_text();
                    let field = query_field(&text);
                    ApiError::Validation {
                        detail: text,
                        fields: if field.is_empty() {
                            Vec::new()
                        } else {
                            vec![field]
                        },
                    }
                })?;
        Ok(ValidQuery(value))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Req {
        product_id: String,
        #[serde(default)]
        is_prime_member: bool,
    }

    fn fields(err: ApiError) -> Vec<String> {
        match err {
            ApiError::Validation { fields, .. } => fields,
            other => panic!("expected a validation error, got {other:?}"),
        }
    }

    fn with_content_type(value: &str) -> Request {
        Request::builder()
            .header(CONTENT_TYPE, value)
            .body(axum::body::Body::empty())
            .unwrap()
    }

    #[test]
    fn json_media_types_are_recognised_in_any_case_with_parameters() {
        for accepted in [
            "application/json",
            "Application/JSON",
            " application/json ; charset=utf-8",
            "application/vnd.api+json",
            "APPLICATION/PROBLEM+JSON; charset=utf-8",
        ] {
            assert!(is_json(&with_content_type(accepted)), "{accepted}");
        }
        for refused in [
            "text/plain",
            "application/jsonx",
            "text/json",
            "application/x-www-form-urlencoded",
            "json",
            "",
        ] {
            assert!(!is_json(&with_content_type(refused)), "{refused}");
        }
        let bare = Request::builder().body(axum::body::Body::empty()).unwrap();
        assert!(!is_json(&bare));
    }

    #[test]
    fn names_missing_unknown_and_ill_typed_fields() {
        assert_eq!(
            fields(parse_json::<Req>(b"{}").unwrap_err()),
            ["product_id"]
        );
        assert_eq!(
            fields(parse_json::<Req>(br#"{"product_id":"a","colour":1}"#).unwrap_err()),
            ["colour"]
        );
        assert_eq!(
            fields(
                parse_json::<Req>(br#"{"product_id":"a","is_prime_member":"yes"}"#).unwrap_err()
            ),
            ["is_prime_member"]
        );
    }

    #[test]
    fn query_errors_name_their_field() {
        assert_eq!(
            query_field(
                "Failed to deserialize query string: is_prime_member: provided string was not `true` or `false`"
            ),
            "is_prime_member"
        );
        assert_eq!(
            query_field("Failed to deserialize query string: unknown field `colour`, expected `a`"),
            "colour"
        );
    }

    #[test]
    fn bodies_must_be_objects() {
        assert!(matches!(
            parse_object::<Req>(br#"["P-1"]"#),
            Err(ApiError::Validation { .. })
        ));
        assert!(matches!(
            parse_object::<Req>(b"  42"),
            Err(ApiError::Validation { .. })
        ));
        assert!(parse_object::<Req>(br#" {"product_id":"P-1"}"#).is_ok());
    }

    #[test]
    fn syntax_errors_are_invalid_json() {
        assert!(matches!(
            parse_json::<Req>(b"{"),
            Err(ApiError::InvalidJson(_))
        ));
        assert!(matches!(
            parse_json::<Req>(b""),
            Err(ApiError::InvalidJson(_))
        ));
        assert!(matches!(
            parse_json::<Req>(br#"{"product_id":"a"} x"#),
            Err(ApiError::InvalidJson(_))
        ));
    }

    #[test]
    fn a_body_that_is_not_utf8_is_invalid_json_wherever_the_bad_byte_is() {
        for body in [
            &b"{\"product_id\":\"P-\xff\"}"[..],
            b"{\"product\xc3_id\":\"P-1\"}",
            b"\xef\xbb{}",
        ] {
            match parse_json::<Req>(body) {
                Err(ApiError::InvalidJson(detail)) => assert!(detail.contains("UTF-8"), "{detail}"),
                other => panic!("{body:?}: {other:?}"),
            }
        }
        // Non-ASCII text, raw or escaped, is read as before.
        let raw: Req = parse_json("{\"product_id\":\"São\"}".as_bytes()).unwrap();
        let escaped: Req = parse_json(br#"{"product_id":"S\u00e3o"}"#).unwrap();
        assert_eq!(raw.product_id, "São");
        assert_eq!(escaped.product_id, "São");
    }
}
