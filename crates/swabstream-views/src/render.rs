//! Renderings of the views: JSON for tools, CSV per view, aligned tables for people.

use std::fmt::Write as _;

use swabstream_events::DISTRICTS;

use crate::{VIEW_NAMES, ViewSet};

/// The views as one pretty-printed JSON object with an array per view.
pub fn render_json(views: &ViewSet) -> String {
    serde_json::to_string_pretty(views).expect("views always serialise")
}

/// One view as CSV with a header line; `None` for an unknown view name.
pub fn render_csv(views: &ViewSet, view: &str) -> Option<String> {
    let (header, rows) = cells(views, view, false)?;
    let mut out = String::new();
    for line in std::iter::once(header).chain(rows) {
        let fields: Vec<String> = line.iter().map(|c| csv_field(c)).collect();
        out.push_str(&fields.join(","));
        out.push('\n');
    }
    Some(out)
}

/// Views as aligned text tables, each under its name; unknown names are skipped.
pub fn render_table(views: &ViewSet, names: &[&str]) -> String {
    let mut out = String::new();
    for name in names {
        let Some((header, rows)) = cells(views, name, true) else {
            continue;
        };
        let _ = writeln!(out, "{name} ({} rows)", rows.len());
        let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
        for row in &rows {
            for (w, c) in widths.iter_mut().zip(row) {
                *w = (*w).max(c.chars().count());
            }
        }
        for line in std::iter::once(&header).chain(rows.iter()) {
            let mut text = String::new();
            for (i, (c, w)) in line.iter().zip(&widths).enumerate() {
                if i > 0 {
                    text.push_str("  ");
                }
                // Numbers right-aligned, text left-aligned, as people read tables.
                let pad = w - c.chars().count();
                if c.parse::<f64>().is_ok() || c == "-" {
                    text.push_str(&" ".repeat(pad));
                    text.push_str(c);
                } else {
                    text.push_str(c);
                    text.push_str(&" ".repeat(pad));
                }
            }
            out.push_str(text.trim_end());
            out.push('\n');
        }
        out.push('\n');
    }
    out
}

fn district_name(code: &str) -> &'static str {
    DISTRICTS.iter().find(|(c, _, _)| *c == code).map_or("?", |(_, n, _)| n)
}

fn pct(p: Option<f64>, for_people: bool) -> String {
    match p {
        Some(p) if for_people => format!("{p:.2}"),
        Some(p) => format!("{p}"),
        None if for_people => "-".to_owned(),
        None => String::new(),
    }
}

type Cells = (Vec<String>, Vec<Vec<String>>);

fn cells(v: &ViewSet, view: &str, for_people: bool) -> Option<Cells> {
    fn h(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| (*s).to_owned()).collect()
    }
    let out = match view {
        "city_daily" => (
            h(&[
                "day",
                "people_sampled",
                "using_code",
                "percent_using_code",
                "valid_scans",
                "rescans",
                "rejected",
                "duplicates",
            ]),
            v.city_daily
                .iter()
                .map(|r| {
                    vec![
                        r.day.to_string(),
                        r.people_sampled.to_string(),
                        r.using_code.to_string(),
                        pct(r.percent_using_code, for_people),
                        r.valid_scans.to_string(),
                        r.rescans.to_string(),
                        r.rejected.to_string(),
                        r.duplicates.to_string(),
                    ]
                })
                .collect(),
        ),
        "district_daily" => {
            let mut header = h(&["day", "district"]);
            if for_people {
                header.push("name".to_owned());
            }
            header.extend(h(&["people_sampled", "using_code", "valid_scans", "rejected"]));
            let rows = v
                .district_daily
                .iter()
                .map(|r| {
                    let mut row = vec![r.day.to_string(), r.district.clone()];
                    if for_people {
                        row.push(district_name(&r.district).to_owned());
                    }
                    row.extend([
                        r.people_sampled.to_string(),
                        r.using_code.to_string(),
                        r.valid_scans.to_string(),
                        r.rejected.to_string(),
                    ]);
                    row
                })
                .collect();
            (header, rows)
        }
        "site_hourly" => (
            h(&["day", "site_id", "hour", "people_sampled", "valid_scans"]),
            v.site_hourly
                .iter()
                .map(|r| {
                    vec![
                        r.day.to_string(),
                        r.site_id.clone(),
                        r.hour.to_string(),
                        r.people_sampled.to_string(),
                        r.valid_scans.to_string(),
                    ]
                })
                .collect(),
        ),
        "method_daily" => (
            h(&["day", "method", "people_sampled"]),
            v.method_daily
                .iter()
                .map(|r| vec![r.day.to_string(), r.method.clone(), r.people_sampled.to_string()])
                .collect(),
        ),
        "rejections_daily" => (
            h(&["day", "reason", "count"]),
            v.rejections_daily
                .iter()
                .map(|r| vec![r.day.to_string(), r.reason.clone(), r.count.to_string()])
                .collect(),
        ),
        "codes_issued_daily" => (
            h(&["day", "kind", "channel", "count"]),
            v.codes_issued_daily
                .iter()
                .map(|r| {
                    vec![r.day.to_string(), r.kind.clone(), r.channel.clone(), r.count.to_string()]
                })
                .collect(),
        ),
        _ => return None,
    };
    debug_assert!(VIEW_NAMES.contains(&view));
    Some(out)
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{CityDaily, DistrictDaily, SiteHourly, ViewRow};
    use swabstream_events::Day;

    fn sample() -> ViewSet {
        let day = Day::parse("2022-04-09").unwrap();
        // Two partitions' partial rows for the same keys sum into one row each.
        ViewSet::from_rows([
            ViewRow::CityDaily(CityDaily {
                day,
                people_sampled: 3,
                using_code: 2,
                valid_scans: 4,
                rescans: 1,
                ..Default::default()
            }),
            ViewRow::CityDaily(CityDaily {
                day,
                people_sampled: 1,
                using_code: 1,
                valid_scans: 1,
                rejected: 2,
                duplicates: 1,
                ..Default::default()
            }),
            ViewRow::DistrictDaily(DistrictDaily {
                day,
                district: "310115".into(),
                people_sampled: 4,
                using_code: 3,
                valid_scans: 5,
                rejected: 1,
            }),
            ViewRow::SiteHourly(SiteHourly {
                day,
                site_id: "PD-001, gate \"A\"".into(),
                hour: 8,
                people_sampled: 4,
                valid_scans: 5,
            }),
        ])
    }

    #[test]
    fn partial_rows_sum_and_percent_is_derived_after() {
        let v = sample();
        assert_eq!(v.city_daily.len(), 1);
        let c = &v.city_daily[0];
        assert_eq!(
            (c.people_sampled, c.using_code, c.valid_scans, c.rescans, c.rejected, c.duplicates),
            (4, 3, 5, 1, 2, 1)
        );
        assert_eq!(c.percent_using_code, Some(75.0));
    }

    #[test]
    fn json_has_an_array_per_view_with_spec_field_names() {
        let text = render_json(&sample());
        let value: serde_json::Value = serde_json::from_str(&text).unwrap();
        let obj = value.as_object().unwrap();
        assert_eq!(
            obj.keys().cloned().collect::<std::collections::BTreeSet<_>>(),
            VIEW_NAMES.iter().map(|s| s.to_string()).collect()
        );
        let city = &obj["city_daily"][0];
        assert_eq!(city["day"], "2022-04-09");
        assert_eq!(city["percent_using_code"], 75.0);
        assert_eq!(city["people_sampled"], 4);
        // And it reads back into the same views.
        let back: ViewSet = serde_json::from_str(&text).unwrap();
        assert_eq!(back, sample());
        assert!(back.differences(&sample()).is_empty());
    }

    #[test]
    fn csv_quotes_and_table_aligns() {
        let csv = render_csv(&sample(), "site_hourly").unwrap();
        assert_eq!(
            csv,
            "day,site_id,hour,people_sampled,valid_scans\n2022-04-09,\"PD-001, gate \"\"A\"\"\",8,4,5\n"
        );
        assert!(render_csv(&sample(), "no_such_view").is_none());
        let table = render_table(&sample(), &["city_daily", "district_daily"]);
        assert!(table.contains("city_daily (1 rows)"));
        assert!(table.contains("75.00"));
        assert!(table.contains("Pudong"));
    }

    #[test]
    fn differences_name_the_row_and_both_values() {
        let a = sample();
        let mut b = sample();
        b.city_daily[0].rescans = 7;
        b.district_daily.clear();
        let d = a.differences(&b);
        assert_eq!(d.len(), 2, "{d:?}");
        assert!(d[0].starts_with("city_daily 2022-04-09: "));
        assert!(d[1].starts_with("district_daily 2022-04-09 310115: only on the left"));
    }
}
