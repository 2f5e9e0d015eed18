//! Carrying out a plan's steps against LINE, and recording each outcome.
//!
//! The order inside an issue is the heart of invariant 6: journal the
//! intent, ask LINE, verify the answer, store the token and close the intent
//! in one transaction, and only then publish. A crash between any two of
//! these leaves either nothing or an open intent, which the next start
//! reports.
//!
//! A failed step ends the plan: the group's failure streak grows (full-jitter
//! backoff for transient failures, a slow fixed pace for permanent ones) and
//! the next plan waits for it. A plan whose steps all succeed ends the
//! streak.

use chrono::{DateTime, Duration, Utc};

use super::{ChannelSetup, RotationEvent, Rotator, error_chain};
use crate::domain::{AccessToken, GroupName, KeyId, TokenState};
use crate::line::{LineError, Verification};
use crate::policy::{FailureKind, GroupView, IssueReason, Plan, RetryState, RevokeReason, Step};
use crate::store::{GroupRuntime, IssuedToken, StoreError};

/// The longest lifetime a sane answer from LINE can report: its 30-day
/// maximum, plus a minute for clocks and rounding.
const MAX_SANE_EXPIRES_IN: i64 = 2_592_000 + 60;

/// Why a step failed.
#[derive(Debug)]
enum StepError {
    /// LINE failed or refused; the group backs off.
    Line(LineError),
    /// LINE answered, but not with what the contract promises (a token for
    /// another channel, an absurd lifetime, a token it refuses a moment
    /// after issuing it). Treated as permanent: a retry would get the same.
    Contract(String),
    /// The store failed: the pass stops and is retried.
    Store(StoreError),
}

impl From<StoreError> for StepError {
    fn from(e: StoreError) -> Self {
        Self::Store(e)
    }
}

impl StepError {
    fn describe(&self) -> String {
        match self {
            Self::Line(e) => error_chain(e),
            Self::Contract(text) => text.clone(),
            Self::Store(e) => error_chain(e),
        }
    }
}

impl Rotator {
    /// Executes `plan` for the group of `view` (the view it was planned
    /// from), stopping at the first failed step.
    ///
    /// # Errors
    /// Only store failures; LINE's are recorded and end in a backoff.
    pub(super) async fn execute(
        &self,
        setup: &ChannelSetup,
        view: &GroupView,
        plan: &Plan,
    ) -> Result<(), StoreError> {
        let group = &view.group;
        for step in &plan.steps {
            let outcome = match step {
                Step::Reconcile => self.reconcile(setup).await,
                Step::Revoke { key_id, reason } => self.revoke(setup, group, key_id, *reason).await,
                Step::Verify { key_id } => self.verify(setup, group, key_id).await,
                Step::Issue { reason, token_exp } => {
                    self.issue(setup, group, *reason, *token_exp).await
                }
            };
            if let Err(error) = outcome {
                return self
                    .record_failure(setup, group, step_name(step), error)
                    .await;
            }
            if matches!(step, Step::Issue { .. }) {
                self.settle_requests(setup, view);
            }
        }
        self.record_success(setup, group).await
    }

    /// Clears the operator requests `view` carried, once they are done: the
    /// issue they asked for succeeded (every incident revocation comes
    /// before the issue in a plan, so those are done too), or a plan made
    /// from the view found nothing left to do.
    ///
    /// The policy also reads a request as satisfied once the current token
    /// was issued at or after it, but the store keeps whole seconds: a
    /// token issued at 12:00:00.7 for a request stamped 12:00:00.5 reads
    /// back as issued at 12:00:00, before the request, and without this
    /// clear it would be revoked and replaced again and again until the
    /// clock reached the next second or the hourly budget ran out. A
    /// request that arrived after the plan was made carries another stamp
    /// and is kept.
    pub(super) fn settle_requests(&self, setup: &ChannelSetup, view: &GroupView) {
        let mut groups = self.lock_groups();
        if let Some(state) = groups.get_mut(&(setup.id.clone(), view.group.clone())) {
            if state.rotate_requested_at.is_some()
                && state.rotate_requested_at == view.rotate_requested_at
            {
                state.rotate_requested_at = None;
            }
            if state.revoke_requested_at.is_some()
                && state.revoke_requested_at == view.revoke_requested_at
            {
                state.revoke_requested_at = None;
            }
        }
    }

    /// Revokes other groups' superseded tokens so `group` can be issued one
    /// (DESIGN.md section 4, step 2c).
    pub(super) async fn free_capacity(
        &self,
        setup: &ChannelSetup,
        group: &GroupName,
        victims: Vec<(GroupName, KeyId)>,
    ) -> Result<(), StoreError> {
        tracing::info!(
            channel = %setup.id,
            group = %group,
            victims = victims.len(),
            "the channel is full: revoking superseded tokens of other groups to make room"
        );
        for (owner, key_id) in victims {
            if let Err(error) = self
                .revoke(setup, &owner, &key_id, RevokeReason::FreeCapacity)
                .await
            {
                return self.record_failure(setup, group, "revoke", error).await;
            }
        }
        Ok(())
    }

    async fn reconcile(&self, setup: &ChannelSetup) -> Result<(), StepError> {
        // The store needs the time the list was requested, not received: a
        // token issued after LINE built the list must not be marked gone.
        let asked_at = self.clock.now();
        let kids = self
            .line
            .valid_key_ids(&setup.signer)
            .await
            .map_err(StepError::Line)?;
        let channel = setup.id.clone();
        let report = self
            .db(move |store| store.reconcile(asked_at, &channel, &kids))
            .await?;
        self.set_settled(&setup.id, true);
        for key_id in &report.gone {
            tracing::warn!(channel = %setup.id, key_id = %key_id, "a token of ours is no longer listed by LINE: marked gone");
            self.emit(RotationEvent::Gone {
                channel: setup.id.clone(),
                key_id: key_id.clone(),
                why: "missing from LINE's list of valid key IDs".into(),
            });
        }
        for key_id in &report.new_foreign {
            tracing::warn!(
                channel = %setup.id,
                key_id = %key_id,
                first_seen = %asked_at,
                "foreign token: LINE lists a key ID on this channel that linetokd did not issue; it counts against the 30-token cap until it expires"
            );
            self.emit(RotationEvent::ForeignSeen {
                channel: setup.id.clone(),
                key_id: key_id.clone(),
            });
        }
        tracing::debug!(
            channel = %setup.id,
            ours = report.ours_live,
            foreign = report.foreign_live,
            "reconciled with LINE"
        );
        Ok(())
    }

    async fn revoke(
        &self,
        setup: &ChannelSetup,
        group: &GroupName,
        key_id: &KeyId,
        reason: RevokeReason,
    ) -> Result<(), StepError> {
        let Some(secret) = &setup.secret else {
            return Err(StepError::Contract(format!(
                "cannot revoke {key_id}: channel {} has no secret_file",
                setup.id
            )));
        };
        let token = self.stored_value(key_id).await?;
        self.line
            .revoke_v21(&setup.id, secret, &token)
            .await
            .map_err(StepError::Line)?;
        let now = self.clock.now();
        let key = key_id.clone();
        let why = format!("revoked: {}", revoke_reason_text(reason));
        self.db(move |store| store.set_token_state(now, &key, TokenState::Revoked, &why))
            .await?;
        tracing::info!(channel = %setup.id, group = %group, key_id = %key_id, reason = revoke_reason_text(reason), "token revoked");
        self.emit(RotationEvent::Revoked {
            channel: setup.id.clone(),
            group: group.clone(),
            key_id: key_id.clone(),
            reason,
        });
        Ok(())
    }

    async fn verify(
        &self,
        setup: &ChannelSetup,
        group: &GroupName,
        key_id: &KeyId,
    ) -> Result<(), StepError> {
        let token = self.stored_value(key_id).await?;
        let answer = self
            .line
            .verify_v21(&token)
            .await
            .map_err(StepError::Line)?;
        let now = self.clock.now();
        match check_verification(&answer, setup) {
            Ok(()) => {
                let key = key_id.clone();
                self.db(move |store| store.record_verified(now, &key))
                    .await?;
                tracing::debug!(channel = %setup.id, group = %group, key_id = %key_id, "token verified");
                Ok(())
            }
            Err(why) => {
                // LINE no longer accepts the current token (revoked in the
                // console, or leaked and revoked): rotate at once and alert.
                let key = key_id.clone();
                let reason = format!("gone: {why}");
                self.db(move |store| store.set_token_state(now, &key, TokenState::Gone, &reason))
                    .await?;
                tracing::error!(
                    channel = %setup.id,
                    group = %group,
                    key_id = %key_id,
                    "LINE no longer accepts the current token ({why}); rotating now"
                );
                if let Some(state) = self
                    .lock_groups()
                    .get_mut(&(setup.id.clone(), group.clone()))
                {
                    state.rotate_requested_at = Some(now);
                }
                self.emit(RotationEvent::Gone {
                    channel: setup.id.clone(),
                    key_id: key_id.clone(),
                    why,
                });
                Ok(())
            }
        }
    }

    async fn issue(
        &self,
        setup: &ChannelSetup,
        group: &GroupName,
        reason: IssueReason,
        token_exp: Duration,
    ) -> Result<(), StepError> {
        let started = self.clock.now();
        let intent = {
            let (channel, group) = (setup.id.clone(), group.clone());
            self.db(move |store| store.begin_issue(started, &channel, &group))
                .await?
        };
        // The intent is journaled: from here a crash leaves it open, and
        // the next start reports it (tests wait on this line to kill us).
        tracing::debug!(channel = %setup.id, group = %group, intent = %intent, reason = ?reason, "issuing a token");
        let issued = match self.line.issue_v21(&setup.signer, token_exp).await {
            Ok(issued) => issued,
            Err(e) => {
                // LINE may have issued it anyway: unsettled until the next
                // reconcile, whatever the store manages to record.
                self.set_settled(&setup.id, false);
                self.metrics.rotation(&setup.id, group, false);
                let (now, text) = (self.clock.now(), error_chain(&e));
                self.db(move |store| store.fail_issue(now, intent, &text))
                    .await?;
                return Err(StepError::Line(e));
            }
        };
        let issued_at = self.clock.now();
        if !(1..=MAX_SANE_EXPIRES_IN).contains(&issued.expires_in) {
            // Store it anyway so it is never lost, but dead on arrival.
            let why = format!(
                "LINE answered expires_in {} for a new token",
                issued.expires_in
            );
            self.store_token(
                intent,
                &issued.key_id,
                &issued.access_token,
                issued_at,
                issued_at,
                None,
            )
            .await?;
            let (key, reason) = (issued.key_id.clone(), format!("gone: {why}"));
            self.db(move |store| store.set_token_state(issued_at, &key, TokenState::Gone, &reason))
                .await?;
            return Err(StepError::Contract(why));
        }
        let expires_at = issued_at + Duration::seconds(issued.expires_in);

        let verification = self.line.verify_v21(&issued.access_token).await;
        let verified_at = match &verification {
            Ok(answer) => match check_verification(answer, setup) {
                Ok(()) => Some(self.clock.now()),
                Err(why) => {
                    self.store_token(
                        intent,
                        &issued.key_id,
                        &issued.access_token,
                        issued_at,
                        expires_at,
                        None,
                    )
                    .await?;
                    let (key, reason) = (issued.key_id.clone(), format!("gone: {why}"));
                    let now = self.clock.now();
                    self.db(move |store| {
                        store.set_token_state(now, &key, TokenState::Gone, &reason)
                    })
                    .await?;
                    return Err(StepError::Contract(format!(
                        "the token LINE just issued failed verification: {why}"
                    )));
                }
            },
            Err(e) => {
                tracing::warn!(
                    channel = %setup.id,
                    group = %group,
                    key_id = %issued.key_id,
                    error = %error_chain(e),
                    "could not verify the new token right away; storing and publishing it, the next verify checks it"
                );
                None
            }
        };
        self.store_token(
            intent,
            &issued.key_id,
            &issued.access_token,
            issued_at,
            expires_at,
            verified_at,
        )
        .await?;
        self.metrics.rotation(&setup.id, group, true);
        tracing::info!(
            channel = %setup.id,
            group = %group,
            key_id = %issued.key_id,
            expires_at = %expires_at,
            reason = ?reason,
            "token issued"
        );
        self.emit(RotationEvent::Issued {
            channel: setup.id.clone(),
            group: group.clone(),
            key_id: issued.key_id.clone(),
            token: issued.access_token.clone(),
            issued_at,
            expires_at,
            reason,
            verified: verified_at.is_some(),
        });
        Ok(())
    }

    async fn store_token(
        &self,
        intent: crate::store::IntentId,
        key_id: &KeyId,
        value: &AccessToken,
        issued_at: DateTime<Utc>,
        expires_at: DateTime<Utc>,
        verified_at: Option<DateTime<Utc>>,
    ) -> Result<(), StoreError> {
        let token = IssuedToken {
            key_id: key_id.clone(),
            value: value.clone(),
            issued_at,
            expires_at,
            verified_at,
        };
        self.db(move |store| store.complete_issue(issued_at, intent, &token))
            .await
            .map(|_| ())
    }

    async fn stored_value(&self, key_id: &KeyId) -> Result<AccessToken, StepError> {
        let key = key_id.clone();
        let token = self.db(move |store| store.token(&key)).await?;
        token.map(|t| t.value).ok_or_else(|| {
            StepError::Store(StoreError::UnknownToken {
                key_id: key_id.clone(),
            })
        })
    }

    async fn record_failure(
        &self,
        setup: &ChannelSetup,
        group: &GroupName,
        step: &'static str,
        error: StepError,
    ) -> Result<(), StoreError> {
        let error = match error {
            // The store failing is not LINE's fault: no backoff, the pass
            // stops and is retried.
            StepError::Store(e) => return Err(e),
            other => other,
        };
        let (kind, retry_after) = match &error {
            StepError::Store(_) => (FailureKind::Transient, None),
            StepError::Line(e) if e.is_transient() => (FailureKind::Transient, e.retry_after()),
            StepError::Line(e) => (FailureKind::Permanent, e.retry_after()),
            StepError::Contract(_) => (FailureKind::Permanent, None),
        };
        let now = self.clock.now();
        let u = self.jitter();
        let retry = {
            let mut groups = self.lock_groups();
            let state = groups.entry((setup.id.clone(), group.clone())).or_default();
            let retry = RetryState::after_failure(
                state.retry.as_ref(),
                now,
                kind,
                retry_after.and_then(|d| Duration::from_std(d).ok()),
                u,
                &self.rules().retry,
            );
            state.retry = Some(retry.clone());
            if step == "reconcile" {
                // The listing is channel-wide: the other groups' plans would
                // list the same key IDs next and fail the same way, each then
                // retrying on its own timer (a 12-group channel sent twelve
                // listings per backoff to a LINE that was down). They wait
                // with this group instead.
                for other in setup.groups.iter().filter(|g| *g != group) {
                    let other = groups.entry((setup.id.clone(), other.clone())).or_default();
                    if other
                        .retry
                        .as_ref()
                        .is_none_or(|r| r.not_before < retry.not_before)
                    {
                        other.retry = Some(retry.clone());
                    }
                }
            }
            retry
        };
        let text = error.describe();
        if let StepError::Line(e) = &error {
            tracing::warn!(
                channel = %setup.id,
                group = %group,
                step,
                request_id = e.request_id().unwrap_or("-"),
                failures = retry.failures,
                retry_at = %retry.not_before,
                "{step} failed: {text}"
            );
        } else {
            tracing::warn!(channel = %setup.id, group = %group, step, failures = retry.failures, retry_at = %retry.not_before, "{step} failed: {text}");
        }
        let runtime = GroupRuntime {
            last_error: Some(format!("{step}: {text}")),
            last_error_at: Some(now),
            consecutive_failures: retry.failures,
            retry_not_before: Some(retry.not_before),
        };
        let event_kind = match step {
            "verify" => Some(crate::store::EventKind::VerifyFailed),
            "revoke" => Some(crate::store::EventKind::RevokeFailed),
            "reconcile" => Some(crate::store::EventKind::ReconcileFailed),
            // The issue journal records its own failures.
            _ => None,
        };
        let (channel, group_name, detail) = (setup.id.clone(), group.clone(), text.clone());
        self.db(move |store| {
            store.set_group_runtime(&channel, &group_name, &runtime)?;
            if let Some(kind) = event_kind {
                store.record_event(
                    now,
                    &crate::store::NewEvent {
                        channel_id: channel.clone(),
                        group: Some(group_name.clone()),
                        key_id: None,
                        kind,
                        detail,
                    },
                )?;
            }
            Ok(())
        })
        .await?;
        self.emit(RotationEvent::Failed {
            channel: setup.id.clone(),
            group: group.clone(),
            step,
            error: text,
            retry_at: retry.not_before,
        });
        Ok(())
    }

    async fn record_success(
        &self,
        setup: &ChannelSetup,
        group: &GroupName,
    ) -> Result<(), StoreError> {
        let had_streak = {
            let mut groups = self.lock_groups();
            let state = groups.entry((setup.id.clone(), group.clone())).or_default();
            state.retry.take().is_some()
        };
        if had_streak {
            tracing::info!(channel = %setup.id, group = %group, "LINE answers again; failure streak over");
            let (channel, group) = (setup.id.clone(), group.clone());
            self.db(move |store| {
                store.set_group_runtime(&channel, &group, &GroupRuntime::default())
            })
            .await?;
        }
        Ok(())
    }
}

/// Checks LINE's verify answer against what the token must be: accepted,
/// for this channel, with a sane time left. The error says what is wrong.
fn check_verification(answer: &Verification, setup: &ChannelSetup) -> Result<(), String> {
    match answer {
        Verification::Valid(v) if v.client_id != setup.id => Err(format!(
            "LINE says the token belongs to channel {}, not {}",
            v.client_id, setup.id
        )),
        Verification::Valid(v) if !(1..=MAX_SANE_EXPIRES_IN).contains(&v.expires_in) => Err(
            format!("LINE's verify answered expires_in {}", v.expires_in),
        ),
        Verification::Valid(_) => Ok(()),
        Verification::Rejected {
            description,
            request_id,
            ..
        } => Err(format!(
            "LINE's verify refused it ({}; request {})",
            description.as_deref().unwrap_or("no description"),
            request_id.as_deref().unwrap_or("-")
        )),
    }
}

fn step_name(step: &Step) -> &'static str {
    match step {
        Step::Reconcile => "reconcile",
        Step::Revoke { .. } => "revoke",
        Step::Verify { .. } => "verify",
        Step::Issue { .. } => "issue",
    }
}

/// A short phrase for logs, status and the event history.
pub fn revoke_reason_text(reason: RevokeReason) -> &'static str {
    // The words live with the policy's others (`policy::words`); `Display`
    // writes the same text.
    reason.text()
}
