//! Summing rows by key.

use std::collections::BTreeMap;

use swabstream_events::Day;

use crate::{
    CityDaily, CodesIssuedDaily, DistrictDaily, MethodDaily, RejectionsDaily, SiteHourly, ViewRow,
    ViewSet, percent,
};

/// Counters of all six views keyed by their view keys, in key order.
///
/// Used to sum partial rows, and by anyone who counts events into views by
/// other means (the simulator's ground truth). Only counts that were touched
/// make rows, so two tallies of the same events give the same rows.
#[derive(Clone, Debug, Default)]
pub struct Tally {
    pub city: BTreeMap<Day, CityDaily>,
    pub district: BTreeMap<(Day, String), DistrictDaily>,
    pub site: BTreeMap<(Day, String, u8), SiteHourly>,
    pub method: BTreeMap<(Day, String), MethodDaily>,
    pub rejections: BTreeMap<(Day, String), RejectionsDaily>,
    pub codes: BTreeMap<(Day, String, String), CodesIssuedDaily>,
}

impl Tally {
    /// The city row of a day, made on first touch.
    pub fn city(&mut self, day: Day) -> &mut CityDaily {
        self.city.entry(day).or_insert_with(|| CityDaily { day, ..CityDaily::default() })
    }

    /// The district row of a day, made on first touch.
    pub fn district(&mut self, day: Day, district: &str) -> &mut DistrictDaily {
        self.district.entry((day, district.to_owned())).or_insert_with(|| DistrictDaily {
            day,
            district: district.to_owned(),
            ..DistrictDaily::default()
        })
    }

    /// The site row of a day and hour, made on first touch.
    pub fn site(&mut self, day: Day, site_id: &str, hour: u8) -> &mut SiteHourly {
        self.site.entry((day, site_id.to_owned(), hour)).or_insert_with(|| SiteHourly {
            day,
            site_id: site_id.to_owned(),
            hour,
            ..SiteHourly::default()
        })
    }

    /// The method row of a day, made on first touch.
    pub fn method(&mut self, day: Day, method: &str) -> &mut MethodDaily {
        self.method.entry((day, method.to_owned())).or_insert_with(|| MethodDaily {
            day,
            method: method.to_owned(),
            people_sampled: 0,
        })
    }

    /// The rejection row of a day and reason, made on first touch.
    pub fn rejections(&mut self, day: Day, reason: &str) -> &mut RejectionsDaily {
        self.rejections.entry((day, reason.to_owned())).or_insert_with(|| RejectionsDaily {
            day,
            reason: reason.to_owned(),
            count: 0,
        })
    }

    /// The codes-issued row of a day, kind and channel, made on first touch.
    pub fn codes(&mut self, day: Day, kind: &str, channel: &str) -> &mut CodesIssuedDaily {
        self.codes.entry((day, kind.to_owned(), channel.to_owned())).or_insert_with(|| {
            CodesIssuedDaily { day, kind: kind.to_owned(), channel: channel.to_owned(), count: 0 }
        })
    }

    /// Adds a (partial) row's counts to the row with its key.
    pub fn add_row(&mut self, row: &ViewRow) {
        match row {
            ViewRow::CityDaily(r) => {
                let t = self.city(r.day);
                t.people_sampled += r.people_sampled;
                t.using_code += r.using_code;
                t.valid_scans += r.valid_scans;
                t.rescans += r.rescans;
                t.rejected += r.rejected;
                t.duplicates += r.duplicates;
            }
            ViewRow::DistrictDaily(r) => {
                let t = self.district(r.day, &r.district);
                t.people_sampled += r.people_sampled;
                t.using_code += r.using_code;
                t.valid_scans += r.valid_scans;
                t.rejected += r.rejected;
            }
            ViewRow::SiteHourly(r) => {
                let t = self.site(r.day, &r.site_id, r.hour);
                t.people_sampled += r.people_sampled;
                t.valid_scans += r.valid_scans;
            }
            ViewRow::MethodDaily(r) => {
                self.method(r.day, &r.method).people_sampled += r.people_sampled
            }
            ViewRow::RejectionsDaily(r) => self.rejections(r.day, &r.reason).count += r.count,
            ViewRow::CodesIssuedDaily(r) => self.codes(r.day, &r.kind, &r.channel).count += r.count,
        }
    }

    /// The views, sorted by key, with `percent_using_code` derived.
    pub fn into_view_set(self) -> ViewSet {
        ViewSet {
            city_daily: self
                .city
                .into_values()
                .map(|mut r| {
                    r.percent_using_code = percent(r.using_code, r.people_sampled);
                    r
                })
                .collect(),
            district_daily: self.district.into_values().collect(),
            site_hourly: self.site.into_values().collect(),
            method_daily: self.method.into_values().collect(),
            rejections_daily: self.rejections.into_values().collect(),
            codes_issued_daily: self.codes.into_values().collect(),
        }
    }
}
