//! Synthetic national ID numbers (GB 11643: 6-digit area code, birth date
//! `YYYYMMDD`, 3-digit sequence, ISO 7064 MOD 11-2 check character), and a
//! detector for ID-number-shaped text, so that tests (here and elsewhere) can
//! show that no raw number leaks into events, views or logs.

use std::collections::HashSet;
use std::ops::RangeInclusive;

use rand::Rng;
use swabstream_events::DISTRICTS;

/// Area codes of people born outside the city (the city has many migrants):
/// Nanjing Xuanwu, Kunshan, Hangzhou Xihu, Hefei Yaohai, Xiamen Siming,
/// Nanchang Donghu, Jinan Lixia, Zhengzhou Jinshui, Wuhan Wuchang,
/// Changsha Furong, Chengdu Wuhou, Shijiazhuang Chang'an.
const OTHER_AREAS: [u64; 12] = [
    320102, 320583, 330106, 340104, 350203, 360102, 370102, 410105, 420106, 430102, 510107, 130102,
];

/// The first two digits (province) of every area code in use.
const PROVINCES: [u8; 34] = [
    11, 12, 13, 14, 15, 21, 22, 23, 31, 32, 33, 34, 35, 36, 37, 41, 42, 43, 44, 45, 46, 50, 51, 52,
    53, 54, 61, 62, 63, 64, 65, 71, 81, 82,
];

const WEIGHTS: [u32; 17] = [7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2];
const CHECK_CHARS: &[u8; 11] = b"10X98765432";

/// The check character of the first 17 digits (ASCII), or `None` if any is not a digit.
pub fn check_char(first17: &[u8]) -> Option<u8> {
    if first17.len() != 17 || !first17.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let sum: u32 = first17.iter().zip(WEIGHTS).map(|(d, w)| u32::from(d - b'0') * w).sum();
    Some(CHECK_CHARS[(sum % 11) as usize])
}

/// Whether `s` is shaped like a national ID number: 18 characters, a known
/// province, a plausible birth date (1900–2099) and a correct check character.
pub fn is_id_number(s: &str) -> bool {
    is_id_bytes(s.as_bytes())
}

fn is_id_bytes(b: &[u8]) -> bool {
    if b.len() != 18 || !b[..17].iter().all(u8::is_ascii_digit) {
        return false;
    }
    let num = |r: std::ops::Range<usize>| -> u32 {
        b[r].iter().fold(0, |acc, d| acc * 10 + u32::from(d - b'0'))
    };
    if !PROVINCES.contains(&(num(0..2) as u8)) {
        return false;
    }
    let (y, m, d) = (num(6..10), num(10..12), num(12..14));
    if !(1900..=2099).contains(&y) || swabstream_events::Day::from_civil(y as i32, m, d).is_none() {
        return false;
    }
    check_char(&b[..17]) == Some(b[17].to_ascii_uppercase())
}

/// The first ID-number-shaped run of 18 characters anywhere in `text` (also
/// inside longer runs of digits or hex), if any.
pub fn find_id_number(text: &str) -> Option<&str> {
    let b = text.as_bytes();
    (0..b.len().saturating_sub(17)).find(|&i| is_id_bytes(&b[i..i + 18])).map(|i| &text[i..i + 18])
}

/// Makes distinct ID numbers. Two persons never share a number, so never a
/// pseudonym: the simulator's persons are exactly the pipeline's persons.
#[derive(Debug, Default)]
pub(crate) struct IdMaker {
    used: HashSet<u64>,
}

impl IdMaker {
    /// A fresh number for someone living in district `home` (index into
    /// `DISTRICTS`), born in one of `years`.
    pub(crate) fn make(
        &mut self,
        rng: &mut impl Rng,
        home: usize,
        years: RangeInclusive<u32>,
    ) -> String {
        loop {
            let area: u64 = if rng.gen_bool(0.85) {
                DISTRICTS[home].0.parse().expect("district codes are digits")
            } else {
                OTHER_AREAS[rng.gen_range(0..OTHER_AREAS.len())]
            };
            let y = u64::from(rng.gen_range(years.clone()));
            let m = rng.gen_range(1..=12u64);
            let d = rng.gen_range(1..=28u64);
            let seq = rng.gen_range(0..1000u64);
            let n17 = area * 100_000_000_000 + (y * 10_000 + m * 100 + d) * 1000 + seq;
            if self.used.insert(n17) {
                let mut s = format!("{n17:017}");
                let c = check_char(s.as_bytes()).expect("17 digits");
                s.push(char::from(c));
                return s;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn check_characters_match_the_standard_examples() {
        // The worked examples of GB 11643-1999.
        assert!(is_id_number("11010519491231002X"));
        assert!(is_id_number("11010519491231002x"));
        assert!(!is_id_number("440524188001010014")); // born 1880: out of range here
        assert_eq!(check_char(b"44052418800101001"), Some(b'4'));
        assert!(!is_id_number("110105194912310021"));
        assert!(!is_id_number("11010519491331002X")); // month 13
        assert!(!is_id_number("99010519491231002X")); // no province 99
    }

    #[test]
    fn made_numbers_are_distinct_and_shaped() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        let mut maker = IdMaker::default();
        let mut seen = HashSet::new();
        for i in 0..20_000 {
            let id = maker.make(&mut rng, i % 16, 1930..=2020);
            assert!(is_id_number(&id), "{id}");
            assert!(seen.insert(id));
        }
    }

    #[test]
    fn finds_numbers_inside_text() {
        assert_eq!(find_id_number(r#"{"x":"ab11010519491231002Xcd"}"#), Some("11010519491231002X"));
        assert_eq!(find_id_number("no number here 1234567890"), None);
        assert_eq!(find_id_number(""), None);
    }
}
