//! The ground truth: counts kept by small keys while the day is generated,
//! turned into views at the end. A row exists exactly when some count of it
//! was touched (every touch adds one to at least one count of the row).

use std::collections::BTreeMap;

use swabstream_events::{Channel, CodeKind, DISTRICTS, Day, Reason, ScanMethod};
use swabstream_views::{Tally, ViewSet};

#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct CityCounts {
    pub people_sampled: u64,
    pub using_code: u64,
    pub valid_scans: u64,
    pub rescans: u64,
    pub rejected: u64,
    pub duplicates: u64,
}

#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct DistrictCounts {
    pub people_sampled: u64,
    pub using_code: u64,
    pub valid_scans: u64,
    pub rejected: u64,
}

#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct SiteCounts {
    pub people_sampled: u64,
    pub valid_scans: u64,
}

#[derive(Debug, Default)]
pub(crate) struct Truth {
    pub city: BTreeMap<Day, CityCounts>,
    /// By day and index into `DISTRICTS`.
    pub district: BTreeMap<(Day, u8), DistrictCounts>,
    /// By day, site index and local hour.
    pub site: BTreeMap<(Day, u32, u8), SiteCounts>,
    pub method: BTreeMap<(Day, ScanMethod), u64>,
    pub rejections: BTreeMap<(Day, Reason), u64>,
    pub codes: BTreeMap<(Day, CodeKind, Channel), u64>,
}

impl Truth {
    pub fn city(&mut self, day: Day) -> &mut CityCounts {
        self.city.entry(day).or_default()
    }

    pub fn district(&mut self, day: Day, d: u8) -> &mut DistrictCounts {
        self.district.entry((day, d)).or_default()
    }

    pub fn site(&mut self, day: Day, site: u32, hour: u8) -> &mut SiteCounts {
        self.site.entry((day, site, hour)).or_default()
    }

    pub fn method(&mut self, day: Day, method: ScanMethod) -> &mut u64 {
        self.method.entry((day, method)).or_default()
    }

    pub fn rejection(&mut self, day: Day, reason: Reason) -> &mut u64 {
        self.rejections.entry((day, reason)).or_default()
    }

    pub fn codes(&mut self, day: Day, kind: CodeKind, channel: Channel) -> &mut u64 {
        self.codes.entry((day, kind, channel)).or_default()
    }

    /// The six views; `site_ids` names the sites by index.
    pub fn into_view_set(self, site_ids: &[String]) -> ViewSet {
        let mut t = Tally::default();
        for (day, c) in self.city {
            let r = t.city(day);
            r.people_sampled += c.people_sampled;
            r.using_code += c.using_code;
            r.valid_scans += c.valid_scans;
            r.rescans += c.rescans;
            r.rejected += c.rejected;
            r.duplicates += c.duplicates;
        }
        for ((day, d), c) in self.district {
            let r = t.district(day, DISTRICTS[usize::from(d)].0);
            r.people_sampled += c.people_sampled;
            r.using_code += c.using_code;
            r.valid_scans += c.valid_scans;
            r.rejected += c.rejected;
        }
        for ((day, site, hour), c) in self.site {
            let r = t.site(day, &site_ids[site as usize], hour);
            r.people_sampled += c.people_sampled;
            r.valid_scans += c.valid_scans;
        }
        for ((day, method), n) in self.method {
            t.method(day, method.as_str()).people_sampled += n;
        }
        for ((day, reason), n) in self.rejections {
            t.rejections(day, reason.as_str()).count += n;
        }
        for ((day, kind, channel), n) in self.codes {
            t.codes(day, kind.as_str(), channel.as_str()).count += n;
        }
        t.into_view_set()
    }
}
