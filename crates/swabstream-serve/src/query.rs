//! The parameters of the view and summary routes, checked: a bad value or a
//! parameter the view has no column for is a 400 naming the parameter and
//! saying what is wrong, never a silently empty answer.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use swabstream_events::{DISTRICTS, Day};
use swabstream_views::{VIEW_NAMES, ViewSet};

/// An error answered as data: `{"error": ..., "parameter": ...}`.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    pub parameter: Option<String>,
    pub extra: Option<(&'static str, serde_json::Value)>,
}

impl ApiError {
    pub fn bad(parameter: &str, message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
            parameter: Some(parameter.to_owned()),
            extra: None,
        }
    }

    pub fn unknown_view(name: &str) -> ApiError {
        ApiError {
            status: StatusCode::NOT_FOUND,
            message: format!("no view `{name}`; the views are {}", VIEW_NAMES.join(", ")),
            parameter: None,
            extra: Some(("views", serde_json::json!(VIEW_NAMES))),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = serde_json::json!({ "error": self.message });
        if let Some(p) = self.parameter {
            body["parameter"] = p.into();
        }
        if let Some((k, v)) = self.extra {
            body[k] = v;
        }
        crate::json_response(self.status, body.to_string())
    }
}

/// The raw query string's pairs, in order.
pub fn pairs(raw: Option<&str>) -> Vec<(String, String)> {
    url::form_urlencoded::parse(raw.unwrap_or("").as_bytes()).into_owned().collect()
}

/// Which columns each view can be filtered by.
fn columns(view: &str) -> &'static [&'static str] {
    match view {
        "city_daily" => &["day"],
        "district_daily" => &["day", "district"],
        "site_hourly" => &["day", "site_id", "hour"],
        "method_daily" => &["day", "method"],
        "rejections_daily" => &["day", "reason"],
        "codes_issued_daily" => &["day", "kind", "channel"],
        _ => &[],
    }
}

/// Parameters every route takes, whatever it answers.
const COMMON: [&str; 2] = ["format", "access_token"];

/// How many rows a JSON answer holds unless `limit` says otherwise (CSV
/// answers hold every matching row unless limited).
pub const DEFAULT_JSON_LIMIT: usize = 1000;

/// A view query, checked.
#[derive(Debug, Default)]
pub struct ViewQuery {
    pub from: Option<Day>,
    pub to: Option<Day>,
    pub district: Option<String>,
    pub site_id: Option<String>,
    pub hour: Option<u8>,
    pub method: Option<String>,
    pub reason: Option<String>,
    pub kind: Option<String>,
    pub channel: Option<String>,
    pub limit: Option<usize>,
    pub offset: usize,
    pub csv: bool,
}

pub fn day(name: &str, v: &str) -> Result<Day, ApiError> {
    Day::parse(v).ok_or_else(|| {
        ApiError::bad(name, format!("`{v}` is not a date: expected YYYY-MM-DD, e.g. 2022-04-09"))
    })
}

/// Whether the answer should be CSV: `format=csv`, or an `Accept` asking for
/// `text/csv` and no `format=json`.
pub fn wants_csv(format: Option<&str>, accept: Option<&str>) -> Result<bool, ApiError> {
    match format {
        Some("csv") => Ok(true),
        Some("json") => Ok(false),
        Some(other) => Err(ApiError::bad("format", format!("`{other}` is not `json` or `csv`"))),
        None => Ok(accept.is_some_and(|a| a.contains("text/csv"))),
    }
}

impl ViewQuery {
    pub fn parse(
        view: &str,
        pairs: &[(String, String)],
        accept: Option<&str>,
    ) -> Result<ViewQuery, ApiError> {
        let cols = columns(view);
        let mut q = ViewQuery::default();
        let mut format = None;
        let mut day_given = None;
        for (k, v) in pairs {
            let k = k.as_str();
            let applies = |c: &str| {
                if cols.contains(&c) {
                    Ok(())
                } else {
                    Err(ApiError::bad(
                        k,
                        format!(
                            "`{k}` does not apply to {view}: it can be filtered by {}",
                            ["day", "from", "to"]
                                .iter()
                                .chain(cols.iter().skip(1))
                                .copied()
                                .collect::<Vec<_>>()
                                .join(", ")
                        ),
                    ))
                }
            };
            match k {
                "day" => {
                    let d = day(k, v)?;
                    day_given = Some(d);
                }
                "from" => q.from = Some(day(k, v)?),
                "to" => q.to = Some(day(k, v)?),
                "district" => {
                    applies("district")?;
                    if !DISTRICTS.iter().any(|(c, _, _)| c == v) {
                        return Err(ApiError::bad(
                            k,
                            format!(
                                "`{v}` is not a district code; the codes are {}",
                                DISTRICTS.iter().map(|(c, _, _)| *c).collect::<Vec<_>>().join(", ")
                            ),
                        ));
                    }
                    q.district = Some(v.clone());
                }
                "site_id" => {
                    applies("site_id")?;
                    q.site_id = Some(v.clone());
                }
                "hour" => {
                    applies("hour")?;
                    q.hour = Some(v.parse::<u8>().ok().filter(|h| *h < 24).ok_or_else(|| {
                        ApiError::bad(k, format!("`{v}` is not an hour: expected 0 to 23"))
                    })?);
                }
                "method" => {
                    applies("method")?;
                    q.method = Some(v.clone());
                }
                "reason" => {
                    applies("reason")?;
                    q.reason = Some(v.clone());
                }
                "kind" => {
                    applies("kind")?;
                    q.kind = Some(v.clone());
                }
                "channel" => {
                    applies("channel")?;
                    q.channel = Some(v.clone());
                }
                "limit" => {
                    q.limit =
                        Some(v.parse::<usize>().ok().filter(|n| *n > 0).ok_or_else(|| {
                            ApiError::bad(k, format!("`{v}` is not a positive whole number"))
                        })?);
                }
                "offset" => {
                    q.offset = v.parse::<usize>().map_err(|_| {
                        ApiError::bad(k, format!("`{v}` is not a whole number of rows to skip"))
                    })?;
                }
                "format" => format = Some(v.as_str()),
                "access_token" => {}
                _ => {
                    return Err(ApiError::bad(
                        k,
                        format!(
                            "unknown parameter `{k}`; {view} takes day, from, to, {}limit, offset, format",
                            cols.iter().skip(1).map(|c| format!("{c}, ")).collect::<String>()
                        ),
                    ));
                }
            }
        }
        if let Some(d) = day_given {
            if q.from.is_some() || q.to.is_some() {
                return Err(ApiError::bad("day", "give `day`, or `from`/`to`, not both"));
            }
            q.from = Some(d);
            q.to = Some(d);
        }
        if let (Some(f), Some(t)) = (q.from, q.to)
            && f > t
        {
            return Err(ApiError::bad("from", format!("`from` ({f}) is after `to` ({t})")));
        }
        q.csv = wants_csv(format, accept)?;
        Ok(q)
    }

    fn day_ok(&self, d: Day) -> bool {
        self.from.is_none_or(|f| d >= f) && self.to.is_none_or(|t| d <= t)
    }

    /// The rows of `view` that match, as a view set holding only them, the
    /// number matching before `limit`/`offset`, and the limit applied.
    pub fn select(&self, views: &ViewSet, view: &str) -> (ViewSet, usize, Option<usize>) {
        let limit = self.limit.or((!self.csv).then_some(DEFAULT_JSON_LIMIT));
        let mut out = ViewSet::default();
        let eq = |want: &Option<String>, have: &str| want.as_deref().is_none_or(|w| w == have);
        fn page<T: Clone>(
            rows: impl Iterator<Item = T>,
            offset: usize,
            limit: Option<usize>,
        ) -> (Vec<T>, usize) {
            let all: Vec<T> = rows.collect();
            let total = all.len();
            let page = all.into_iter().skip(offset).take(limit.unwrap_or(usize::MAX)).collect();
            (page, total)
        }
        let total;
        match view {
            "city_daily" => {
                let rows = views.city_daily.iter().filter(|r| self.day_ok(r.day)).cloned();
                (out.city_daily, total) = page(rows, self.offset, limit);
            }
            "district_daily" => {
                let rows = views
                    .district_daily
                    .iter()
                    .filter(|r| self.day_ok(r.day) && eq(&self.district, &r.district))
                    .cloned();
                (out.district_daily, total) = page(rows, self.offset, limit);
            }
            "site_hourly" => {
                let rows = views
                    .site_hourly
                    .iter()
                    .filter(|r| {
                        self.day_ok(r.day)
                            && eq(&self.site_id, &r.site_id)
                            && self.hour.is_none_or(|h| h == r.hour)
                    })
                    .cloned();
                (out.site_hourly, total) = page(rows, self.offset, limit);
            }
            "method_daily" => {
                let rows = views
                    .method_daily
                    .iter()
                    .filter(|r| self.day_ok(r.day) && eq(&self.method, &r.method))
                    .cloned();
                (out.method_daily, total) = page(rows, self.offset, limit);
            }
            "rejections_daily" => {
                let rows = views
                    .rejections_daily
                    .iter()
                    .filter(|r| self.day_ok(r.day) && eq(&self.reason, &r.reason))
                    .cloned();
                (out.rejections_daily, total) = page(rows, self.offset, limit);
            }
            _ => {
                let rows = views
                    .codes_issued_daily
                    .iter()
                    .filter(|r| {
                        self.day_ok(r.day)
                            && eq(&self.kind, &r.kind)
                            && eq(&self.channel, &r.channel)
                    })
                    .cloned();
                (out.codes_issued_daily, total) = page(rows, self.offset, limit);
            }
        }
        (out, total, limit)
    }
}

/// The summary's and the stream's one parameter, `day`.
pub fn summary_day(pairs: &[(String, String)], route: &str) -> Result<Option<Day>, ApiError> {
    let mut d = None;
    for (k, v) in pairs {
        match k.as_str() {
            "day" => d = Some(day("day", v)?),
            k if COMMON.contains(&k) => {}
            _ => {
                return Err(ApiError::bad(
                    k,
                    format!("unknown parameter `{k}`; {route} takes only `day`"),
                ));
            }
        }
    }
    Ok(d)
}

/// The rows of one view as JSON values.
pub fn rows_json(views: &ViewSet, view: &str) -> serde_json::Value {
    let v = match view {
        "city_daily" => serde_json::to_value(&views.city_daily),
        "district_daily" => serde_json::to_value(&views.district_daily),
        "site_hourly" => serde_json::to_value(&views.site_hourly),
        "method_daily" => serde_json::to_value(&views.method_daily),
        "rejections_daily" => serde_json::to_value(&views.rejections_daily),
        _ => serde_json::to_value(&views.codes_issued_daily),
    };
    v.expect("rows serialise")
}
