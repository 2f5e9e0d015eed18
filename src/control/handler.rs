//! What a request does: asks the engine through the [`Engine`] contract,
//! then waits for its outcome on the engine's events and request rows.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::broadcast::error::RecvError;
use tokio::sync::{broadcast, watch};
use tokio_util::sync::CancellationToken;

use super::{GroupReport, IssuedKey, Request, Response};
use crate::channel_index::ChannelIndex;
use chrono::{DateTime, Utc};

use crate::domain::{ChannelId, FailureKind, GroupName, KeyId, RequestOutcome};
use crate::event::RotationEvent;
use crate::policy::{StepKind, joined};
use crate::scheduler::SchedulerState;

/// A group's live tokens with their expiries, oldest first
/// ([`Engine::live_tokens`]).
pub type LiveTokens = Vec<(KeyId, DateTime<Utc>)>;

/// A future the [`Engine`] returns (boxed, so the trait stays object safe).
pub type EngineFuture<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;

/// What the control socket asks of the rotation engine. `app` implements it
/// for the rotator, so this module knows the engine only by this contract
/// (and its [`RotationEvent`]s).
pub trait Engine: Send + Sync {
    /// A receiver of everything the engine does from now on.
    fn subscribe(&self) -> broadcast::Receiver<RotationEvent>;
    /// The configured channels: ID, name, and whether its secret is
    /// configured (an incident needs it).
    fn channels(&self) -> Vec<(ChannelId, String, bool)>;
    /// Records a rotation request for one group or every group of the
    /// channel; the groups it covers with their request IDs, or why it was
    /// refused.
    fn request_rotation<'a>(
        &'a self,
        channel: &'a ChannelId,
        group: Option<&'a GroupName>,
        by: &'a str,
    ) -> EngineFuture<'a, Result<Vec<(GroupName, i64)>, String>>;
    /// Records an incident for one group: its request ID, or why it was
    /// refused.
    fn request_incident<'a>(
        &'a self,
        channel: &'a ChannelId,
        group: &'a GroupName,
        by: &'a str,
    ) -> EngineFuture<'a, Result<i64, String>>;
    /// Where request `id` stands; `None` when the engine cannot tell now
    /// (the store could not be read, or it knows no such request).
    fn request_outcome(&self, id: i64) -> EngineFuture<'_, Option<RequestOutcome>>;
    /// Under `[ha]`, the instance that leads `channel` when it is another
    /// one: its leader carries the request out, so this engine sees no
    /// events of it and the handler asks the store instead. `None` when
    /// this instance works the channel (always, without `[ha]`).
    fn led_elsewhere(&self, _channel: &ChannelId) -> Option<String> {
        None
    }
    /// `group`'s live tokens with their expiries, oldest first; `None`
    /// when the engine cannot tell.
    fn live_tokens<'a>(
        &'a self,
        _channel: &'a ChannelId,
        _group: &'a GroupName,
    ) -> EngineFuture<'a, Option<LiveTokens>> {
        Box::pin(async { None })
    }
}

/// How often a request another instance carries out is looked up in the
/// shared store.
const ELSEWHERE_POLL: std::time::Duration = std::time::Duration::from_millis(500);

/// What the control socket asks of the long-lived token watchers
/// (`linetokd long-lived retire`); `app` implements it for
/// [`crate::longlived::Service`].
pub trait LongLivedEngine: Send + Sync {
    /// Revokes the channel's long-lived token and confirms it: its
    /// fingerprint, or why not.
    fn retire<'a>(
        &'a self,
        channel: &'a ChannelId,
        expected: Option<&'a str>,
    ) -> EngineFuture<'a, Result<String, String>>;
}

/// Carries out requests against the engine and waits for their outcome.
pub struct ControlHandler {
    rotator: Arc<dyn Engine>,
    scheduler: watch::Receiver<SchedulerState>,
    wait: Duration,
    long_lived: Option<Arc<dyn LongLivedEngine>>,
}

/// The request being worked on.
struct Work {
    channel: ChannelId,
    reports: Vec<GroupReport>,
    /// The request row of each report's group, in the same order, and
    /// where it stood when last asked.
    requests: Vec<(i64, RequestOutcome)>,
    /// True once the handler fell behind the engine's events: some detail
    /// is lost, so an `Issued` event is not waited for.
    lagged: bool,
    /// True for an incident (`linetokd revoke`).
    incident: bool,
    /// Per report: LINE refused the incident's revoke for good, so the
    /// leaked token lives on. The daemon still issues the fresh token
    /// (`RetryState::refuses_revokes`), which the answer waits for; this
    /// refusal is kept apart from the report's other failures (a success
    /// ends those, not this) and heads its failure in the answer.
    unrevoked: Vec<Option<String>>,
    /// Per report: whether the engine was asked, after such a refusal,
    /// what the fresh token waits for ([`ControlHandler::explain_the_wait`]).
    asked_older: Vec<bool>,
}

impl ControlHandler {
    /// A handler that asks `rotator`, wakes the scheduler through `waker`,
    /// watches its passes on `scheduler`, and answers after at most `wait`.
    pub fn new(
        rotator: Arc<dyn Engine>,
        scheduler: watch::Receiver<SchedulerState>,
        wait: Duration,
    ) -> Self {
        Self {
            rotator,
            scheduler,
            wait,
            long_lived: None,
        }
    }

    /// The handler, also answering `long-lived retire` through `engine`.
    #[must_use]
    pub fn with_long_lived(mut self, engine: Arc<dyn LongLivedEngine>) -> Self {
        self.long_lived = Some(engine);
        self
    }

    /// Carries out `request` and waits for its outcome (see the module
    /// documentation). `cancel` cuts the wait short (daemon shutdown).
    pub async fn handle(&self, request: Request, cancel: &CancellationToken) -> Response {
        self.handle_from(request, "the control socket", cancel)
            .await
    }

    /// [`ControlHandler::handle`] for a request from `by` (who asked, as
    /// the request row records it: the socket peer's uid and pid).
    pub async fn handle_from(
        &self,
        request: Request,
        by: &str,
        cancel: &CancellationToken,
    ) -> Response {
        if let Request::RetireLongLived {
            channel,
            fingerprint,
        } = request
        {
            let channel = self.channel_id(channel);
            let Some(engine) = &self.long_lived else {
                return Response::Refused {
                    error: "this daemon watches no long-lived tokens".to_owned(),
                };
            };
            tracing::info!(channel = %channel, by, "long-lived retire requested over the control socket");
            return match engine.retire(&channel, fingerprint.as_deref()).await {
                Ok(fingerprint) => Response::Retired {
                    channel,
                    fingerprint,
                },
                Err(error) => Response::Refused { error },
            };
        }
        // Subscribed before asking, so no event of the request is missed.
        let mut events = self.rotator.subscribe();
        let mut passes = self.scheduler.clone();
        passes.mark_unchanged();
        let mut work = match self.ask(request, by).await {
            Ok(work) => work,
            Err(error) => {
                tracing::info!(error = %error, "control request refused");
                return Response::Refused { error };
            }
        };
        let deadline = tokio::time::Instant::now() + self.wait;
        // Led by another instance: no event of ours will tell, and the new
        // token's key ID is not ours to announce; the store says when the
        // request is done.
        let elsewhere = self.rotator.led_elsewhere(&work.channel);
        if let Some(leader) = &elsewhere {
            tracing::info!(channel = %work.channel, leader = %leader, "the channel is led by another instance, which carries the request out");
            work.lagged = true;
            for report in &mut work.reports {
                report.led_by = Some(leader.clone());
            }
        }
        loop {
            self.check_done(&mut work).await;
            if work.reports.iter().all(|r| r.done) {
                // Take in what is queued: the revokes and, once the engine
                // has announced it, the new token.
                loop {
                    match events.try_recv() {
                        Ok(event) => work.apply(&event),
                        Err(broadcast::error::TryRecvError::Lagged(_)) => work.lagged = true,
                        Err(_) => break,
                    }
                }
                if work.announced() {
                    return Response::Done {
                        groups: work.into_reports(),
                    };
                }
                // Closed by an issue whose `Issued` event is a moment behind
                // the commit: wait for it below.
            } else if work.reports.iter().any(|r| r.failure.is_some()) {
                return Response::Failed {
                    groups: work.into_reports(),
                };
            }
            tokio::select! {
                () = cancel.cancelled() => {
                    return pending(work, "the daemon is shutting down; the request is dropped with it".to_owned());
                }
                () = tokio::time::sleep_until(deadline) => {
                    return pending(work, format!(
                        "still in progress after {}s; the daemon keeps working on it (see `linetokd status`)",
                        self.wait.as_secs()
                    ));
                }
                () = async {
                    match elsewhere {
                        Some(_) => tokio::time::sleep(ELSEWHERE_POLL).await,
                        None => std::future::pending().await,
                    }
                } => {}
                changed = passes.changed() => {
                    if changed.is_err() {
                        return pending(work, "the scheduler stopped".to_owned());
                    }
                }
                event = events.recv() => match event {
                    Ok(event) => work.apply(&event),
                    // Missed events only cost detail in the report; whether
                    // the request is done is asked of the rotator.
                    Err(RecvError::Lagged(n)) => {
                        tracing::debug!(missed = n, "control handler lagged behind the rotator's events");
                        work.lagged = true;
                    }
                    Err(RecvError::Closed) => {
                        return pending(work, "the rotator stopped".to_owned());
                    }
                },
            }
            self.explain_the_wait(&mut work).await;
        }
    }

    /// An incident whose revoke LINE refused for good, in a group holding
    /// two live tokens: neither can be revoked, and a group never holds
    /// three, so the fresh token comes only when the first of them expires,
    /// which may be days off, or after a reload with the fixed secret. The answer says so at once, naming both, rather
    /// than "still in progress" after the wait (found by an outside test).
    async fn explain_the_wait(&self, work: &mut Work) {
        for i in 0..work.reports.len() {
            if work.unrevoked[i].is_none()
                || work.asked_older[i]
                || work.reports[i].issued.is_some()
            {
                continue;
            }
            work.asked_older[i] = true;
            let group = work.reports[i].group.clone();
            let Some(live) = self.rotator.live_tokens(&work.channel, &group).await else {
                continue;
            };
            // The fresh token comes when the group is down to one live
            // token: at the second-latest expiry (what the plan waits for).
            let mut by_expiry = live.clone();
            by_expiry.sort_by_key(|(_, until)| *until);
            if let Some((older, until)) = by_expiry.len().checked_sub(2).map(|k| &by_expiry[k]) {
                let keys: Vec<&KeyId> = live.iter().map(|(k, _)| k).collect();
                work.reports[i].failure = Some(format!(
                    "the group holds {} live tokens, {}, and LINE refused to revoke them; a \
                     group never holds more than two, so the fresh token comes when {older} \
                     expires at {}, or at once after a reload with the fixed secret (they \
                     are then revoked first); until then consumers keep being handed them, \
                     the only tokens the group has",
                    keys.len(),
                    joined(&keys),
                    until.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                ));
            }
        }
    }

    /// The channel that `given` names, by ID or by name, among the
    /// channels in force; an unknown one as it is, for the rotator to refuse.
    fn channel_id(&self, given: ChannelId) -> ChannelId {
        let index: ChannelIndex = self
            .rotator
            .channels()
            .into_iter()
            .map(|(id, name, _)| (id, name))
            .collect();
        index.resolve(given.as_str()).cloned().unwrap_or(given)
    }

    /// Places the request with the rotator.
    async fn ask(&self, request: Request, by: &str) -> Result<Work, String> {
        match request {
            Request::Rotate { channel, group } => {
                let channel = self.channel_id(channel);
                let requests = self
                    .rotator
                    .request_rotation(&channel, group.as_ref(), by)
                    .await?;
                let groups: Vec<GroupName> = requests.iter().map(|(g, _)| g.clone()).collect();
                tracing::info!(channel = %channel, groups = %joined(&groups), "rotation requested over the control socket");
                Ok(Work::new(channel, requests))
            }
            Request::Revoke { channel, group } => {
                let channel = self.channel_id(channel);
                let channels = self.rotator.channels();
                if channels
                    .iter()
                    .any(|(id, _, can_revoke)| *id == channel && !can_revoke)
                {
                    return Err(format!(
                        "channel {channel} has no secret_file: its tokens cannot be revoked at LINE, \
                         so an incident cannot be handled; add secret_file to the channel"
                    ));
                }
                let id = self.rotator.request_incident(&channel, &group, by).await?;
                tracing::warn!(channel = %channel, group = %group, "incident declared over the control socket: revoking the group's tokens and issuing a fresh one");
                let mut work = Work::new(channel, vec![(group, id)]);
                work.incident = true;
                Ok(work)
            }
            Request::RetireLongLived { channel, .. } => Err(format!(
                "channel {channel}: long-lived retire is not a rotation request"
            )),
        }
    }

    /// Asks where each of the work's request rows stands.
    async fn check_done(&self, work: &mut Work) {
        for (report, (id, outcome)) in work.reports.iter_mut().zip(&mut work.requests) {
            // When the engine cannot tell (the store could not be read),
            // nothing changes: ask again at the next event or pass.
            let Some(now) = self.rotator.request_outcome(*id).await else {
                continue;
            };
            *outcome = now;
            report.done = now != RequestOutcome::Open;
        }
    }
}

fn pending(work: Work, reason: String) -> Response {
    Response::Pending {
        groups: work.into_reports(),
        reason,
    }
}

impl Work {
    fn new(channel: ChannelId, requests: Vec<(GroupName, i64)>) -> Self {
        let (reports, requests): (Vec<_>, Vec<_>) = requests
            .into_iter()
            .map(|(g, id)| {
                (
                    GroupReport::new(channel.clone(), g),
                    (id, RequestOutcome::Open),
                )
            })
            .unzip();
        Self {
            channel,
            unrevoked: vec![None; reports.len()],
            asked_older: vec![false; reports.len()],
            reports,
            requests,
            lagged: false,
            incident: false,
        }
    }

    /// The reports as answered: an incident's refused revoke heads the
    /// group's failure.
    fn into_reports(self) -> Vec<GroupReport> {
        self.reports
            .into_iter()
            .zip(self.unrevoked)
            .map(|(mut r, refusal)| {
                if let Some(refusal) = refusal {
                    r.failure = Some(match r.failure.take() {
                        Some(later) => format!("{refusal}; then {later}"),
                        None => refusal,
                    });
                }
                r
            })
            .collect()
    }

    /// True when every request an issue carried out has its new token in
    /// the report (or events were lost, so it never will).
    fn announced(&self) -> bool {
        self.lagged
            || self
                .reports
                .iter()
                .zip(&self.requests)
                .all(|(r, (_, outcome))| *outcome != RequestOutcome::Done || r.issued.is_some())
    }

    fn report(&mut self, channel: &ChannelId, group: &GroupName) -> Option<&mut GroupReport> {
        self.index(channel, group).map(|i| &mut self.reports[i])
    }

    fn index(&self, channel: &ChannelId, group: &GroupName) -> Option<usize> {
        if channel != &self.channel {
            return None;
        }
        self.reports.iter().position(|r| &r.group == group)
    }

    /// Folds one of the rotator's events into the reports.
    fn apply(&mut self, event: &RotationEvent) {
        match event {
            RotationEvent::Issued {
                channel,
                group,
                key_id,
                expires_at,
                condemned,
                ..
            } => {
                if let Some(i) = self.index(channel, group) {
                    if let (Some(refusal), false) = (&mut self.unrevoked[i], condemned.is_empty()) {
                        let _ = write!(
                            refusal,
                            " (condemned: {}; handed out no more)",
                            joined(condemned)
                        );
                    }
                    let r = &mut self.reports[i];
                    r.issued = Some(IssuedKey {
                        key_id: key_id.clone(),
                        expires_at: *expires_at,
                    });
                    // A success after a failure ends that failure (not an
                    // incident's refused revoke, kept apart: that token
                    // lives).
                    r.failure = None;
                }
            }
            RotationEvent::Revoked {
                channel,
                group,
                key_id,
                ..
            } => {
                if let Some(r) = self.report(channel, group) {
                    r.revoked.push(key_id.clone());
                }
            }
            RotationEvent::Failed {
                channel,
                group,
                step,
                error,
                retry_at,
                kind,
            } => {
                let refused_for_good =
                    self.incident && *step == StepKind::Revoke && *kind == FailureKind::Permanent;
                if let Some(i) = self.index(channel, group) {
                    if refused_for_good {
                        // The daemon goes on to issue the fresh token and
                        // does not retry this revoke (the group plans as
                        // without the secret until the streak ends).
                        self.unrevoked[i] = Some(format!(
                            "{step}: {error}; the leaked token stays live at LINE until \
                             the secret works: the daemon revokes it after a reload with \
                             the fixed secret{}",
                            reload_hint(*kind)
                        ));
                    } else if *step == StepKind::Revoke && *kind == FailureKind::Permanent {
                        // Not retried at `retry_at`: the group goes on as
                        // without the secret (`RetryState::refuses_revokes`).
                        self.reports[i].failure = Some(format!(
                            "{step}: {error}; the group goes on without revoking until \
                             the secret is fixed{}",
                            reload_hint(*kind)
                        ));
                    } else {
                        self.reports[i].failure = Some(format!(
                            "{step}: {error}; the daemon retries at {}{}",
                            retry_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                            reload_hint(*kind)
                        ));
                    }
                }
            }
            RotationEvent::ListingFailed {
                channel,
                groups,
                error,
                retry_at,
                kind,
            } if channel == &self.channel => {
                // The groups named are not issued a token until a listing
                // succeeds: a wrong kid or key answers here, at once,
                // rather than after the wait. A group already carried out
                // keeps its answer.
                let failure = format!(
                    "reconcile (listing the channel's key IDs): {error}; the daemon retries at {}{}",
                    retry_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                    reload_hint(*kind)
                );
                for r in self
                    .reports
                    .iter_mut()
                    .filter(|r| !r.done && r.issued.is_none() && groups.contains(&r.group))
                {
                    r.failure = Some(failure.clone());
                }
            }
            RotationEvent::Alert {
                channel,
                group,
                alert,
            } => {
                if let Some(r) = self.report(channel, group) {
                    r.notes.push(alert.to_string());
                }
            }
            RotationEvent::Expired { .. }
            | RotationEvent::Gone { .. }
            | RotationEvent::ListingFailed { .. }
            | RotationEvent::ForeignSeen { .. } => {}
        }
    }
}

/// What a `rotate` that failed permanently adds to its answer: it tried
/// with the key and secret the daemon holds, and one fixed in its file is
/// read only on a reload (found by an outside test: an operator who fixed
/// the file and ran `rotate` was told only that the daemon retries in 30
/// minutes).
fn reload_hint(kind: FailureKind) -> &'static str {
    if kind == FailureKind::Permanent {
        "; a key or secret fixed in its file is read, and this hold ended, on a reload \
         (SIGHUP, `systemctl reload linetokd`)"
    } else {
        ""
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A failed listing holds only the groups it names (the v2.1 ones): a
    /// short-lived group, issued with the secret, is not answered
    /// "failed", and neither is a group already carried out.
    #[test]
    fn a_failed_listing_fails_only_the_groups_it_holds_that_are_not_done() {
        let channel = ChannelId::new("1");
        let g = |n: &str| GroupName::new(n);
        let mut work = Work::new(
            channel.clone(),
            vec![(g("v21"), 1), (g("short"), 2), (g("done"), 3)],
        );
        work.reports[2].done = true;
        let retry_at = chrono::DateTime::from_timestamp(1_800_000_000, 0).unwrap();
        work.apply(&RotationEvent::ListingFailed {
            channel: ChannelId::new("2"),
            groups: vec![g("v21")],
            error: "another channel".to_owned(),
            retry_at,
            kind: FailureKind::Transient,
        });
        assert!(work.reports.iter().all(|r| r.failure.is_none()));
        work.apply(&RotationEvent::ListingFailed {
            channel,
            groups: vec![g("v21"), g("done")],
            error: "404 kid not found".to_owned(),
            retry_at,
            kind: FailureKind::Permanent,
        });
        let failure = work.reports[0].failure.as_deref().unwrap();
        assert!(
            failure.starts_with("reconcile (listing the channel's key IDs): 404 kid not found;")
                && failure.contains("retries at 2027-01-15T08:00:00Z; a key or secret fixed")
                && failure.ends_with("on a reload (SIGHUP, `systemctl reload linetokd`)"),
            "{failure}"
        );
        assert_eq!(work.reports[1].failure, None, "short-lived");
        assert_eq!(work.reports[2].failure, None, "already done");
    }

    #[test]
    fn a_revoke_refused_for_good_is_not_said_to_be_retried() {
        // A reviewer's finding: a `rotate` whose make-room revoke LINE
        // refused for good said "the daemon retries at" half an hour
        // ahead, but the group goes on as without the secret instead.
        let channel = ChannelId::new("1");
        let mut work = Work::new(channel.clone(), vec![(GroupName::new("a"), 1)]);
        let failed = |kind| RotationEvent::Failed {
            channel: channel.clone(),
            group: GroupName::new("a"),
            step: StepKind::Revoke,
            error: "invalid_client".to_owned(),
            retry_at: chrono::DateTime::from_timestamp(1_800_000_000, 0).unwrap(),
            kind,
        };
        work.apply(&failed(FailureKind::Permanent));
        let failure = work.reports[0].failure.clone().unwrap();
        assert!(
            failure.starts_with("revoke: invalid_client; the group goes on without revoking")
                && !failure.contains("retries at"),
            "{failure}"
        );
        work.apply(&failed(FailureKind::Transient));
        let failure = work.reports[0].failure.clone().unwrap();
        assert!(
            failure.contains("retries at 2027-01-15T08:00:00Z"),
            "{failure}"
        );
    }
}
