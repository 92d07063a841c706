//! A partition's partial views, with the rows changed since they were last taken.
//!
//! Per day, the city, district, method, rejection and code counters sit in
//! fixed arrays (16 districts, 6 methods, 8 reasons, 4×4 kinds×channels), so
//! the hot path indexes instead of hashing; only site-hours live in a hash
//! map. A row exists once a count of it was touched, exactly as SPEC §4's
//! views hold rows, and is "dirty" until [`PartitionViews::take_changes`]
//! hands its absolute values to whoever writes them.

use hashbrown::HashMap;
use swabstream_events::{Channel, CodeKind, DISTRICTS, Day, Reason, ScanMethod};
use swabstream_views::{
    CityDaily, CodesIssuedDaily, DistrictDaily, MethodDaily, RejectionsDaily, SiteHourly, ViewRow,
};

/// Counts of the city row of a day.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct CityCounts {
    pub people_sampled: u64,
    pub using_code: u64,
    pub valid_scans: u64,
    pub rescans: u64,
    pub rejected: u64,
    pub duplicates: u64,
}

/// Counts of a district row of a day.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct DistrictCounts {
    pub people_sampled: u64,
    pub using_code: u64,
    pub valid_scans: u64,
    pub rejected: u64,
}

const _: () = assert!(Reason::ALL.len() <= 8, "RowBits::reasons is a u8");

/// Bit sets of which rows of a day exist, and which changed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct RowBits {
    pub city: bool,
    pub districts: u16,
    pub methods: u8,
    /// Bit [`Reason::index`]: eight reasons fit.
    pub reasons: u8,
    /// Bit `kind * 4 + channel`.
    pub codes: u16,
}

impl RowBits {
    fn any(&self) -> bool {
        self.city
            || self.districts != 0
            || self.methods != 0
            || self.reasons != 0
            || self.codes != 0
    }
}

/// All day-keyed rows of one local day.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct DayRows {
    pub day: Day,
    pub city: CityCounts,
    pub districts: [DistrictCounts; 16],
    pub methods: [u64; 6],
    pub reasons: [u64; Reason::ALL.len()],
    pub codes: [u64; 16],
    pub exists: RowBits,
    pub dirty: RowBits,
}

/// Counts of a site-hour row.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct SiteCounts {
    pub people_sampled: u64,
    pub valid_scans: u64,
    pub dirty: bool,
}

/// The key of a site-hour row; the site as its index in the partition's site table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct SiteHourKey {
    pub day: Day,
    pub site: u32,
    pub hour: u8,
}

/// A partition's partial rows of all six views.
#[derive(Clone, Debug, Default)]
pub struct PartitionViews {
    pub(crate) days: Vec<DayRows>,
    pub(crate) day_index: HashMap<Day, u32>,
    pub(crate) sites: Vec<Box<str>>,
    pub(crate) site_index: HashMap<Box<str>, u32>,
    pub(crate) site_rows: HashMap<SiteHourKey, SiteCounts>,
    dirty_days: Vec<u32>,
    dirty_sites: Vec<SiteHourKey>,
}

impl PartitionViews {
    /// The rows of a day, made on first touch, and marked changed. The caller
    /// sets the bits of the rows it touches.
    pub(crate) fn day(&mut self, day: Day) -> &mut DayRows {
        let idx = match self.day_index.get(&day) {
            Some(&i) => i,
            None => {
                let i = self.days.len() as u32;
                self.days.push(DayRows { day, ..DayRows::default() });
                self.day_index.insert(day, i);
                i
            }
        };
        let rows = &mut self.days[idx as usize];
        if !rows.dirty.any() {
            self.dirty_days.push(idx);
        }
        rows
    }

    fn site_id(&mut self, site_id: &str) -> u32 {
        if let Some(&i) = self.site_index.get(site_id) {
            return i;
        }
        let i = self.sites.len() as u32;
        self.sites.push(site_id.into());
        self.site_index.insert(site_id.into(), i);
        i
    }

    pub(crate) fn site_hour(&mut self, day: Day, site_id: &str, hour: u8) -> &mut SiteCounts {
        let site = self.site_id(site_id);
        let key = SiteHourKey { day, site, hour };
        let row = self.site_rows.entry(key).or_default();
        if !row.dirty {
            row.dirty = true;
            self.dirty_sites.push(key);
        }
        row
    }

    /// A rejected record on `day`, in `district` when it named a known one.
    pub(crate) fn count_rejection(&mut self, day: Day, reason: Reason, district: Option<u8>) {
        let d = self.day(day);
        d.city.rejected += 1;
        d.reasons[reason.index()] += 1;
        d.touch_city();
        d.touch_reason(reason);
        if let Some(i) = district {
            d.districts[i as usize].rejected += 1;
            d.touch_district(i);
        }
    }

    /// A duplicate on `day`.
    pub(crate) fn count_duplicate(&mut self, day: Day) {
        let d = self.day(day);
        d.city.duplicates += 1;
        d.touch_city();
    }

    /// A valid `CodeIssued` on `day`.
    pub(crate) fn count_code_issued(&mut self, day: Day, kind: CodeKind, channel: Channel) {
        let d = self.day(day);
        let bit = kind.index() * 4 + channel.index();
        d.codes[bit] += 1;
        d.exists.codes |= 1 << bit;
        d.dirty.codes |= 1 << bit;
    }

    /// A valid scan; `first` tells whether it made the person sampled that day,
    /// in which case `method` is how they were identified.
    pub(crate) fn count_scan(
        &mut self,
        day: Day,
        hour: u8,
        district: u8,
        site_id: &str,
        first: Option<ScanMethod>,
    ) {
        let d = self.day(day);
        d.city.valid_scans += 1;
        d.districts[district as usize].valid_scans += 1;
        d.touch_city();
        d.touch_district(district);
        match first {
            Some(method) => {
                let code = u64::from(method.is_code());
                d.city.people_sampled += 1;
                d.city.using_code += code;
                let dist = &mut d.districts[district as usize];
                dist.people_sampled += 1;
                dist.using_code += code;
                d.methods[method.index()] += 1;
                d.exists.methods |= 1 << method.index();
                d.dirty.methods |= 1 << method.index();
            }
            None => d.city.rescans += 1,
        }
        let s = self.site_hour(day, site_id, hour);
        s.valid_scans += 1;
        if first.is_some() {
            s.people_sampled += 1;
        }
    }

    /// The rows changed since the last call, with their absolute (partial) values.
    pub fn take_changes(&mut self) -> Vec<ViewRow> {
        let out = self.changes();
        self.clear_dirty();
        out
    }

    /// The rows changed since they were last taken, leaving them marked
    /// changed: for a writer that clears them only once its write succeeded.
    pub fn changes(&self) -> Vec<ViewRow> {
        let mut out = Vec::new();
        for &idx in &self.dirty_days {
            let rows = &self.days[idx as usize];
            rows.emit(&rows.dirty, &mut out);
        }
        for key in &self.dirty_sites {
            if let Some(row) = self.site_rows.get(key) {
                out.push(site_row(&self.sites, *key, row));
            }
        }
        out
    }

    /// Every row this partition holds.
    pub fn rows(&self) -> Vec<ViewRow> {
        let mut out = Vec::new();
        for rows in &self.days {
            rows.emit(&rows.exists, &mut out);
        }
        for (key, row) in &self.site_rows {
            out.push(site_row(&self.sites, *key, row));
        }
        out
    }

    /// Whether rows changed since they were last taken.
    pub fn has_changes(&self) -> bool {
        !self.dirty_days.is_empty() || !self.dirty_sites.is_empty()
    }

    /// Bytes held, counted from table capacities.
    pub(crate) fn heap_bytes(&self) -> usize {
        self.days.capacity() * size_of::<DayRows>()
            + table_bytes(self.day_index.capacity(), size_of::<(Day, u32)>())
            + self.sites.iter().map(|s| s.len() * 2 + size_of::<Box<str>>() * 2).sum::<usize>()
            + table_bytes(self.site_index.capacity(), size_of::<(Box<str>, u32)>())
            + table_bytes(self.site_rows.capacity(), size_of::<(SiteHourKey, SiteCounts)>())
    }

    /// Marks every row unchanged: after they were written, or after a
    /// restore (the store already holds them).
    pub fn clear_dirty(&mut self) {
        for idx in std::mem::take(&mut self.dirty_days) {
            self.days[idx as usize].dirty = RowBits::default();
        }
        for key in std::mem::take(&mut self.dirty_sites) {
            if let Some(row) = self.site_rows.get_mut(&key) {
                row.dirty = false;
            }
        }
    }
}

/// Bytes a hashbrown table of this capacity holds: buckets (capacity ÷ 7/8,
/// rounded to a power of two) times the entry size, plus a control byte each.
pub(crate) fn table_bytes(capacity: usize, entry: usize) -> usize {
    if capacity == 0 {
        return 0;
    }
    let buckets = if capacity < 8 { capacity + 1 } else { (capacity * 8 / 7).next_power_of_two() };
    buckets * (entry + 1) + 16
}

fn site_row(sites: &[Box<str>], key: SiteHourKey, row: &SiteCounts) -> ViewRow {
    ViewRow::SiteHourly(SiteHourly {
        day: key.day,
        site_id: sites[key.site as usize].to_string(),
        hour: key.hour,
        people_sampled: row.people_sampled,
        valid_scans: row.valid_scans,
    })
}

impl DayRows {
    fn touch_city(&mut self) {
        self.exists.city = true;
        self.dirty.city = true;
    }

    fn touch_district(&mut self, i: u8) {
        self.exists.districts |= 1 << i;
        self.dirty.districts |= 1 << i;
    }

    fn touch_reason(&mut self, r: Reason) {
        self.exists.reasons |= 1 << r.index();
        self.dirty.reasons |= 1 << r.index();
    }

    /// Pushes the rows whose bits are set in `which`.
    fn emit(&self, which: &RowBits, out: &mut Vec<ViewRow>) {
        let day = self.day;
        if which.city {
            let c = &self.city;
            out.push(ViewRow::CityDaily(CityDaily {
                day,
                people_sampled: c.people_sampled,
                using_code: c.using_code,
                percent_using_code: None,
                valid_scans: c.valid_scans,
                rescans: c.rescans,
                rejected: c.rejected,
                duplicates: c.duplicates,
            }));
        }
        for (i, d) in self.districts.iter().enumerate() {
            if which.districts & (1 << i) != 0 {
                out.push(ViewRow::DistrictDaily(DistrictDaily {
                    day,
                    district: DISTRICTS[i].0.to_owned(),
                    people_sampled: d.people_sampled,
                    using_code: d.using_code,
                    valid_scans: d.valid_scans,
                    rejected: d.rejected,
                }));
            }
        }
        for (i, m) in ScanMethod::ALL.iter().enumerate() {
            if which.methods & (1 << i) != 0 {
                out.push(ViewRow::MethodDaily(MethodDaily {
                    day,
                    method: m.as_str().to_owned(),
                    people_sampled: self.methods[i],
                }));
            }
        }
        for (i, r) in Reason::ALL.iter().enumerate() {
            if which.reasons & (1 << i) != 0 {
                out.push(ViewRow::RejectionsDaily(RejectionsDaily {
                    day,
                    reason: r.as_str().to_owned(),
                    count: self.reasons[i],
                }));
            }
        }
        for bit in 0..16 {
            if which.codes & (1 << bit) != 0 {
                out.push(ViewRow::CodesIssuedDaily(CodesIssuedDaily {
                    day,
                    kind: CodeKind::ALL[bit / 4].as_str().to_owned(),
                    channel: Channel::ALL[bit % 4].as_str().to_owned(),
                    count: self.codes[bit],
                }));
            }
        }
    }
}
