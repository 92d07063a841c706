//! The city's sampling sites and scanners, a few of them faulty, and the shape
//! of the sampling day.

use rand::Rng;
use swabstream_events::DISTRICTS;

/// About one sampling site per this many people.
const PEOPLE_PER_SITE: u64 = 400;

/// District codes that misconfigured scanners send: Zhabei (merged into
/// Jing'an in 2015), the city-level code, and a typo.
pub(crate) const UNKNOWN_DISTRICTS: [&str; 3] = ["310108", "310100", "310199"];

/// Relative weights of the local hours of the day at which people arrive:
/// sampling runs 06:00–22:00 with a strong morning peak (07–10), a smaller
/// afternoon one (14–16), an evening tail, and a trickle around midnight.
pub(crate) const HOUR_WEIGHTS: [u64; 24] = [
    25, 0, 0, 0, 0, 0, 350, 1000, 1400, 1300, 900, 550, 350, 450, 600, 650, 550, 400, 300, 250,
    200, 120, 50, 25,
];

/// A scanner fault: every scan of the site's last scanner carries it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Fault {
    None,
    /// Sends `UNKNOWN_DISTRICTS[i]` instead of the site's district.
    District(u8),
    /// Its clock is set a hundred years ahead (2122).
    Clock,
}

#[derive(Clone, Debug)]
pub(crate) struct Site {
    /// Index into `DISTRICTS`.
    pub district: u8,
    /// 2–6.
    pub scanners: u8,
    pub fault: Fault,
}

impl Site {
    /// How many scanners work correctly: all but the faulty last one.
    pub fn good_scanners(&self) -> u8 {
        self.scanners - u8::from(self.fault != Fault::None)
    }
}

/// Weighted choice among a few options, by integer weights.
#[derive(Clone, Debug)]
pub(crate) struct Pick {
    cum: Vec<u64>,
}

impl Pick {
    pub fn new(weights: impl IntoIterator<Item = u64>) -> Self {
        let mut total = 0;
        let cum = weights
            .into_iter()
            .map(|w| {
                total += w;
                total
            })
            .collect::<Vec<_>>();
        assert!(total > 0, "weights must not all be zero");
        Pick { cum }
    }

    pub fn pick(&self, rng: &mut impl Rng) -> usize {
        let x = rng.gen_range(0..*self.cum.last().expect("non-empty"));
        self.cum.partition_point(|&c| c <= x)
    }
}

#[derive(Debug)]
pub(crate) struct City {
    pub sites: Vec<Site>,
    /// `310115-S0042`, by site index.
    pub site_ids: Vec<String>,
    /// The sites of district `d` are `first_site[d]..first_site[d + 1]`.
    pub first_site: [u32; 17],
    /// Sites whose last scanner sends an unknown district.
    pub district_faults: Vec<u32>,
    /// Sites whose last scanner's clock is in 2122.
    pub clock_faults: Vec<u32>,
    /// Where people live, by population.
    pub districts: Pick,
}

impl City {
    pub fn new(rng: &mut impl Rng, people: u64) -> City {
        let total_pop: u64 = DISTRICTS.iter().map(|d| u64::from(d.2)).sum();
        let mut sites = Vec::new();
        let mut site_ids = Vec::new();
        let mut first_site = [0u32; 17];
        for (d, (code, _, pop)) in DISTRICTS.iter().enumerate() {
            first_site[d] = sites.len() as u32;
            let residents = people * u64::from(*pop) / total_pop;
            let n = ((residents + PEOPLE_PER_SITE / 2) / PEOPLE_PER_SITE).max(1);
            for number in 1..=n {
                sites.push(Site {
                    district: d as u8,
                    scanners: rng.gen_range(2..=6),
                    fault: Fault::None,
                });
                site_ids.push(format!("{code}-S{number:04}"));
            }
        }
        first_site[16] = sites.len() as u32;
        let mut city = City {
            sites,
            site_ids,
            first_site,
            district_faults: Vec::new(),
            clock_faults: Vec::new(),
            districts: Pick::new(DISTRICTS.iter().map(|d| u64::from(d.2))),
        };
        let faulty = |per| 1 + (people / per) as usize;
        for i in 0..faulty(300_000) {
            let s = city.healthy_site(rng);
            city.sites[s as usize].fault = Fault::District((i % UNKNOWN_DISTRICTS.len()) as u8);
            city.district_faults.push(s);
        }
        for _ in 0..faulty(500_000) {
            let s = city.healthy_site(rng);
            city.sites[s as usize].fault = Fault::Clock;
            city.clock_faults.push(s);
        }
        city
    }

    /// A random site without a faulty scanner (there always is one: faulty
    /// sites are about one in a thousand, and there are at least 16 sites).
    fn healthy_site(&self, rng: &mut impl Rng) -> u32 {
        loop {
            let s = rng.gen_range(0..self.sites.len() as u32);
            if self.sites[s as usize].fault == Fault::None {
                return s;
            }
        }
    }

    /// A random site of district `d`.
    pub fn site_in(&self, rng: &mut impl Rng, d: usize) -> u32 {
        rng.gen_range(self.first_site[d]..self.first_site[d + 1])
    }
}
