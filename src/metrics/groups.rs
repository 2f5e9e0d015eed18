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
//!
//! They are written a page of groups at a time ([`Pages`]), for the
//! streamed `/metrics` page ([`super::exposition`]): at 100,000 groups the
//! four families are about 45 MB of text, which a page built whole held
//! in memory for each scrape.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, PoisonError, RwLock};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::text::encode_registry;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeLabel as _, EncodeLabelSet, LabelSetEncoder, NoLabelSet,
};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

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
    /// or removed), drops every series. Both at once: no page of a scrape
    /// sees rows of one naming under the other's names (a scrape written
    /// across the change may show the old naming in its early pages and
    /// the new one after).
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

/// The four families, in the order they are written.
#[derive(Debug, Clone, Copy)]
enum Family {
    Expiry,
    NextRotation,
    LiveTokens,
    Rotations,
}

impl Family {
    const ALL: [Self; 4] = [
        Self::Expiry,
        Self::NextRotation,
        Self::LiveTokens,
        Self::Rotations,
    ];
}

/// Groups written per page: about 110 KB of text for the largest family.
/// Each page is written in one go under the tables' read locks, so the
/// rotator waits for at most one page, never for a whole scrape.
const PAGE: usize = 1_000;

/// Where a paged exposition of the group series is: the groups as they
/// were when it began (their rows are read page by page, as they are
/// then), and the family and page next written.
#[derive(Debug)]
pub(super) struct Pages {
    keys: Arc<[(ChannelId, GroupName)]>,
    /// Groups a page ([`PAGE`]; smaller in tests).
    size: usize,
    /// The index in [`Family::ALL`] of the family being written.
    family: usize,
    next: usize,
    /// The family's `# HELP`/`# TYPE` lines were written (with its first
    /// page that had a series); a family with none is left out, as the
    /// registry leaves out an empty family.
    started: bool,
}

impl GroupSeries {
    /// Starts a paged exposition of every group's series.
    pub(super) fn pages(&self) -> Pages {
        self.pages_of(PAGE)
    }

    fn pages_of(&self, size: usize) -> Pages {
        let rows = self.rows.read().unwrap_or_else(PoisonError::into_inner);
        Pages {
            keys: rows.keys().cloned().collect(),
            size: size.max(1),
            family: 0,
            next: 0,
            started: false,
        }
    }

    /// Appends the next page of `pages` to `out` (nothing for a page whose
    /// groups have no series in its family); `false` once every family is
    /// written.
    pub(super) fn write_page(self: &Arc<Self>, pages: &mut Pages, out: &mut String) -> bool {
        let Some(&family) = Family::ALL.get(pages.family) else {
            return false;
        };
        let end = pages.next.saturating_add(pages.size).min(pages.keys.len());
        // The text encoder is prometheus_client's own, run on a registry
        // of one collector holding this page: names, help, types and the
        // escaping of label values are the registry's. Every sample is one
        // line that starts with the metric's name, so a later page's copy
        // of the family's `# ` lines is dropped line by line.
        let mut registry = Registry::with_prefix(super::PREFIX);
        registry.register_collector(Box::new(Page {
            series: Arc::clone(self),
            family,
            keys: Arc::clone(&pages.keys),
            range: (pages.next, end),
        }));
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = encode_registry(&mut text, &registry);
        if !pages.started {
            pages.started = text.lines().any(|line| !line.starts_with("# "));
            if pages.started {
                out.push_str(&text);
            }
        } else {
            for line in text.lines().filter(|line| !line.starts_with("# ")) {
                out.push_str(line);
                out.push('\n');
            }
        }
        pages.next = end;
        if pages.next >= pages.keys.len() {
            pages.family += 1;
            pages.next = 0;
            pages.started = false;
        }
        true
    }
}

/// One page of one family, as a collector of its own.
#[derive(Debug)]
struct Page {
    series: Arc<GroupSeries>,
    family: Family,
    keys: Arc<[(ChannelId, GroupName)]>,
    range: (usize, usize),
}

impl Collector for Page {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let rows = self
            .series
            .rows
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        let names = self
            .series
            .names
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        let labels = |key, extra| RowLabels::of(&names, key, extra);
        // The page's groups that still have a row (a group removed since
        // the exposition began has none).
        let page: Vec<(&(ChannelId, GroupName), &Row)> = self.keys[self.range.0..self.range.1]
            .iter()
            .filter_map(|key| rows.get(key).map(|row| (key, row)))
            .collect();
        let gauge = |encoder: &mut DescriptorEncoder,
                     name: &str,
                     help: &str,
                     value: fn(&Row) -> Option<f64>|
         -> Result<(), std::fmt::Error> {
            if !page.iter().any(|(_, row)| value(row).is_some()) {
                return Ok(());
            }
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
            for (key, row) in &page {
                if let Some(v) = value(row) {
                    family.encode_family(&labels(key, None))?.encode_gauge(&v)?;
                }
            }
            Ok(())
        };
        match self.family {
            Family::Expiry => gauge(
                &mut encoder,
                "token_expiry_timestamp_seconds",
                "When the group's current token expires (Unix time).",
                Row::expiry,
            ),
            Family::NextRotation => gauge(
                &mut encoder,
                "next_rotation_timestamp_seconds",
                "When the group's next token is due to be issued (Unix time).",
                Row::next_rotation,
            ),
            Family::LiveTokens => {
                if !page.iter().any(|(_, row)| row.live.is_some()) {
                    return Ok(());
                }
                let mut family = encoder.encode_descriptor(
                    "live_tokens",
                    "Live tokens linetokd issued for the group (at most 2), labelled with the group's kind.",
                    None,
                    MetricType::Gauge,
                )?;
                for (key, row) in &page {
                    if let Some((kind, live)) = row.live {
                        family
                            .encode_family(&labels(key, Some(("kind", kind.as_str()))))?
                            .encode_gauge(&i64::from(live))?;
                    }
                }
                Ok(())
            }
            Family::Rotations => {
                if !page
                    .iter()
                    .any(|(_, row)| row.issued.is_some() || row.failed.is_some())
                {
                    return Ok(());
                }
                let mut family = encoder.encode_descriptor(
                    "rotations",
                    "Token issuances by result.",
                    None,
                    MetricType::Counter,
                )?;
                for (key, row) in &page {
                    for (result, count) in [("success", row.issued), ("failure", row.failed)] {
                        if let Some(count) = count {
                            family
                                .encode_family(&labels(key, Some(("result", result))))?
                                .encode_counter::<NoLabelSet, _, u64>(
                                    &u64::from(count.get()),
                                    None,
                                )?;
                        }
                    }
                }
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every page of every family, written with pages of `size` groups.
    fn written(series: &Arc<GroupSeries>, size: usize) -> String {
        let mut pages = series.pages_of(size);
        let mut out = String::new();
        while series.write_page(&mut pages, &mut out) {}
        out
    }

    /// Pages of one group, of seven and of all give the same text, with
    /// a channel name that needs escaping; no groups give no text.
    #[test]
    fn the_page_size_does_not_change_the_text() {
        let series = Arc::new(GroupSeries::default());
        assert_eq!(written(&series, 7), "");
        let c = ChannelId::new("1");
        series.reset(
            HashMap::from([(c.clone(), Arc::from("shop \"bot\"\\\n"))]),
            false,
        );
        let at = Some(1.8e9);
        for i in 0..50 {
            let g = GroupName::new(format!("g{i:02}"));
            series.set(
                &c,
                &g,
                TokenKind::V21,
                1,
                at,
                (i % 10 == 3).then_some(1.0e9),
            );
            if i % 7 == 0 {
                series.count_rotation(&c, &g, i % 2 == 0);
            }
        }
        let whole = written(&series, usize::MAX);
        assert!(
            whole.contains(r#"channel_name="shop \"bot\"\\\n""#),
            "{whole}"
        );
        assert_eq!(written(&series, 7), whole);
        assert_eq!(written(&series, 1), whole);
        assert_eq!(whole.matches("# TYPE ").count(), 4, "{whole}");
    }

    /// A group removed between two pages is left out of the later ones,
    /// and nothing else changes.
    #[test]
    fn a_group_removed_mid_scrape_is_left_out_of_later_pages() {
        let series = Arc::new(GroupSeries::default());
        let c = ChannelId::new("1");
        for i in 0..20 {
            let g = GroupName::new(format!("g{i:02}"));
            series.set(&c, &g, TokenKind::V21, 1, Some(1.0e9), None);
        }
        let mut pages = series.pages_of(5);
        let mut out = String::new();
        assert!(series.write_page(&mut pages, &mut out));
        let gone = pages.keys[19].1.clone();
        series.remove_gauges(&c, &gone);
        while series.write_page(&mut pages, &mut out) {}
        assert_eq!(out.matches("# TYPE ").count(), 2, "{out}");
        assert_eq!(
            out.lines().filter(|l| !l.starts_with("# ")).count(),
            2 * 19,
            "{out}"
        );
        assert!(!out.contains(&format!("group=\"{gone}\"")), "{out}");
    }
}
