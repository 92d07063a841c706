//! Reading a topic back, for operators: from a start to the end it had when
//! the read began (or on, following it), by assignment with no consumer group,
//! so that reading commits nothing and disturbs no worker. And what a DLQ
//! record says: the headers the worker writes (`reason`, `source_partition`,
//! `source_offset`, `detail`, ...) beside the original bytes.

use std::collections::BTreeMap;
use std::ops::ControlFlow;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Headers, Message};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};
use swabstream_events::Reason;

use crate::{Cluster, Quiet, Role, drop_in_background};

/// One record as read back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub partition: i32,
    pub offset: i64,
    /// The record's Kafka timestamp (ms since the Unix epoch), when it has one.
    pub timestamp_ms: Option<i64>,
    pub key: Option<Vec<u8>>,
    pub payload: Vec<u8>,
    pub headers: Vec<(String, Vec<u8>)>,
}

impl Record {
    /// A header's value as text (lossy), if the record has it.
    pub fn header(&self, key: &str) -> Option<String> {
        self.headers
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
    }
}

/// Where a read starts, in every partition read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Start {
    Beginning,
    /// The end: only records written after the read began (with `follow`).
    End,
    /// This offset, clamped to what the partition holds.
    Offset(i64),
    /// The last `n` records of each partition.
    Last(i64),
    /// The first record at or after this time (ms since the Unix epoch).
    Time(i64),
}

/// A partition's offsets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Watermarks {
    pub partition: i32,
    /// The oldest offset still held.
    pub low: i64,
    /// The log end: the offset the next record will get.
    pub high: i64,
}

/// Every partition's low and high watermarks, in partition order.
pub fn watermarks(cluster: &Cluster, topic: &str) -> anyhow::Result<Vec<Watermarks>> {
    let partitions = crate::partition_count(cluster, topic)?;
    let consumer = reader(cluster)?;
    let mut out = Vec::with_capacity(partitions as usize);
    for p in 0..partitions {
        let (low, high) = consumer
            .fetch_watermarks(topic, p, Duration::from_secs(30))
            .with_context(|| format!("reading the offsets of `{topic}` partition {p}"))?;
        out.push(Watermarks { partition: p, low, high });
    }
    drop_in_background(consumer);
    Ok(out)
}

fn reader(cluster: &Cluster) -> anyhow::Result<BaseConsumer<Quiet>> {
    // librdkafka wants a group id even for an assigned consumer; it never
    // joins the group nor commits to it.
    Ok(cluster
        .config(
            Role::Consumer,
            &[
                ("group.id", "swabstream-reader"),
                ("enable.auto.commit", "false"),
                ("enable.auto.offset.store", "false"),
                ("enable.partition.eof", "true"),
                ("auto.offset.reset", "earliest"),
            ],
        )
        .create_with_context(Quiet)?)
}

/// What a read is asked to do.
#[derive(Clone, Debug)]
pub struct Read<'a> {
    pub topic: &'a str,
    /// Partitions to read (default: all of them).
    pub partitions: Option<Vec<i32>>,
    pub start: Start,
    /// Keep reading past the end the topic had when the read began.
    pub follow: bool,
}

/// Reads `read.topic`, handing each record to `each` (which may stop the
/// read with `Break`), until every partition reached the end it had when the
/// read began (unless following), or `stop` is set. `progress` is told the
/// records read and the total there were to read at the start. Returns the
/// records read.
pub fn read(
    cluster: &Cluster,
    read: &Read<'_>,
    stop: &AtomicBool,
    progress: &mut dyn FnMut(u64, u64),
    each: &mut dyn FnMut(Record) -> ControlFlow<()>,
) -> anyhow::Result<u64> {
    let topic = read.topic;
    let count = crate::partition_count(cluster, topic)?;
    let partitions: Vec<i32> = match &read.partitions {
        Some(ps) => {
            for &p in ps {
                anyhow::ensure!(
                    (0..count).contains(&p),
                    "`{topic}` has partitions 0 to {}; there is no partition {p}",
                    count - 1
                );
            }
            ps.clone()
        }
        None => (0..count).collect(),
    };
    let consumer = reader(cluster)?;
    let mut tpl = TopicPartitionList::new();
    let mut ends = BTreeMap::new();
    let mut begins = BTreeMap::new();
    for &p in &partitions {
        let (low, high) = consumer
            .fetch_watermarks(topic, p, Duration::from_secs(30))
            .with_context(|| format!("reading the offsets of `{topic}` partition {p}"))?;
        ends.insert(p, high);
        let begin = match read.start {
            Start::Beginning => low,
            Start::End => high,
            Start::Offset(o) => o.clamp(low, high),
            Start::Last(n) => (high - n.max(0)).max(low),
            Start::Time(ms) => ms,
        };
        begins.insert(p, begin);
        tpl.add_partition_offset(topic, p, Offset::Offset(begin))?;
    }
    if let Start::Time(_) = read.start {
        tpl = consumer.offsets_for_times(tpl, Duration::from_secs(30))?;
        for &p in &partitions {
            let begin = match tpl.find_partition(topic, p).map(|e| e.offset()) {
                Some(Offset::Offset(o)) => o,
                // No record at or after that time.
                _ => ends[&p],
            };
            begins.insert(p, begin);
            tpl.set_partition_offset(topic, p, Offset::Offset(begin))?;
        }
    }
    let total: u64 = partitions.iter().map(|p| (ends[p] - begins[p]).max(0) as u64).sum();
    // Positions: the next offset expected in each partition still to finish.
    let mut open: BTreeMap<i32, i64> =
        partitions.iter().filter(|p| begins[p] < ends[p]).map(|&p| (p, begins[&p])).collect();
    consumer.assign(&tpl)?;
    let mut done = 0u64;
    progress(0, total);
    let result = loop {
        if stop.load(Ordering::Relaxed) || (!read.follow && open.is_empty()) {
            break Ok(());
        }
        match consumer.poll(Duration::from_millis(200)) {
            None => {}
            Some(Ok(m)) => {
                let p = m.partition();
                let record = Record {
                    partition: p,
                    offset: m.offset(),
                    timestamp_ms: m.timestamp().to_millis(),
                    key: m.key().map(<[u8]>::to_vec),
                    payload: m.payload().unwrap_or_default().to_vec(),
                    headers: m
                        .headers()
                        .map(|h| {
                            h.iter()
                                .map(|h| (h.key.to_owned(), h.value.unwrap_or_default().to_vec()))
                                .collect()
                        })
                        .unwrap_or_default(),
                };
                if let Some(next) = open.get_mut(&p) {
                    *next = m.offset() + 1;
                    if *next >= ends[&p] {
                        open.remove(&p);
                    }
                }
                done += 1;
                progress(done.min(total), total);
                if each(record).is_break() {
                    break Ok(());
                }
            }
            Some(Err(KafkaError::PartitionEOF(p))) => {
                // The partition's end: nothing more below the end recorded at
                // the start (gaps of a compacted topic end here too).
                open.remove(&p);
            }
            Some(Err(e)) => {
                if let KafkaError::MessageConsumption(RDKafkaErrorCode::UnknownTopicOrPartition) = e
                {
                    break Err(anyhow::anyhow!("topic `{topic}` is gone: {e}"));
                }
                if crate::throttled("dlq-read") {
                    tracing::warn!("reading `{topic}`: {e}");
                }
            }
        }
    };
    drop_in_background(consumer);
    result.map(|()| done)
}

/// A DLQ record: why the worker rejected it and where it came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DlqEntry {
    pub record: Record,
    /// The `reason` header as written (a reason this build may not know).
    pub reason: String,
    /// The source record's partition and offset in the events topic.
    pub source_partition: Option<i32>,
    pub source_offset: Option<i64>,
    /// What is wrong with a `MALFORMED` record.
    pub detail: Option<String>,
}

impl DlqEntry {
    pub fn from_record(record: Record) -> DlqEntry {
        DlqEntry {
            reason: record.header("reason").unwrap_or_default(),
            source_partition: record.header("source_partition").and_then(|v| v.parse().ok()),
            source_offset: record.header("source_offset").and_then(|v| v.parse().ok()),
            detail: record.header("detail").filter(|d| !d.is_empty()),
            record,
        }
    }

    /// The reason, when this build knows it.
    pub fn known_reason(&self) -> Option<Reason> {
        Reason::from_str(&self.reason)
    }

    /// Where the rejected record sits in the events topic: what identifies a
    /// DLQ record, whichever copy of it at-least-once delivery wrote.
    pub fn source(&self) -> Option<(i32, i64)> {
        Some((self.source_partition?, self.source_offset?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dlq_entry_reads_the_workers_headers() {
        let r = Record {
            partition: 1,
            offset: 7,
            timestamp_ms: Some(1),
            key: None,
            payload: b"x".to_vec(),
            headers: vec![
                ("reason".into(), b"CODE_UNKNOWN".to_vec()),
                ("source_partition".into(), b"2".to_vec()),
                ("source_offset".into(), b"41".to_vec()),
            ],
        };
        let e = DlqEntry::from_record(r);
        assert_eq!(e.known_reason(), Some(Reason::CodeUnknown));
        assert_eq!(e.source(), Some((2, 41)));
        assert_eq!(e.detail, None);
        let bare = DlqEntry::from_record(Record { headers: vec![], ..e.record.clone() });
        assert_eq!((bare.source(), bare.known_reason()), (None, None));
    }
}
