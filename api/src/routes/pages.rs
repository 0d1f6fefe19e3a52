//! The dashboard's pages at `/dashboard`: one HTML shell, one script and
//! one stylesheet, all compiled into the binary (`include_str!`), so the
//! page works offline and behind a firewall with nothing else to deploy.
//!
//! The shell renders even when Redis is down (it needs nothing from it);
//! the script then polls the JSON endpoints every 2 s and shows a banner
//! while they answer 503 or not at all. Every response here carries a
//! `Content-Security-Policy` that allows scripts, styles and connections
//! from this origin only (no inline script or style, no framing).

use std::sync::LazyLock;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderName, HeaderValue, header};
use axum::response::{IntoResponse, Redirect, Response};

use crate::routes::{Routes as _, get};
use crate::state::AppState;

const INDEX: &str = include_str!("../../assets/dashboard/index.html");
const APP_JS: &str = include_str!("../../assets/dashboard/app.js");
const APP_CSS: &str = include_str!("../../assets/dashboard/app.css");

/// The policy of every dashboard response.
pub(crate) const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
     connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// Routes of this module.
pub(crate) fn router() -> Router<AppState> {
    Router::new()
        .at("/dashboard", get(index))
        .at(
            "/dashboard/",
            get(|| async { Redirect::permanent("/dashboard") }),
        )
        .at("/dashboard/assets/app.js", get(app_js))
        .at("/dashboard/assets/app.css", get(app_css))
}

/// The headers every dashboard response carries.
fn secured(content_type: &'static str, body: String) -> Response {
    static HEADERS: LazyLock<[(HeaderName, HeaderValue); 5]> = LazyLock::new(|| {
        [
            (
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static(CSP),
            ),
            (
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            ),
            (header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY")),
            (
                header::REFERRER_POLICY,
                HeaderValue::from_static("no-referrer"),
            ),
            // The assets change with the binary: revalidate, never stale.
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        ]
    });
    let mut resp = ([(header::CONTENT_TYPE, content_type)], body).into_response();
    resp.headers_mut().extend(HEADERS.iter().cloned());
    resp
}

/// Escapes text for an HTML attribute value in double quotes.
pub(crate) fn escape_attr(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            c => out.push(c),
        }
    }
    out
}

async fn index(State(state): State<AppState>) -> Response {
    let jaeger = state.jaeger_ui_url.as_deref().unwrap_or("");
    secured(
        "text/html; charset=utf-8",
        INDEX.replace("{{JAEGER_UI_URL}}", &escape_attr(jaeger)),
    )
}

async fn app_js() -> Response {
    secured("text/javascript; charset=utf-8", APP_JS.to_string())
}

async fn app_css() -> Response {
    secured("text/css; charset=utf-8", APP_CSS.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attribute_values_are_escaped() {
        assert_eq!(
            escape_attr(r#"http://x/"><script>'&"#),
            "http://x/&quot;&gt;&lt;script&gt;&#39;&amp;"
        );
    }

    #[test]
    fn the_page_has_no_inline_script_or_style() {
        assert!(!INDEX.contains("<script>"), "inline script");
        assert!(!INDEX.contains("style="), "inline style");
        assert!(!APP_JS.contains("innerHTML"), "HTML from data");
        assert!(!APP_JS.contains("insertAdjacentHTML"), "HTML from data");
    }
}
