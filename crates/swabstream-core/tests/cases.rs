//! Data-driven cases: each `tests/cases/*.case` file holds cases whose input
//! events stand beside the outcome each must have and the views they must
//! produce. The harness runs every case three ways — in one go, with a
//! snapshot-and-restore after every record, and with the changed rows written
//! to a model store after every record — and all three must give the expected
//! views.
//!
//! Format (line-based):
//! - `## name` starts a case; `#` lines are comments.
//! - `@day YYYY-MM-DD` sets the day that `"@HH:MM:SS"` strings expand into
//!   (`YYYY-MM-DDTHH:MM:SS+08:00`); `@ts ...` sets the Kafka timestamp of the
//!   records that follow (`@ts @HH:MM:SS` expands the same way).
//! - `{json} => outcome` is one record, its value the Avro form of the JSON
//!   event; `"person_ref":"@alice"` stands for a 64-hex pseudonym made from
//!   the name. `!raw <hex or text> => outcome` is a record with those raw bytes.
//!   Outcomes: `accepted`, `duplicate`, `rejected REASON`.
//! - A JSON record's key is its `person_ref` in hex (a raw record has none),
//!   unless the line starts with `!key=SPEC`: `none`, `upper` (the hex in
//!   uppercase) or `@name` (another person's pseudonym).
//! - `@placement P/N` makes the partition partition P of N (SPEC §3.1 then
//!   checks each record's key and partition); `@placement none` undoes it.
//!   The pseudonym of `@name` lands in these partitions by murmur2: `@a` 0 of
//!   4 and 0 of 8, `@alice` 2 and 2, `@bob` 1 and 1, `@carol` 3 and 7, `@dave`
//!   3 and 3, `@grace` 2 and 6.
//! - `== views` then one line per row, all rows the case must produce, in any
//!   order (`percent_using_code` is derived and left out).

use std::collections::BTreeMap;

use swabstream_core::{CoreConfig, DlqRecord, Outcome, PartitionState, Placement, Record};
use swabstream_events::avro::Codec;
use swabstream_events::{Reason, Timestamp, json};
use swabstream_views::{ViewRow, ViewSet};

struct Case {
    name: String,
    file: String,
    records: Vec<Rec>,
    expected: Vec<String>,
}

struct Rec {
    ts: Timestamp,
    key: Option<Vec<u8>>,
    payload: Vec<u8>,
    placement: Option<Placement>,
    outcome: Outcome,
    line: usize,
}

fn expand(text: &str, day: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(i) = rest.find("\"@") {
        out.push_str(&rest[..i + 1]);
        let after = &rest[i + 2..];
        let end = after.find('"').expect("unterminated string");
        let token = &after[..end];
        if token.len() == 8 && token.as_bytes()[2] == b':' {
            out.push_str(&format!("{day}T{token}+08:00"));
        } else {
            // A person's name: its bytes in hex, left-padded to 64 hex digits.
            let hex: String = token.bytes().map(|b| format!("{b:02x}")).collect();
            out.push_str(&format!("{hex:0>64}"));
        }
        rest = &after[end..];
    }
    out.push_str(rest);
    out
}

fn parse_outcome(s: &str) -> Outcome {
    let s = s.trim();
    match s {
        "accepted" => Outcome::Accepted,
        "duplicate" => Outcome::Duplicate,
        _ => {
            let reason = s.strip_prefix("rejected ").unwrap_or_else(|| panic!("bad outcome `{s}`"));
            Outcome::Rejected(
                Reason::from_str(reason.trim()).unwrap_or_else(|| panic!("bad reason `{reason}`")),
            )
        }
    }
}

fn load_cases() -> Vec<Case> {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/cases");
    let mut files: Vec<_> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    let codec = Codec::shared();
    let mut cases = Vec::new();
    for path in files {
        let text = std::fs::read_to_string(&path).unwrap();
        let file = path.file_name().unwrap().to_string_lossy().to_string();
        let mut day = String::from("2022-04-09");
        let mut ts = Timestamp::parse_rfc3339("2022-04-10T12:00:00+08:00").unwrap();
        let mut in_views = false;
        let mut placement = None;
        for (n, line) in text.lines().enumerate() {
            let n = n + 1;
            let line = line.trim();
            if let Some(name) = line.strip_prefix("## ") {
                cases.push(Case {
                    name: name.to_owned(),
                    file: file.clone(),
                    records: vec![],
                    expected: vec![],
                });
                in_views = false;
                placement = None;
                continue;
            }
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let case = cases
                .last_mut()
                .unwrap_or_else(|| panic!("{file}:{n}: text before the first case"));
            if line == "== views" {
                in_views = true;
            } else if in_views {
                case.expected.push(line.split_whitespace().collect::<Vec<_>>().join(" "));
            } else if let Some(d) = line.strip_prefix("@day ") {
                day = d.trim().to_owned();
            } else if let Some(p) = line.strip_prefix("@placement ") {
                placement =
                    match p.trim() {
                        "none" => None,
                        p => {
                            let (part, count) = p.split_once('/').expect("@placement P/N");
                            let p = Placement::new(part.parse().unwrap(), count.parse().unwrap());
                            Some(p.unwrap_or_else(|| {
                                panic!("{file}:{n}: a partition outside its topic")
                            }))
                        }
                    };
            } else if let Some(t) = line.strip_prefix("@ts ") {
                let t = expand(&format!("\"{}\"", t.trim()), &day);
                ts = Timestamp::parse_rfc3339(t.trim_matches('"'))
                    .unwrap_or_else(|e| panic!("{file}:{n}: {e}"));
            } else {
                let (input, outcome) =
                    line.rsplit_once("=>").unwrap_or_else(|| panic!("{file}:{n}: no `=> outcome`"));
                let outcome = parse_outcome(outcome);
                let mut input = input.trim();
                let mut key_spec = None;
                if let Some(rest) = input.strip_prefix("!key=") {
                    let (spec, rest) = rest.split_once(' ').expect("!key=SPEC then the record");
                    key_spec = Some(spec);
                    input = rest.trim();
                }
                let (payload, own_key) = if let Some(raw) = input.strip_prefix("!raw ") {
                    let raw = raw.trim();
                    (hex_or_text(raw), None)
                } else {
                    let event = json::parse_event(&expand(input, &day))
                        .unwrap_or_else(|e| panic!("{file}:{n}: {e}"));
                    let mut buf = Vec::new();
                    codec.encode(&event, &mut buf);
                    (buf, Some(event.person_ref.to_hex()))
                };
                let key = match key_spec {
                    None => own_key,
                    Some("none") => None,
                    Some("upper") => own_key.map(|k| k.to_uppercase()),
                    Some(name) if name.starts_with('@') => {
                        Some(expand(&format!("\"{name}\""), &day).trim_matches('"').to_owned())
                    }
                    Some(other) => panic!("{file}:{n}: bad key `{other}`"),
                };
                case.records.push(Rec {
                    ts,
                    key: key.map(String::into_bytes),
                    payload,
                    placement,
                    outcome,
                    line: n,
                });
            }
        }
    }
    cases
}

fn hex_or_text(raw: &str) -> Vec<u8> {
    match raw.strip_prefix("hex:") {
        Some(h) => {
            let h: String = h.split_whitespace().collect();
            (0..h.len()).step_by(2).map(|i| u8::from_str_radix(&h[i..i + 2], 16).unwrap()).collect()
        }
        None => raw.as_bytes().to_vec(),
    }
}

fn render(views: &ViewSet) -> Vec<String> {
    let mut out = Vec::new();
    for r in &views.city_daily {
        out.push(format!(
            "city_daily {} people_sampled={} using_code={} valid_scans={} rescans={} rejected={} duplicates={}",
            r.day, r.people_sampled, r.using_code, r.valid_scans, r.rescans, r.rejected, r.duplicates
        ));
    }
    for r in &views.district_daily {
        out.push(format!(
            "district_daily {} {} people_sampled={} using_code={} valid_scans={} rejected={}",
            r.day, r.district, r.people_sampled, r.using_code, r.valid_scans, r.rejected
        ));
    }
    for r in &views.site_hourly {
        out.push(format!(
            "site_hourly {} {} {} people_sampled={} valid_scans={}",
            r.day, r.site_id, r.hour, r.people_sampled, r.valid_scans
        ));
    }
    for r in &views.method_daily {
        out.push(format!(
            "method_daily {} {} people_sampled={}",
            r.day, r.method, r.people_sampled
        ));
    }
    for r in &views.rejections_daily {
        out.push(format!("rejections_daily {} {} count={}", r.day, r.reason, r.count));
    }
    for r in &views.codes_issued_daily {
        out.push(format!(
            "codes_issued_daily {} {} {} count={}",
            r.day, r.kind, r.channel, r.count
        ));
    }
    out
}

/// A model of a view store: the latest absolute value written for each row key.
fn store_key(row: &ViewRow) -> String {
    let mut v = serde_json::to_value(row).unwrap();
    let obj = v.as_object_mut().unwrap();
    for counter in [
        "people_sampled",
        "using_code",
        "percent_using_code",
        "valid_scans",
        "rescans",
        "rejected",
        "duplicates",
        "count",
    ] {
        obj.remove(counter);
    }
    serde_json::to_string(obj).unwrap()
}

#[test]
fn every_case_gives_its_outcomes_and_views() {
    let cases = load_cases();
    assert!(cases.len() >= 30, "only {} cases were found", cases.len());
    let mut failures = Vec::new();
    for case in &cases {
        let mut whole = PartitionState::new(CoreConfig::default());
        let mut stepped = PartitionState::new(CoreConfig::default());
        let mut store: BTreeMap<String, ViewRow> = BTreeMap::new();
        for (i, rec) in case.records.iter().enumerate() {
            let Rec { ts, key, payload, placement, outcome: expected, line } = rec;
            let record = Record {
                offset: i as i64 * 3 + 7,
                timestamp: *ts,
                key: key.as_deref(),
                payload: Some(payload),
            };
            whole.set_placement(*placement);
            let mut dlq: Vec<DlqRecord> = Vec::new();
            let got = whole.apply(record, &mut dlq);
            if got != *expected {
                failures.push(format!(
                    "{} line {line} ({}): expected {expected:?}, got {got:?}",
                    case.file, case.name
                ));
            }
            match got {
                Outcome::Rejected(reason) => {
                    assert_eq!(dlq.len(), 1);
                    assert_eq!(dlq[0].reason, reason);
                    assert_eq!(&dlq[0].payload, payload, "the DLQ holds the original bytes");
                    assert_eq!(dlq[0].offset, record.offset);
                    assert_eq!(
                        matches!(reason, Reason::Malformed | Reason::WrongPartition),
                        !dlq[0].detail.is_empty()
                    );
                    if let Some(k) = key.as_deref().filter(|k| !k.is_empty()) {
                        let k = String::from_utf8_lossy(k).to_lowercase();
                        assert!(!dlq[0].detail.to_lowercase().contains(&k), "a key in the detail");
                    }
                }
                _ => assert!(dlq.is_empty()),
            }
            // The same record through a state restored from a snapshot taken just before it.
            // The placement is the owner's fact, not state: it is set again.
            stepped = PartitionState::restore(&stepped.snapshot(), CoreConfig::default()).unwrap();
            assert_eq!(stepped.placement(), None, "a placement in the snapshot");
            stepped.set_placement(*placement);
            assert_eq!(
                stepped.apply(record, &mut Vec::new()),
                got,
                "{}: restored state differs",
                case.name
            );
            for row in stepped.take_changes() {
                store.insert(store_key(&row), row);
            }
            // Re-delivering the record changes nothing.
            assert_eq!(whole.apply(record, &mut Vec::new()), Outcome::Skipped);
        }
        let views = whole.views();
        let mut got = render(&views);
        got.sort();
        let mut expected = case.expected.clone();
        expected.sort();
        if got != expected {
            failures.push(format!(
                "{} ({}): views differ\n  expected:\n    {}\n  got:\n    {}",
                case.file,
                case.name,
                case.expected.join("\n    "),
                got.join("\n    ")
            ));
        }
        assert_eq!(
            stepped.views(),
            views,
            "{}: snapshot/restore at every record changed the views",
            case.name
        );
        assert_eq!(
            ViewSet::from_rows(store.into_values()),
            views,
            "{}: rows written per record differ",
            case.name
        );
    }
    assert!(failures.is_empty(), "{} failures:\n{}", failures.len(), failures.join("\n"));
}
