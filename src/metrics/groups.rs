//! The series every group has: its current token's expiry, its next
//! rotation, its live tokens and its issuances by result, kept as one row
//! per group and written out at each scrape.
//!
//! Why not a `prometheus_client` family per metric, as the other metrics
//! are: each family keeps, per group, a hash-table entry, a label set and
//! an `Arc`'d atomic, about 450 bytes a group over these four, the largest
//! per-group cost of the daemon after the token itself. A row of plain
//! numbers under one shared label set is about a third of that.
//!
//! The text written is the families' own: the same names, help (with the
//! full stop the registry adds to a registered metric's), types and labels
//! (`channel`, `channel_name`, `group`, and `kind` or `result`), and a
//! family with no series is left out, as the registry leaves out an empty
//! family. The four are written after the registered metrics, as the
//! registry writes collectors last.

use std::collections::HashMap;
use std::sync::{Arc, PoisonError, RwLock};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeLabel as _, EncodeLabelSet, LabelSetEncoder, NoLabelSet,
};
use prometheus_client::metrics::MetricType;

use super::GroupLabelValues;
use crate::domain::TokenKind;

/// One group's numbers; `None` where the group has no such series.
#[derive(Debug, Default)]
struct Row {
    /// `live_tokens`: the group's kind and its live tokens.
    live: Option<(TokenKind, i64)>,
    /// `token_expiry_timestamp_seconds`.
    expiry: Option<f64>,
    /// `next_rotation_timestamp_seconds`.
    next_rotation: Option<f64>,
    /// `rotations_total{result="success"}`.
    issued: Option<u64>,
    /// `rotations_total{result="failure"}`.
    failed: Option<u64>,
}

impl Row {
    fn is_empty(&self) -> bool {
        self.live.is_none()
            && self.expiry.is_none()
            && self.next_rotation.is_none()
            && self.issued.is_none()
            && self.failed.is_none()
    }
}

/// Every group's row, keyed by its label values.
#[derive(Debug, Default)]
pub(super) struct GroupSeries {
    rows: RwLock<HashMap<Arc<GroupLabelValues>, Row>>,
}

impl GroupSeries {
    /// Sets the group's gauges after a pass: its kind and live tokens, and
    /// its expiry and next rotation where it has them.
    pub fn set(
        &self,
        labels: GroupLabelValues,
        kind: TokenKind,
        live: i64,
        expiry: Option<f64>,
        next_rotation: Option<f64>,
    ) {
        self.update(labels, |row| {
            row.live = Some((kind, live));
            row.expiry = expiry;
            row.next_rotation = next_rotation;
        });
    }

    /// Counts one issuance of the group, by result.
    pub fn count_rotation(&self, labels: GroupLabelValues, success: bool) {
        self.update(labels, |row| {
            let count = if success {
                &mut row.issued
            } else {
                &mut row.failed
            };
            *count = Some(count.unwrap_or(0).saturating_add(1));
        });
    }

    /// Drops a group's gauges (it left the config); its counters stay, as
    /// a counter's series does.
    pub fn remove_gauges(&self, labels: &GroupLabelValues) {
        let mut rows = self.rows.write().unwrap_or_else(PoisonError::into_inner);
        if let Some(row) = rows.get_mut(labels) {
            row.live = None;
            row.expiry = None;
            row.next_rotation = None;
            if row.is_empty() {
                rows.remove(labels);
            }
        }
    }

    /// Drops every series (a channel was renamed or removed).
    pub fn clear(&self) {
        self.rows
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
    }

    fn update(&self, labels: GroupLabelValues, change: impl FnOnce(&mut Row)) {
        let mut rows = self.rows.write().unwrap_or_else(PoisonError::into_inner);
        if let Some(row) = rows.get_mut(&labels) {
            change(row);
        } else {
            change(rows.entry(Arc::new(labels)).or_default());
        }
    }
}

/// A group's label values and one more label.
struct With<'a> {
    values: &'a GroupLabelValues,
    name: &'static str,
    value: &'static str,
}

impl EncodeLabelSet for With<'_> {
    fn encode(&self, encoder: &mut LabelSetEncoder<'_>) -> Result<(), std::fmt::Error> {
        self.values.encode(encoder)?;
        (self.name, self.value).encode(encoder.encode_label())
    }
}

impl Collector for GroupSeries {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let rows = self.rows.read().unwrap_or_else(PoisonError::into_inner);
        let gauge = |encoder: &mut DescriptorEncoder,
                     name: &str,
                     help: &str,
                     value: fn(&Row) -> Option<f64>|
         -> Result<(), std::fmt::Error> {
            if !rows.values().any(|row| value(row).is_some()) {
                return Ok(());
            }
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
            for (labels, row) in rows.iter() {
                if let Some(v) = value(row) {
                    family.encode_family(labels.as_ref())?.encode_gauge(&v)?;
                }
            }
            Ok(())
        };
        gauge(
            &mut encoder,
            "token_expiry_timestamp_seconds",
            "When the group's current token expires (Unix time).",
            |row| row.expiry,
        )?;
        gauge(
            &mut encoder,
            "next_rotation_timestamp_seconds",
            "When the group's next token is due to be issued (Unix time).",
            |row| row.next_rotation,
        )?;
        if rows.values().any(|row| row.live.is_some()) {
            let mut family = encoder.encode_descriptor(
                "live_tokens",
                "Live tokens linetokd issued for the group (at most 2), labelled with the group's kind.",
                None,
                MetricType::Gauge,
            )?;
            for (labels, row) in rows.iter() {
                if let Some((kind, live)) = row.live {
                    let labels = With {
                        values: labels,
                        name: "kind",
                        value: kind.as_str(),
                    };
                    family.encode_family(&labels)?.encode_gauge(&live)?;
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
            for (labels, row) in rows.iter() {
                for (result, count) in [("success", row.issued), ("failure", row.failed)] {
                    if let Some(count) = count {
                        let labels = With {
                            values: labels,
                            name: "result",
                            value: result,
                        };
                        family
                            .encode_family(&labels)?
                            .encode_counter::<NoLabelSet, _, u64>(&count, None)?;
                    }
                }
            }
        }
        Ok(())
    }
}
