//! The views of SPEC §4, as data: one row type per view, a [`ViewSet`] holding
//! all six, summing of per-partition partial rows into city-wide ones, and
//! their renderings (JSON for tools, CSV per view, tables for people).
//!
//! Every count here is additive: a person lives in one partition, so the
//! partial rows of all partitions sum exactly to the city's numbers. The one
//! ratio, `percent_using_code`, is derived after summing, never summed.

mod render;
mod tally;

use serde::{Deserialize, Serialize};
use swabstream_events::Day;

pub use render::{render_csv, render_json, render_table};
pub use tally::Tally;

/// The names of the six views, in the order they are shown.
pub const VIEW_NAMES: [&str; 6] = [
    "city_daily",
    "district_daily",
    "site_hourly",
    "method_daily",
    "rejections_daily",
    "codes_issued_daily",
];

/// `city_daily`: the city's totals per local day.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CityDaily {
    pub day: Day,
    pub people_sampled: u64,
    pub using_code: u64,
    /// `using_code / people_sampled × 100`; `null` on a day nobody was sampled.
    pub percent_using_code: Option<f64>,
    pub valid_scans: u64,
    pub rescans: u64,
    pub rejected: u64,
    pub duplicates: u64,
}

/// `district_daily`: per local day and district.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DistrictDaily {
    pub day: Day,
    pub district: String,
    pub people_sampled: u64,
    pub using_code: u64,
    pub valid_scans: u64,
    pub rejected: u64,
}

/// `site_hourly`: per local day, sampling site and local hour.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SiteHourly {
    pub day: Day,
    pub site_id: String,
    pub hour: u8,
    pub people_sampled: u64,
    pub valid_scans: u64,
}

/// `method_daily`: people sampled per local day and identification method.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MethodDaily {
    pub day: Day,
    pub method: String,
    pub people_sampled: u64,
}

/// `rejections_daily`: rejected records per local day and reason.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RejectionsDaily {
    pub day: Day,
    pub reason: String,
    pub count: u64,
}

/// `codes_issued_daily`: valid `CodeIssued` events per local day, kind and channel.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CodesIssuedDaily {
    pub day: Day,
    pub kind: String,
    pub channel: String,
    pub count: u64,
}

/// One row of any view: the unit a partition writes to a view store.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "view", rename_all = "snake_case")]
pub enum ViewRow {
    CityDaily(CityDaily),
    DistrictDaily(DistrictDaily),
    SiteHourly(SiteHourly),
    MethodDaily(MethodDaily),
    RejectionsDaily(RejectionsDaily),
    CodesIssuedDaily(CodesIssuedDaily),
}

/// All six views. As JSON: one object with an array per view, rows carrying
/// SPEC §4's field names (the shape of `views --json` and `truth.json`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ViewSet {
    pub city_daily: Vec<CityDaily>,
    pub district_daily: Vec<DistrictDaily>,
    pub site_hourly: Vec<SiteHourly>,
    pub method_daily: Vec<MethodDaily>,
    pub rejections_daily: Vec<RejectionsDaily>,
    pub codes_issued_daily: Vec<CodesIssuedDaily>,
}

impl ViewSet {
    /// Sums rows (partial rows of many partitions, or of one) into views:
    /// rows with the same key are added, the result is sorted by key and
    /// `percent_using_code` is derived.
    pub fn from_rows(rows: impl IntoIterator<Item = ViewRow>) -> ViewSet {
        let mut tally = Tally::default();
        for row in rows {
            tally.add_row(&row);
        }
        tally.into_view_set()
    }

    /// Sums several view sets, e.g. the partial views of every partition.
    pub fn sum(parts: impl IntoIterator<Item = ViewSet>) -> ViewSet {
        ViewSet::from_rows(parts.into_iter().flat_map(ViewSet::into_rows))
    }

    /// Every row of every view.
    pub fn into_rows(self) -> impl Iterator<Item = ViewRow> {
        let ViewSet {
            city_daily,
            district_daily,
            site_hourly,
            method_daily,
            rejections_daily,
            codes_issued_daily,
        } = self;
        city_daily
            .into_iter()
            .map(ViewRow::CityDaily)
            .chain(district_daily.into_iter().map(ViewRow::DistrictDaily))
            .chain(site_hourly.into_iter().map(ViewRow::SiteHourly))
            .chain(method_daily.into_iter().map(ViewRow::MethodDaily))
            .chain(rejections_daily.into_iter().map(ViewRow::RejectionsDaily))
            .chain(codes_issued_daily.into_iter().map(ViewRow::CodesIssuedDaily))
    }

    /// The rows of `self` that differ from `other`, one line each, for reports
    /// ("city_daily 2022-04-09: people_sampled 1520 ≠ 1519"). Empty when equal.
    pub fn differences(&self, other: &ViewSet) -> Vec<String> {
        let mut out = Vec::new();
        diff_rows(&mut out, "city_daily", &self.city_daily, &other.city_daily, |r| {
            r.day.to_string()
        });
        diff_rows(&mut out, "district_daily", &self.district_daily, &other.district_daily, |r| {
            format!("{} {}", r.day, r.district)
        });
        diff_rows(&mut out, "site_hourly", &self.site_hourly, &other.site_hourly, |r| {
            format!("{} {} {:02}h", r.day, r.site_id, r.hour)
        });
        diff_rows(&mut out, "method_daily", &self.method_daily, &other.method_daily, |r| {
            format!("{} {}", r.day, r.method)
        });
        diff_rows(
            &mut out,
            "rejections_daily",
            &self.rejections_daily,
            &other.rejections_daily,
            |r| format!("{} {}", r.day, r.reason),
        );
        diff_rows(
            &mut out,
            "codes_issued_daily",
            &self.codes_issued_daily,
            &other.codes_issued_daily,
            |r| format!("{} {} {}", r.day, r.kind, r.channel),
        );
        out
    }

    /// The city row of a day, if any.
    pub fn city(&self, day: Day) -> Option<&CityDaily> {
        self.city_daily.iter().find(|r| r.day == day)
    }
}

/// Compares two sorted row lists by key, naming rows missing on either side and
/// rows whose values differ.
fn diff_rows<R: PartialEq + Serialize>(
    out: &mut Vec<String>,
    view: &str,
    left: &[R],
    right: &[R],
    key: impl Fn(&R) -> String,
) {
    let l: std::collections::BTreeMap<String, &R> = left.iter().map(|r| (key(r), r)).collect();
    let r: std::collections::BTreeMap<String, &R> = right.iter().map(|r| (key(r), r)).collect();
    for (k, lv) in &l {
        match r.get(k) {
            None => out.push(format!("{view} {k}: only on the left: {}", json_of(lv))),
            Some(rv) if rv != lv => {
                out.push(format!("{view} {k}: {} ≠ {}", json_of(lv), json_of(rv)))
            }
            Some(_) => {}
        }
    }
    for (k, rv) in &r {
        if !l.contains_key(k) {
            out.push(format!("{view} {k}: only on the right: {}", json_of(rv)));
        }
    }
}

fn json_of<R: Serialize>(r: &R) -> String {
    serde_json::to_string(r).unwrap_or_default()
}

/// `using_code / people_sampled × 100`, or `None` when nobody was sampled.
pub fn percent(using_code: u64, people_sampled: u64) -> Option<f64> {
    (people_sampled > 0).then(|| using_code as f64 * 100.0 / people_sampled as f64)
}
