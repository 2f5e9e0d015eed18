//! The `status` report as a table for people, and the small formatting
//! helpers `status` and `plan` share.

use std::fmt::Write as _;

use chrono::{DateTime, Duration, SecondsFormat, Utc};

use super::{ChannelStatus, FiringStatus, GroupStatus, StatusReport, in_parallel};
use crate::domain::TokenKind;

/// "3 plaintext" or "12 encrypted with key 2, 4 encrypted with key 1": how the
/// stored token values are held.
fn token_values(counts: &[crate::store::ValueCount]) -> String {
    if counts.is_empty() {
        return "no tokens stored".to_owned();
    }
    counts
        .iter()
        .map(|c| match c.key {
            None => format!("{} plaintext", c.rows),
            Some(key) => format!("{} encrypted with key {key}", c.rows),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// The status report as a compact human table.
pub fn render_status(report: &StatusReport) -> String {
    let now = report.generated_at;
    let mut out = String::new();
    let _ = writeln!(out, "linetokd status at {}", ts(now));
    let _ = writeln!(out, "database: {}", report.database);
    let daemon = match (report.daemon.running, report.daemon.pid) {
        (Some(true), Some(pid)) => format!("running (pid {pid})"),
        (Some(true), None) => "running".to_owned(),
        (Some(false), _) => "not running".to_owned(),
        (None, Some(pid)) => format!("unknown (the lock file names pid {pid})"),
        (None, None) => "unknown".to_owned(),
    };
    let daemon = match report.daemon.http {
        Some(http) if report.daemon.running != Some(false) => {
            format!("{daemon}, HTTP on http://{http}")
        }
        _ => daemon,
    };
    let _ = writeln!(out, "daemon:   {daemon}");
    let _ = writeln!(out, "values:   {}", token_values(&report.token_values));
    if let Some(reload) = &report.last_reload {
        let _ = writeln!(
            out,
            "last config reload at {}: {}",
            ts(reload.at),
            reload.outcome
        );
    }
    for a in &report.alerts {
        render_firing(&mut out, now, a);
    }
    if report.channels.is_empty() {
        let _ = writeln!(out, "\nno channels configured");
    }
    // Channels are independent: at 100,000 groups their text is most of
    // the work, shared out over the cores in order.
    let channels = in_parallel(&report.channels, |c| {
        let mut text = String::new();
        render_channel(&mut text, now, report.channel_token_cap, c);
        text
    });
    for text in channels {
        out.push_str(&text);
    }
    if !report.long_lived.is_empty() {
        let _ = writeln!(
            out,
            "\nlong-lived tokens (fingerprints; values stay in the token files):"
        );
    }
    for t in &report.long_lived {
        let seen = |at: Option<DateTime<Utc>>| at.map_or_else(|| "never".to_owned(), ts);
        let retired = t
            .retired_at
            .map(|at| format!(", retired {}", ts(at)))
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "  channel {} {} {}: {} ({}); first seen {}, last valid {}, last verified {}{retired}",
            t.channel,
            t.role,
            t.fingerprint,
            t.result,
            t.detail,
            ts(t.first_seen_at),
            seen(t.last_valid_at),
            seen(t.last_verified_at),
        );
    }
    if let Some(login) = &report.login {
        super::login::render_login(&mut out, login);
    }
    out
}

/// One channel of the status table.
fn render_channel(out: &mut String, now: DateTime<Utc>, cap: u32, c: &ChannelStatus) {
    let _ = writeln!(out);
    let mut title = format!("channel {} ({})", c.name, c.id);
    if !c.in_config {
        title.push_str(
            " — no longer in the config: not looked after, its tokens expire on their own",
        );
    } else if !c.known_to_daemon {
        title.push_str(" — not yet known to the daemon: it is added at the next start");
    }
    let _ = writeln!(out, "{title}");
    let lost = if c.lost_live > 0 {
        format!(", {} lost", c.lost_live)
    } else {
        String::new()
    };
    let _ = writeln!(
        out,
        "  v2.1 tokens: {} ours, {} foreign{lost}, {} unsettled; capacity {} of {}",
        c.live_ours, c.foreign_live, c.unsettled, c.capacity, cap
    );
    // The short-lived pool is LINE's other 30: only our own tokens in it
    // are known (LINE lists none).
    let short_lived = c
        .groups
        .iter()
        .flat_map(|g| g.current.iter().chain(g.previous.iter()))
        .filter(|t| t.key_id.kind() == TokenKind::ShortLived)
        .count();
    if short_lived > 0 || c.groups.iter().any(|g| g.kind == "short-lived") {
        let _ = writeln!(
            out,
            "  short-lived tokens: {short_lived} ours (other issuers' cannot be seen) of {cap}"
        );
    }
    let _ = writeln!(
        out,
        "  issue attempts in the last hour: {} (budget {}); last reconcile: {}; channel secret: {}",
        c.issues_last_hour,
        c.max_issues_per_hour,
        c.last_reconcile_at
            .map_or_else(|| "never".to_owned(), |at| when(now, at)),
        if c.can_revoke {
            "yes"
        } else {
            "no (cannot revoke)"
        },
    );
    if let Some(st) = &c.stateless {
        let _ = writeln!(
            out,
            "  stateless tokens: on demand by {}, held in memory only; refreshed {}s before expiry, \
             never served with {}s or less left; at most {} issues a minute{}",
            st.auth,
            st.refresh_ahead_secs,
            st.refresh_margin_secs,
            st.max_issues_per_minute,
            match st.sinks {
                0 => String::new(),
                n => format!("; {n} sink(s)"),
            }
        );
        if let (Some(state), Some(at)) = (&st.state, st.state_at) {
            let _ = writeln!(out, "  stateless state ({}): {state}", when(now, at));
        }
    }
    if let Some(l) = &c.listing {
        let _ = writeln!(
            out,
            "  listing key IDs failed {} time(s) in a row{}: {}",
            l.failures,
            l.next_retry_at
                .map(|at| format!(", next attempt {}", when(now, at)))
                .unwrap_or_default(),
            l.error.as_deref().unwrap_or("(no message)")
        );
    }
    if let Some(l) = &c.lease {
        let _ = writeln!(
            out,
            "  lease: {} by instance {} (epoch {}), {} {}",
            if l.valid { "led" } else { "last led" },
            l.holder,
            l.epoch,
            if l.valid { "until" } else { "ended" },
            when(now, l.valid_until)
        );
    }
    for o in &c.orphans {
        let _ = writeln!(
            out,
            "  orphan token {} (group {}, epoch {}, got by {} after its lease ended; never published): {}; expires {}",
            o.key_id,
            o.group,
            o.epoch,
            o.recorded_by,
            o.revoke_outcome.as_deref().unwrap_or("not revoked yet"),
            when(now, o.expires_at)
        );
    }
    if let Some(until) = c.full_until {
        let _ = writeln!(
            out,
            "  LINE refused an issue: the channel holds 30 live tokens; no issue before {}, then only into room a listing shows",
            when(now, until)
        );
    }
    for a in &c.firing {
        out.push_str("  ");
        render_firing(out, now, a);
    }
    let mut rows = vec![vec![
        "GROUP".to_owned(),
        "CURRENT KEY".to_owned(),
        "EXPIRES".to_owned(),
        "PREVIOUS KEY".to_owned(),
        "LIVE".to_owned(),
        "NEXT ROTATION".to_owned(),
        "STATE".to_owned(),
    ]];
    for g in &c.groups {
        rows.push(vec![
            // v2.1 is the default and stays unmarked.
            if g.kind == TokenKind::V21.as_str() {
                g.name.to_string()
            } else {
                format!("{} ({})", g.name, g.kind)
            },
            g.current
                .as_ref()
                .map_or_else(|| "-".to_owned(), |t| t.key_id.to_string()),
            g.current
                .as_ref()
                .map_or_else(|| "-".to_owned(), |t| when(now, t.expires_at)),
            g.previous.as_ref().map_or_else(
                || "-".to_owned(),
                |t| {
                    // Live at LINE, but not handed out: say so, or it
                    // reads as the previous token consumers still get.
                    let refused = if t.refused_at.is_some() {
                        ", refused: not handed out"
                    } else {
                        ""
                    };
                    format!(
                        "{} (expires {}{refused})",
                        t.key_id,
                        span_from(now, t.expires_at)
                    )
                },
            ),
            g.live_tokens.to_string(),
            g.next_rotation_at
                .map_or_else(|| "-".to_owned(), |at| when(now, at)),
            group_state(g),
        ]);
    }
    table(out, "  ", &rows);
    for g in &c.groups {
        if let Some(e) = &g.last_error {
            let _ = writeln!(
                out,
                "  {}: {} {}failure(s) in a row, the last {}: {}{}",
                g.name,
                e.consecutive_failures,
                e.kind.map(|k| format!("{k} ")).unwrap_or_default(),
                e.at.map_or_else(|| "at an unknown time".to_owned(), |at| when(now, at)),
                e.message.as_deref().unwrap_or("(no message)"),
                e.next_retry_at
                    .map(|at| format!("; next attempt {}", when(now, at)))
                    .unwrap_or_default(),
            );
        }
        if let Some(h) = &g.hold {
            let _ = writeln!(out, "  {}: waiting: {}", g.name, h.message);
        }
        for r in &g.pending_requests {
            let _ = writeln!(
                out,
                "  {}: {} requested by {} {}, not carried out yet",
                g.name,
                r.kind,
                r.by,
                when(now, r.requested_at)
            );
        }
        if let Some(hook) = &g.last_hook {
            let what = if hook.ok {
                "hook succeeded".to_owned()
            } else {
                format!("HOOK FAILED: {}", hook.detail)
            };
            let _ = writeln!(out, "  {}: {what} {}", g.name, when(now, hook.at));
        }
        if let Some(sinks) = &g.sinks {
            let what = if sinks.ok {
                "sinks written".to_owned()
            } else {
                format!("SINK FAILING: {}; last attempt", sinks.detail)
            };
            let _ = writeln!(out, "  {}: {what} {}", g.name, when(now, sinks.at));
        }
        for a in &g.alerts {
            let _ = writeln!(
                out,
                "  {}: {}: {}",
                g.name,
                a.severity.to_uppercase(),
                a.message
            );
        }
    }
    for k in &c.foreign {
        let what = if k.orphan {
            "orphan key ID (ours: its store failed the lease fence; see the orphans)"
        } else if k.lost {
            "lost key ID (ours: an issuance whose answer never arrived may have made it; nobody \
             holds its value)"
        } else {
            "foreign key ID"
        };
        let _ = writeln!(
            out,
            "  {what} {} (first seen {}, last seen {})",
            k.key_id,
            when(now, k.first_seen_at),
            when(now, k.last_seen_at)
        );
    }
    for i in &c.open_intents {
        let _ = writeln!(
            out,
            "  issuance {} for {} in flight since {} (if no daemon runs, the next start reports it lost)",
            i.id,
            i.group,
            when(now, i.started_at)
        );
    }
    for i in &c.recent_unfinished_intents {
        let orphan = i.orphan.as_ref().map_or(String::new(), |key_id| {
            format!(" (its token was recorded as orphan {key_id}: see the orphans)")
        });
        let _ = writeln!(
            out,
            "  issuance {} for {} {} {}: {}{orphan}",
            i.id,
            i.group,
            i.outcome,
            when(now, i.finished_at.unwrap_or(i.started_at)),
            i.error.as_deref().unwrap_or("(no message)")
        );
    }
}

fn group_state(g: &GroupStatus) -> String {
    if !g.in_config {
        return match g.revoke_at {
            Some(at) => format!("removed: revoked at {}", ts(at)),
            None if g.current.is_some() => "removed: not revoked, expires on its own".to_owned(),
            None => "removed".to_owned(),
        };
    }
    if !g.known_to_daemon {
        return "new: added at the next start".to_owned();
    }
    if g.alerts.iter().any(|a| a.severity == "critical") {
        return "CRITICAL".to_owned();
    }
    if g.last_error.is_some() {
        return "failing".to_owned();
    }
    if g.sinks.as_ref().is_some_and(|s| !s.ok) {
        return "sink failing".to_owned();
    }
    if g.hold.is_some() {
        return "waiting".to_owned();
    }
    if g.current.is_none() {
        return "no token yet".to_owned();
    }
    "ok".to_owned()
}

// ---------------------------------------------------------------------------
// Formatting helpers.

pub(super) fn count(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// RFC 3339 to the second, UTC.
pub(super) fn ts(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// `2024-05-01T12:00:00Z (in 3d 4h)` / `(5m ago)`.
pub(super) fn when(now: DateTime<Utc>, at: DateTime<Utc>) -> String {
    format!("{} ({})", ts(at), span_from(now, at))
}

/// `in 3d 4h`, `5m ago`, `now`.
pub(super) fn span_from(now: DateTime<Utc>, at: DateTime<Utc>) -> String {
    let d = at - now;
    if d.num_seconds() == 0 {
        "now".to_owned()
    } else if d > Duration::zero() {
        format!("in {}", compact(d))
    } else {
        format!("{} ago", compact(-d))
    }
}

/// A positive span in its largest unit and the next one down, leaving out
/// a zero: `29d 23h`, `5h 12m`, `2d`, `45s`.
pub(super) fn compact(d: Duration) -> String {
    const UNITS: [(i64, &str); 4] = [(86_400, "d"), (3_600, "h"), (60, "m"), (1, "s")];
    let secs = d.num_seconds().max(0);
    let Some(first) = UNITS.iter().position(|(size, _)| secs >= *size) else {
        return "0s".to_owned();
    };
    let (size, unit) = UNITS[first];
    let mut text = format!("{}{unit}", secs / size);
    if let Some((next, next_unit)) = UNITS.get(first + 1) {
        let rest = (secs % size) / next;
        if rest > 0 {
            let _ = write!(text, " {rest}{next_unit}");
        }
    }
    text
}

/// Writes `rows` as left-aligned columns two spaces apart.
pub(super) fn table(out: &mut String, indent: &str, rows: &[Vec<String>]) {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|i| {
            rows.iter()
                .filter_map(|r| r.get(i))
                .map(|cell| cell.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    for row in rows {
        let _ = writeln!(out, "{}", row_line(indent, &widths, row));
    }
}

/// One row of a table whose columns are `widths` wide: each cell but the
/// last padded to its column's width, two spaces apart, trailing blanks
/// trimmed.
pub(super) fn row_line(indent: &str, widths: &[usize], row: &[String]) -> String {
    let mut line = indent.to_owned();
    for (i, cell) in row.iter().enumerate() {
        line.push_str(cell);
        if i + 1 < row.len() {
            let width = widths.get(i).copied().unwrap_or(0);
            let pad = width.saturating_sub(cell.chars().count());
            line.push_str(&" ".repeat(pad + 2));
        }
    }
    line.truncate(line.trim_end().len());
    line
}

/// One firing alert on one line: `firing since …: SEVERITY name (group)
/// [label=value]: summary`.
fn render_firing(out: &mut String, now: DateTime<Utc>, a: &FiringStatus) {
    let _ = writeln!(
        out,
        "firing since {}: {} {}{}{}: {}",
        when(now, a.since),
        a.severity.to_uppercase(),
        a.alertname,
        a.group
            .as_ref()
            .map(|g| format!(" ({g})"))
            .unwrap_or_default(),
        a.label
            .as_ref()
            .map(|l| format!(" [{}={}]", l.name, l.value))
            .unwrap_or_default(),
        a.summary
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compact_spans_keep_the_two_largest_units() {
        let cases = [
            (Duration::seconds(0), "0s"),
            (Duration::seconds(45), "45s"),
            (Duration::seconds(60), "1m"),
            (Duration::seconds(312), "5m 12s"),
            (
                Duration::hours(5) + Duration::minutes(12) + Duration::seconds(9),
                "5h 12m",
            ),
            (
                Duration::days(29) + Duration::hours(23) + Duration::minutes(59),
                "29d 23h",
            ),
            (Duration::days(2) + Duration::seconds(5), "2d"),
        ];
        for (d, want) in cases {
            assert_eq!(compact(d), want, "{d:?}");
        }
        let now = DateTime::from_timestamp(1_700_000_000, 0).unwrap();
        assert_eq!(span_from(now, now + Duration::hours(2)), "in 2h");
        assert_eq!(span_from(now, now - Duration::minutes(5)), "5m ago");
        assert_eq!(span_from(now, now), "now");
    }

    #[test]
    fn the_table_aligns_columns() {
        let mut out = String::new();
        table(
            &mut out,
            "  ",
            &[
                vec!["A".into(), "BB".into(), "C".into()],
                vec!["long".into(), "x".into(), "".into()],
            ],
        );
        assert_eq!(out, "  A     BB  C\n  long  x\n");
    }
}
