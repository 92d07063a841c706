//! A day at a glance (`GET /v1/summary`): the city's totals, per district,
//! per hour (site hours summed), per method, rejections by reason, codes
//! issued by kind and channel, and the busiest sites — all sums of the §4
//! views, so every number here can be checked against them.
//!
//! Codes are issued before the day people show them (the code system hands
//! them out in the days ahead of a sampling day), so codes issued *on* a
//! sampling day are mostly zero on a normal day. Each code figure is
//! therefore given twice: `count`, issued on the day (what shows a channel
//! failing on an outage day), and `to_date`, issued on or before the day
//! (the codes people could show that day), both from `codes_issued_daily`.

use std::collections::BTreeMap;

use serde::Serialize;
use swabstream_events::{DISTRICTS, Day};
use swabstream_views::{ViewSet, percent};

/// How many sites `busiest_sites` lists.
pub const BUSIEST_SITES: usize = 20;

#[derive(Debug, Serialize)]
pub struct Summary {
    /// The day summarised (null when the store holds no day yet).
    pub day: Option<Day>,
    /// Every day the views hold, oldest first (for a day picker).
    pub days: Vec<Day>,
    pub city: City,
    /// All 16 districts, in code order, zeros included.
    pub districts: Vec<District>,
    /// Hours 0–23 of the day, zeros included.
    pub hours: Vec<Hour>,
    pub methods: Vec<Method>,
    pub rejections: Vec<Rejection>,
    /// Codes by kind and channel: every pair with a code issued on or before the day.
    pub codes_issued: Vec<CodesIssued>,
    /// Codes per channel (`APP`, `WECHAT`, `ALIPAY`, `OFFLINE`, always all
    /// four), kinds summed.
    pub codes_by_channel: Vec<Channel>,
    /// The sites with the most people sampled that day, most first.
    pub busiest_sites: Vec<Site>,
}

#[derive(Debug, Default, Serialize)]
pub struct City {
    pub people_sampled: u64,
    pub using_code: u64,
    pub percent_using_code: Option<f64>,
    pub valid_scans: u64,
    pub rescans: u64,
    pub rejected: u64,
    pub duplicates: u64,
}

#[derive(Debug, Serialize)]
pub struct District {
    pub district: &'static str,
    pub name: &'static str,
    pub people_sampled: u64,
    pub using_code: u64,
    pub percent_using_code: Option<f64>,
    pub valid_scans: u64,
    pub rejected: u64,
}

#[derive(Debug, Serialize)]
pub struct Hour {
    pub hour: u8,
    pub people_sampled: u64,
    pub valid_scans: u64,
}

#[derive(Debug, Serialize)]
pub struct Method {
    pub method: String,
    pub people_sampled: u64,
}

#[derive(Debug, Serialize)]
pub struct Rejection {
    pub reason: String,
    pub count: u64,
}

#[derive(Debug, Serialize)]
pub struct CodesIssued {
    pub kind: String,
    pub channel: String,
    /// Issued on the day.
    pub count: u64,
    /// Issued on or before the day.
    pub to_date: u64,
}

#[derive(Debug, Serialize)]
pub struct Channel {
    pub channel: String,
    /// Issued on the day.
    pub count: u64,
    /// Issued on or before the day.
    pub to_date: u64,
}

#[derive(Debug, Serialize)]
pub struct Site {
    pub site_id: String,
    pub people_sampled: u64,
    pub valid_scans: u64,
}

/// The channels always listed, so a channel that fails shows as a zero.
const CHANNELS: [&str; 4] = ["APP", "WECHAT", "ALIPAY", "OFFLINE"];

/// The summary of `day` (default: the latest day on which people were sampled).
pub fn summarise(views: &ViewSet, day: Option<Day>) -> Summary {
    let mut days: Vec<Day> = views.city_daily.iter().map(|r| r.day).collect();
    days.extend(views.codes_issued_daily.iter().map(|r| r.day));
    days.extend(views.rejections_daily.iter().map(|r| r.day));
    days.sort_unstable();
    days.dedup();
    // The default is the latest day anyone was sampled: a rejected event
    // dated far in the future makes a day of its own, with nobody sampled.
    let day = day
        .or_else(|| views.city_daily.iter().filter(|r| r.people_sampled > 0).map(|r| r.day).max())
        .or_else(|| views.city_daily.iter().map(|r| r.day).max())
        .or(days.last().copied());
    let on = |d: Day| Some(d) == day;

    let city = views.city(day.unwrap_or(Day(i32::MIN))).map_or_else(City::default, |c| City {
        people_sampled: c.people_sampled,
        using_code: c.using_code,
        percent_using_code: c.percent_using_code,
        valid_scans: c.valid_scans,
        rescans: c.rescans,
        rejected: c.rejected,
        duplicates: c.duplicates,
    });

    let districts = DISTRICTS
        .iter()
        .map(|(code, name, _)| {
            let row = views.district_daily.iter().find(|r| on(r.day) && r.district == *code);
            let (p, u, v, r) = row.map_or((0, 0, 0, 0), |r| {
                (r.people_sampled, r.using_code, r.valid_scans, r.rejected)
            });
            District {
                district: code,
                name,
                people_sampled: p,
                using_code: u,
                percent_using_code: percent(u, p),
                valid_scans: v,
                rejected: r,
            }
        })
        .collect();

    let mut hours: Vec<Hour> =
        (0..24).map(|hour| Hour { hour, people_sampled: 0, valid_scans: 0 }).collect();
    let mut sites: BTreeMap<&str, (u64, u64)> = BTreeMap::new();
    for r in views.site_hourly.iter().filter(|r| on(r.day)) {
        if let Some(h) = hours.get_mut(usize::from(r.hour)) {
            h.people_sampled += r.people_sampled;
            h.valid_scans += r.valid_scans;
        }
        let s = sites.entry(&r.site_id).or_default();
        s.0 += r.people_sampled;
        s.1 += r.valid_scans;
    }
    let mut busiest: Vec<Site> = sites
        .into_iter()
        .map(|(site_id, (p, v))| Site {
            site_id: site_id.to_owned(),
            people_sampled: p,
            valid_scans: v,
        })
        .collect();
    // Most people first; ties by site id, so the list is deterministic.
    busiest.sort_by(|a, b| b.people_sampled.cmp(&a.people_sampled).then(a.site_id.cmp(&b.site_id)));
    busiest.truncate(BUSIEST_SITES);

    let methods = views
        .method_daily
        .iter()
        .filter(|r| on(r.day))
        .map(|r| Method { method: r.method.clone(), people_sampled: r.people_sampled })
        .collect();
    let rejections = views
        .rejections_daily
        .iter()
        .filter(|r| on(r.day))
        .map(|r| Rejection { reason: r.reason.clone(), count: r.count })
        .collect();
    // (on the day, on or before it) per kind and channel.
    let mut codes: BTreeMap<(&str, &str), (u64, u64)> = BTreeMap::new();
    for r in views.codes_issued_daily.iter().filter(|r| day.is_some_and(|d| r.day <= d)) {
        let c = codes.entry((&r.kind, &r.channel)).or_default();
        if on(r.day) {
            c.0 += r.count;
        }
        c.1 += r.count;
    }
    let mut by_channel: BTreeMap<&str, (u64, u64)> =
        CHANNELS.iter().map(|c| (*c, (0, 0))).collect();
    for (&(_, channel), &(count, to_date)) in &codes {
        let c = by_channel.entry(channel).or_default();
        c.0 += count;
        c.1 += to_date;
    }
    let codes_issued: Vec<CodesIssued> = codes
        .into_iter()
        .map(|((kind, channel), (count, to_date))| CodesIssued {
            kind: kind.to_owned(),
            channel: channel.to_owned(),
            count,
            to_date,
        })
        .collect();
    let mut codes_by_channel: Vec<Channel> = by_channel
        .into_iter()
        .map(|(channel, (count, to_date))| Channel { channel: channel.to_owned(), count, to_date })
        .collect();
    codes_by_channel.sort_by_key(|c| CHANNELS.iter().position(|k| *k == c.channel).unwrap_or(9));

    Summary {
        day,
        days,
        city,
        districts,
        hours,
        methods,
        rejections,
        codes_issued,
        codes_by_channel,
        busiest_sites: busiest,
    }
}

#[cfg(test)]
mod tests {
    use swabstream_views::{CityDaily, CodesIssuedDaily};

    use super::*;

    #[test]
    fn the_default_day_is_the_latest_anyone_was_sampled() {
        let day = Day::parse("2022-04-09").unwrap();
        let future = Day::parse("2122-04-08").unwrap();
        let views = ViewSet {
            city_daily: vec![
                CityDaily { day, people_sampled: 5, using_code: 4, ..CityDaily::default() },
                CityDaily { day: future, rejected: 1, ..CityDaily::default() },
            ],
            ..ViewSet::default()
        };
        let s = summarise(&views, None);
        assert_eq!(s.day, Some(day));
        assert_eq!(s.days, vec![day, future], "both days can be picked");
        assert_eq!(s.city.people_sampled, 5);
        assert_eq!(summarise(&views, Some(future)).city.rejected, 1);
        assert_eq!(summarise(&ViewSet::default(), None).day, None);
    }

    #[test]
    fn codes_are_counted_on_the_day_and_to_date() {
        let d = |s: &str| Day::parse(s).unwrap();
        let issued = |day: &str, kind: &str, channel: &str, count| CodesIssuedDaily {
            day: d(day),
            kind: kind.to_owned(),
            channel: channel.to_owned(),
            count,
        };
        let views = ViewSet {
            city_daily: vec![CityDaily {
                day: d("2022-04-09"),
                people_sampled: 3,
                ..CityDaily::default()
            }],
            // Issued in the days before the sampling day, a few on it, and
            // some the day after, which the 9th's figures must not include.
            codes_issued_daily: vec![
                issued("2022-04-05", "PERSONAL", "WECHAT", 7),
                issued("2022-04-07", "PERSONAL", "ALIPAY", 5),
                issued("2022-04-08", "PAPER", "OFFLINE", 2),
                issued("2022-04-09", "PERSONAL", "WECHAT", 1),
                issued("2022-04-10", "PERSONAL", "APP", 100),
            ],
            ..ViewSet::default()
        };
        let s = summarise(&views, Some(d("2022-04-09")));
        let channels: Vec<(&str, u64, u64)> =
            s.codes_by_channel.iter().map(|c| (c.channel.as_str(), c.count, c.to_date)).collect();
        assert_eq!(
            channels,
            [("APP", 0, 0), ("WECHAT", 1, 8), ("ALIPAY", 0, 5), ("OFFLINE", 0, 2)],
            "on the day, and on or before it"
        );
        let kinds: Vec<(&str, &str, u64, u64)> = s
            .codes_issued
            .iter()
            .map(|c| (c.kind.as_str(), c.channel.as_str(), c.count, c.to_date))
            .collect();
        assert_eq!(
            kinds,
            [
                ("PAPER", "OFFLINE", 0, 2),
                ("PERSONAL", "ALIPAY", 0, 5),
                ("PERSONAL", "WECHAT", 1, 8)
            ]
        );
        // The day before the first code: nothing to date.
        let before = summarise(&views, Some(d("2022-04-01")));
        assert!(before.codes_issued.is_empty());
        assert!(before.codes_by_channel.iter().all(|c| c.count == 0 && c.to_date == 0));
    }
}
