//! The web console: one page, its script and its style, compiled into the
//! binary (no CDN, nothing fetched from elsewhere). The files hold no data
//! and need no token; the page keeps the token the admin gives it in the
//! tab's session storage and asks the API for everything it shows.

use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;

const PAGE: &str = include_str!("console/index.html");
const SCRIPT: &str = include_str!("console/console.js");
const STYLE: &str = include_str!("console/console.css");

/// Only this origin's files, no framing: the page shows what the token
/// unlocks, so it must not be embedded or run foreign scripts.
const SECURITY: [(header::HeaderName, &str); 3] = [
    (
        header::CONTENT_SECURITY_POLICY,
        "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'",
    ),
    (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
    (header::REFERRER_POLICY, "no-referrer"),
];

/// The console's routes.
pub fn routes() -> Router {
    let file = |content_type: &'static str, body: &'static str| {
        move || async move {
            let [a, b, c] = SECURITY;
            ([(header::CONTENT_TYPE, content_type), a, b, c], body).into_response()
        }
    };
    Router::new()
        .route("/", get(file("text/html; charset=utf-8", PAGE)))
        .route(
            "/console.js",
            get(file("text/javascript; charset=utf-8", SCRIPT)),
        )
        .route("/console.css", get(file("text/css; charset=utf-8", STYLE)))
}
