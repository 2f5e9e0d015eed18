//! The series every group has: its current token's expiry, its next
//! rotation, its live tokens and its issuances by result, kept as one row
//! per group and written out at each scrape.
//!
//! Why not a `prometheus_client` family per metric, as the other metrics
//! are: each family keeps, per group, a hash-table entry, a label set and
//! an `Arc`'d atomic, about 450 bytes a group over these four, the largest
//! per-group cost of the daemon after the token itself. Here a group is
//! one table slot of 64 bytes: its two IDs (each a shared text, cloned by
//! reference count) and a row of 32 bytes of numbers. The `channel_name`
//! label is kept once per channel and looked up as the rows are written.
//!
//! The text written is the families' own: the same names, help (with the
//! full stop the registry adds to a registered metric's), types and labels
//! (`channel`, `channel_name`, `group`, and `kind` or `result`), and a
//! family with no series is left out, as the registry leaves out an empty
//! family. The four are written after the registered metrics, as the
//! registry writes collectors last.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, PoisonError, RwLock};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeLabel as _, EncodeLabelSet, LabelSetEncoder, NoLabelSet,
};
use prometheus_client::metrics::MetricType;

use crate::domain::{ChannelId, GroupName, TokenKind};

/// One group's numbers, 32 bytes: with its key (the two IDs, shared texts)
/// a table slot is 64 bytes. Where the group has no
/// such series: `None`, or NaN for the two timestamps.
#[derive(Debug, Clone, Copy)]
struct Row {
    /// `token_expiry_timestamp_seconds`.
    expiry: f64,
    /// `next_rotation_timestamp_seconds`.
    next_rotation: f64,
    /// `rotations_total{result="success"}`: absent until the first.
    issued: Option<NonZeroU32>,
    /// `rotations_total{result="failure"}`.
    failed: Option<NonZeroU32>,
    /// `live_tokens`: the group's kind and its live tokens.
    live: Option<(TokenKind, i32)>,
}

impl Default for Row {
    fn default() -> Self {
        Self {
            expiry: f64::NAN,
            next_rotation: f64::NAN,
            issued: None,
            failed: None,
            live: None,
        }
    }
}

impl Row {
    fn expiry(&self) -> Option<f64> {
        Some(self.expiry).filter(|v| !v.is_nan())
    }

    fn next_rotation(&self) -> Option<f64> {
        Some(self.next_rotation).filter(|v| !v.is_nan())
    }

    fn clear_gauges(&mut self) {
        self.live = None;
        self.expiry = f64::NAN;
        self.next_rotation = f64::NAN;
    }

    fn is_empty(&self) -> bool {
        self.live.is_none()
            && self.expiry().is_none()
            && self.next_rotation().is_none()
            && self.issued.is_none()
            && self.failed.is_none()
    }
}

/// Every group's row, keyed by its channel ID and name, and each
/// channel's `channel_name` label, which the rows share.
#[derive(Debug, Default)]
pub(super) struct GroupSeries {
    rows: RwLock<HashMap<(ChannelId, GroupName), Row>>,
    names: RwLock<HashMap<ChannelId, Arc<str>>>,
}

impl GroupSeries {
    /// Sets the group's gauges after a pass: its kind and live tokens, and
    /// its expiry and next rotation where it has them.
    pub fn set(
        &self,
        channel: &ChannelId,
        group: &GroupName,
        kind: TokenKind,
        live: usize,
        expiry: Option<f64>,
        next_rotation: Option<f64>,
    ) {
        self.update(channel, group, |row| {
            row.live = Some((kind, i32::try_from(live).unwrap_or(i32::MAX)));
            row.expiry = expiry.unwrap_or(f64::NAN);
            row.next_rotation = next_rotation.unwrap_or(f64::NAN);
        });
    }

    /// Counts one issuance of the group, by result.
    pub fn count_rotation(&self, channel: &ChannelId, group: &GroupName, success: bool) {
        self.update(channel, group, |row| {
            let count = if success {
                &mut row.issued
            } else {
                &mut row.failed
            };
            *count = Some(count.map_or(NonZeroU32::MIN, |n| n.saturating_add(1)));
        });
    }

    /// Drops a group's gauges (it left the config); its counters stay, as
    /// a counter's series does.
    pub fn remove_gauges(&self, channel: &ChannelId, group: &GroupName) {
        let mut rows = self.rows.write().unwrap_or_else(PoisonError::into_inner);
        let key = (channel.clone(), group.clone());
        if let Some(row) = rows.get_mut(&key) {
            row.clear_gauges();
            if row.is_empty() {
                rows.remove(&key);
            }
        }
    }

    /// Takes the channels' names and, with `clear` (a channel was renamed
    /// or removed), drops every series. Both at once: no scrape sees rows
    /// of one naming under the other's names.
    pub fn reset(&self, names: HashMap<ChannelId, Arc<str>>, clear: bool) {
        let mut rows = self.rows.write().unwrap_or_else(PoisonError::into_inner);
        let mut known = self.names.write().unwrap_or_else(PoisonError::into_inner);
        if clear {
            rows.clear();
        }
        *known = names;
    }

    fn update(&self, channel: &ChannelId, group: &GroupName, change: impl FnOnce(&mut Row)) {
        let mut rows = self.rows.write().unwrap_or_else(PoisonError::into_inner);
        change(rows.entry((channel.clone(), group.clone())).or_default());
    }
}

/// A row's labels: `channel`, `channel_name`, `group`, and one more.
struct RowLabels<'a> {
    channel: &'a str,
    channel_name: &'a str,
    group: &'a str,
    extra: Option<(&'static str, &'static str)>,
}

impl<'a> RowLabels<'a> {
    /// The labels of the row at `key`. A channel without a name (not in
    /// the config any more) gets an empty one, as in the other families.
    fn of(
        names: &'a HashMap<ChannelId, Arc<str>>,
        (channel, group): &'a (ChannelId, GroupName),
        extra: Option<(&'static str, &'static str)>,
    ) -> Self {
        Self {
            channel: channel.as_str(),
            channel_name: names.get(channel).map_or("", |name| name),
            group: group.as_str(),
            extra,
        }
    }
}

impl EncodeLabelSet for RowLabels<'_> {
    fn encode(&self, encoder: &mut LabelSetEncoder<'_>) -> Result<(), std::fmt::Error> {
        ("channel", self.channel).encode(encoder.encode_label())?;
        ("channel_name", self.channel_name).encode(encoder.encode_label())?;
        ("group", self.group).encode(encoder.encode_label())?;
        if let Some(extra) = self.extra {
            extra.encode(encoder.encode_label())?;
        }
        Ok(())
    }
}

impl Collector for GroupSeries {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let rows = self.rows.read().unwrap_or_else(PoisonError::into_inner);
        let names = self.names.read().unwrap_or_else(PoisonError::into_inner);
        let labels = |key, extra| RowLabels::of(&names, key, extra);
        let gauge = |encoder: &mut DescriptorEncoder,
                     name: &str,
                     help: &str,
                     value: fn(&Row) -> Option<f64>|
         -> Result<(), std::fmt::Error> {
            if !rows.values().any(|row| value(row).is_some()) {
                return Ok(());
            }
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
            for (key, row) in rows.iter() {
                if let Some(v) = value(row) {
                    family.encode_family(&labels(key, None))?.encode_gauge(&v)?;
                }
            }
            Ok(())
        };
        gauge(
            &mut encoder,
            "token_expiry_timestamp_seconds",
            "When the group's current token expires (Unix time).",
            Row::expiry,
        )?;
        gauge(
            &mut encoder,
            "next_rotation_timestamp_seconds",
            "When the group's next token is due to be issued (Unix time).",
            Row::next_rotation,
        )?;
        if rows.values().any(|row| row.live.is_some()) {
            let mut family = encoder.encode_descriptor(
                "live_tokens",
                "Live tokens linetokd issued for the group (at most 2), labelled with the group's kind.",
                None,
                MetricType::Gauge,
            )?;
            for (key, row) in rows.iter() {
                if let Some((kind, live)) = row.live {
                    family
                        .encode_family(&labels(key, Some(("kind", kind.as_str()))))?
                        .encode_gauge(&i64::from(live))?;
                }
            }
        }
        if rows
            .values()
            .any(|row| row.issued.is_some() || row.failed.is_some())
        {
            let mut family = encoder.encode_descriptor(
                "rotations",
                "Token issuances by result.",
                None,
                MetricType::Counter,
            )?;
            for (key, row) in rows.iter() {
                for (result, count) in [("success", row.issued), ("failure", row.failed)] {
                    if let Some(count) = count {
                        family
                            .encode_family(&labels(key, Some(("result", result))))?
                            .encode_counter::<NoLabelSet, _, u64>(&u64::from(count.get()), None)?;
                    }
                }
            }
        }
        Ok(())
    }
}
