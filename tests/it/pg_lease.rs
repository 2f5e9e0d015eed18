//! The PostgreSQL lease and orphan statements (`store::pg::lease`) against a
//! real PostgreSQL 15 (`pg_harness`), checked against their model,
//! `ha::lease`: sequences of acquire, renew, release and expiry give the
//! model's epochs and answers; two instances racing for an expired lease,
//! exactly one wins; a fenced write after a takeover rolls back and names
//! the fence; a takeover waits for an in-flight fenced write and then sees
//! it; validity follows the database's clock alone; orphans are recorded
//! by key ID. Every wait is on the database (its clock, `pg_sleep`, or a
//! lock wait seen in `pg_stat_activity`), never a fixed host sleep. Each
//! test skips with one printed line when there is no PostgreSQL, unless
//! `LINETOKD_REQUIRE_POSTGRES=1`.

use std::time::Duration as StdDuration;

use chrono::{DateTime, Duration, Utc};
use linetokd::domain::{ChannelId, GroupName, KeyId};
use linetokd::ha::lease::{self, Epoch, InstanceId, Lease, NotHeld};
use linetokd::ha::{AcquireAnswer, RenewAnswer};
use linetokd::store::IntentId;
use linetokd::store::pg::{
    NewOrphan, OrphanRevoke, PgError, PgPool, PgTarget, PoolOptions, RevokeOutcome, fence,
};

use crate::pg_harness::{TestDb, test_db};

const LONG: Duration = Duration::seconds(60);

async fn pool(db: &TestDb, max_size: usize) -> PgPool {
    let options = PoolOptions {
        max_size,
        connect_timeout: StdDuration::from_secs(20),
        wait_timeout: StdDuration::from_secs(20),
    };
    PgPool::connect(&PgTarget::parse(&db.url()).unwrap(), &options)
        .await
        .unwrap()
}

/// A fresh, migrated database and a pool on it.
async fn migrated(test: &str) -> Option<(TestDb, PgPool)> {
    let db = test_db(test).await?;
    let pool = pool(&db, 4).await;
    pool.migrate().await.unwrap();
    Some((db, pool))
}

/// The database's clock in unix milliseconds.
async fn db_now(client: &tokio_postgres::Client) -> DateTime<Utc> {
    let ms: i64 = client
        .query_one(
            "SELECT floor(extract(epoch FROM clock_timestamp()) * 1000)::bigint",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    DateTime::from_timestamp_millis(ms).unwrap()
}

/// Waits on the database until its clock reaches `t`.
async fn wait_db_until(client: &tokio_postgres::Client, t: DateTime<Utc>) {
    loop {
        let now = db_now(client).await;
        if now >= t {
            return;
        }
        let secs = (t - now).num_milliseconds() as f64 / 1000.0;
        client
            .execute("SELECT pg_sleep($1)", &[&secs])
            .await
            .unwrap();
    }
}

/// Polls the database until `pid` waits for a lock held by `blocker`.
async fn wait_until_blocked(client: &tokio_postgres::Client, pid: i32, blocker: i32) {
    let deadline = tokio::time::Instant::now() + StdDuration::from_secs(30);
    loop {
        let blocked: bool = client
            .query_one(
                "SELECT $2 = ANY(pg_blocking_pids($1))
                    AND (SELECT wait_event_type = 'Lock' FROM pg_stat_activity WHERE pid = $1)",
                &[&pid, &blocker],
            )
            .await
            .unwrap()
            .get(0);
        if blocked {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "backend {pid} never waited for backend {blocker}'s lock"
        );
        tokio::time::sleep(StdDuration::from_millis(10)).await;
    }
}

async fn backend_pid(client: &tokio_postgres::Client) -> i32 {
    client
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0)
}

fn granted(answer: AcquireAnswer) -> (DateTime<Utc>, Lease) {
    match answer {
        AcquireAnswer::Granted { db_now, lease } => (db_now, lease),
        other => panic!("expected a grant, got {other:?}"),
    }
}

fn held(answer: AcquireAnswer) -> Lease {
    match answer {
        AcquireAnswer::Held(lease) => lease,
        other => panic!("expected the lease to stand, got {other:?}"),
    }
}

/// A write for `channel` as the store will make it: the fence first, then
/// the write (a channel row named `name`), then commit.
async fn fenced_write(
    pool: &PgPool,
    channel: &ChannelId,
    me: &InstanceId,
    epoch: Epoch,
    name: &str,
) -> Result<(), PgError> {
    let mut conn = pool.get().await?;
    let tx = conn.transaction().await.unwrap();
    fence(&*tx, pool, channel, me, epoch).await?;
    tx.execute(
        "INSERT INTO channels (id, name, added_at) VALUES ($1, $2, 0)",
        &[&format!("{channel}-{name}"), &name],
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
    Ok(())
}

async fn channel_rows(client: &tokio_postgres::Client) -> Vec<String> {
    client
        .query("SELECT name FROM channels ORDER BY name", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// An instance renews all its due grants in one statement: each is
/// answered in the order asked, renewed or refused on its own, all at the
/// statement's one `now`.
#[tokio::test]
async fn renewing_many_leases_at_once_answers_each_as_alone() {
    let test = "renewing_many_leases_at_once_answers_each_as_alone";
    let Some((_db, pool)) = migrated(test).await else {
        return;
    };
    let (a, b) = (InstanceId::new("web-1:10"), InstanceId::new("web-2:20"));
    let mine: Vec<ChannelId> = (1..=3)
        .map(|i| ChannelId::new(format!("200000000{i}")))
        .collect();
    for ch in &mine {
        granted(pool.acquire_lease(ch, &a, LONG).await.unwrap());
    }
    let theirs = ChannelId::new("2000000009");
    granted(pool.acquire_lease(&theirs, &b, LONG).await.unwrap());
    let absent = ChannelId::new("2000000010");

    let grants = vec![
        (mine[2].clone(), Epoch(1)),
        (theirs.clone(), Epoch(1)),
        (mine[0].clone(), Epoch(1)),
        (absent.clone(), Epoch(1)),
        (mine[1].clone(), Epoch(7)),
    ];
    let answers = pool.renew_leases(&grants, &a, LONG).await.unwrap();
    assert_eq!(answers.len(), grants.len());
    let renewed: Vec<_> = answers
        .iter()
        .filter_map(|answer| match answer {
            RenewAnswer::Renewed {
                db_now,
                valid_until,
            } => Some((*db_now, *valid_until)),
            _ => None,
        })
        .collect();
    assert!(matches!(answers[0], RenewAnswer::Renewed { .. }));
    assert!(matches!(answers[2], RenewAnswer::Renewed { .. }));
    assert_eq!(renewed.len(), 2, "{answers:?}");
    // One statement, one now, one new valid_until for all it renewed.
    assert_eq!(renewed[0], renewed[1]);
    assert_eq!(renewed[0].1, renewed[0].0 + LONG);
    assert_eq!(
        answers[1],
        RenewAnswer::Refused(NotHeld::OtherHolder {
            holder: b.clone(),
            epoch: Epoch(1)
        })
    );
    assert_eq!(answers[3], RenewAnswer::Refused(NotHeld::NoLease));
    assert_eq!(
        answers[4],
        RenewAnswer::Refused(NotHeld::OtherEpoch { epoch: Epoch(1) })
    );
    // Nothing to renew: no statement, no answers.
    assert_eq!(pool.renew_leases(&[], &a, LONG).await.unwrap(), vec![]);
}

#[tokio::test]
async fn acquire_renew_release_and_expiry_answer_as_the_model_does() {
    let test = "acquire_renew_release_and_expiry_answer_as_the_model_does";
    let Some((db, pool)) = migrated(test).await else {
        return;
    };
    let client = db.client().await;
    let ch = ChannelId::new("1000000001");
    let (a, b) = (InstanceId::new("web-1:10"), InstanceId::new("web-2:20"));

    // Absent: epoch 1, for exactly the TTL on the database's clock.
    let (now, l1) = granted(pool.acquire_lease(&ch, &a, LONG).await.unwrap());
    assert_eq!(Ok(l1.clone()), lease::acquire(None, &a, now, LONG));
    assert_eq!(l1.epoch, Epoch(1));

    // A valid row stands, for another instance and for its own holder.
    assert_eq!(held(pool.acquire_lease(&ch, &b, LONG).await.unwrap()), l1);
    assert_eq!(held(pool.acquire_lease(&ch, &a, LONG).await.unwrap()), l1);

    // Renewal: the holder with its epoch, for the TTL from the statement's now.
    let RenewAnswer::Renewed {
        db_now: renewed_at,
        valid_until,
    } = pool.renew_lease(&ch, &a, Epoch(1), LONG).await.unwrap()
    else {
        panic!("the holder's renewal was refused")
    };
    assert_eq!(
        lease::renew(Some(&l1), &a, Epoch(1), renewed_at, LONG).map(|l| l.valid_until),
        Ok(valid_until)
    );
    let l1 = Lease {
        valid_until,
        ..l1.clone()
    };
    // Refusals say whose the lease is, as the model's check does.
    assert_eq!(
        pool.renew_lease(&ch, &b, Epoch(1), LONG).await.unwrap(),
        RenewAnswer::Refused(NotHeld::OtherHolder {
            holder: a.clone(),
            epoch: Epoch(1)
        })
    );
    assert_eq!(
        pool.renew_lease(&ch, &a, Epoch(2), LONG).await.unwrap(),
        RenewAnswer::Refused(NotHeld::OtherEpoch { epoch: Epoch(1) })
    );
    assert_eq!(
        pool.release_lease(&ch, &b, Epoch(1)).await.unwrap(),
        Err(NotHeld::OtherHolder {
            holder: a.clone(),
            epoch: Epoch(1)
        })
    );
    let other = ChannelId::new("1000000002");
    assert_eq!(
        pool.renew_lease(&other, &a, Epoch(1), LONG).await.unwrap(),
        RenewAnswer::Refused(NotHeld::NoLease)
    );
    assert_eq!(
        pool.release_lease(&other, &a, Epoch(1)).await.unwrap(),
        Err(NotHeld::NoLease)
    );

    // Release ends the grant at the database's now; it is not renewed
    // again (a lapsed grant is never revived), and the next acquire raises
    // the epoch.
    let released = pool
        .release_lease(&ch, &a, Epoch(1))
        .await
        .unwrap()
        .unwrap();
    assert!(released.valid_until <= db_now(&client).await);
    assert_eq!(released.epoch, Epoch(1));
    assert!(released.valid_until < l1.valid_until);
    assert_eq!(
        pool.renew_lease(&ch, &a, Epoch(1), LONG).await.unwrap(),
        RenewAnswer::Refused(NotHeld::Lapsed {
            valid_until: released.valid_until
        })
    );
    let short = Duration::milliseconds(400);
    let (now, l2) = granted(pool.acquire_lease(&ch, &b, short).await.unwrap());
    assert_eq!(
        Ok(l2.clone()),
        lease::acquire(Some(&released), &b, now, short)
    );
    assert_eq!(l2.epoch, Epoch(2));

    // Expiry: once the database's clock passes valid_until the grant is
    // over for its holder too, and anyone's acquire raises the epoch.
    wait_db_until(&client, l2.valid_until).await;
    assert_eq!(
        pool.renew_lease(&ch, &b, Epoch(2), LONG).await.unwrap(),
        RenewAnswer::Refused(NotHeld::Lapsed {
            valid_until: l2.valid_until
        })
    );
    let (now, l3) = granted(pool.acquire_lease(&ch, &b, LONG).await.unwrap());
    assert_eq!(Ok(l3.clone()), lease::acquire(Some(&l2), &b, now, LONG));
    assert_eq!((l3.epoch, &l3.holder), (Epoch(3), &b));

    // The last epoch saturates, as the model's does, instead of
    // overflowing the BIGINT.
    let last = ChannelId::new("1000000011");
    client
        .execute(
            "INSERT INTO channel_leases VALUES ($1, 'old', $2, 0)",
            &[&last.as_str(), &i64::MAX],
        )
        .await
        .unwrap();
    let worn = Lease {
        holder: InstanceId::new("old"),
        epoch: Epoch(i64::MAX),
        valid_until: DateTime::from_timestamp_millis(0).unwrap(),
    };
    let (now, lm) = granted(pool.acquire_lease(&last, &a, LONG).await.unwrap());
    assert_eq!(Ok(lm.clone()), lease::acquire(Some(&worn), &a, now, LONG));
    assert_eq!(lm.epoch, Epoch(i64::MAX));
    client
        .execute(
            "DELETE FROM channel_leases WHERE channel_id = $1",
            &[&last.as_str()],
        )
        .await
        .unwrap();

    // `status` reads every row and the database's now.
    let (_, o1) = granted(pool.acquire_lease(&other, &a, LONG).await.unwrap());
    let table = pool.leases().await.unwrap();
    assert_eq!(table.leases, vec![(ch.clone(), l3), (other, o1)]);
    assert!(
        table
            .leases
            .iter()
            .all(|(_, l)| l.is_valid_at(table.db_now))
    );
}

/// A small deterministic generator (xorshift64*), so a failing sequence
/// can be replayed from its seed.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n
    }
}

#[tokio::test]
async fn random_sequences_of_lease_statements_follow_the_model() {
    let test = "random_sequences_of_lease_statements_follow_the_model";
    let Some((db, pool)) = migrated(test).await else {
        return;
    };
    let client = db.client().await;
    let ch = ChannelId::new("1000000003");
    let who = [
        InstanceId::new("a"),
        InstanceId::new("b"),
        InstanceId::new("c"),
    ];
    for seed in [0x9e37_79b9_7f4a_7c15_u64, 0xdead_beef_cafe_f00d] {
        let mut rng = Rng(seed);
        // The model's row, advanced by each answer.
        let mut row: Option<Lease> = pool
            .leases()
            .await
            .unwrap()
            .leases
            .into_iter()
            .find(|(c, _)| *c == ch)
            .map(|(_, l)| l);
        for step in 0..60 {
            let me = &who[usize::try_from(rng.below(3)).unwrap()];
            // TTLs short enough that grants expire during the sequence.
            let ttl = Duration::milliseconds(i64::try_from(50 + rng.below(250)).unwrap());
            // An epoch near the row's: its own, one off, or the next.
            let base = row.as_ref().map_or(1, |l| l.epoch.0);
            let epoch = Epoch((base + i64::try_from(rng.below(3)).unwrap() - 1).max(1));
            let ctx = format!("seed {seed:#x} step {step}: {me} epoch {epoch} ttl {ttl}");
            let before = db_now(&client).await;
            match rng.below(5) {
                0 | 1 => {
                    let answer = pool.acquire_lease(&ch, me, ttl).await.unwrap();
                    let after = db_now(&client).await;
                    match answer {
                        AcquireAnswer::Granted { db_now, lease } => {
                            assert!(before <= db_now && db_now <= after, "{ctx}");
                            assert_eq!(
                                Ok(lease.clone()),
                                lease::acquire(row.as_ref(), me, db_now, ttl),
                                "{ctx}"
                            );
                            row = Some(lease);
                        }
                        AcquireAnswer::Held(standing) => {
                            // Refused at an instant in [before, after]: the
                            // model refuses at least at `before`.
                            assert_eq!(Some(&standing), row.as_ref(), "{ctx}");
                            assert!(
                                lease::acquire(row.as_ref(), me, before, ttl).is_err(),
                                "{ctx}: refused though expired before the statement"
                            );
                        }
                        AcquireAnswer::Failed => unreachable!("not an answer of the store"),
                    }
                }
                2 => match pool.renew_lease(&ch, me, epoch, ttl).await.unwrap() {
                    RenewAnswer::Renewed {
                        db_now,
                        valid_until,
                    } => {
                        let model = lease::renew(row.as_ref(), me, epoch, db_now, ttl).unwrap();
                        assert_eq!(model.valid_until, valid_until, "{ctx}");
                        row = Some(model);
                    }
                    RenewAnswer::Refused(why) => {
                        let after = db_now(&client).await;
                        // Judged at the statement's now, in [before, after].
                        let at_before = lease::check(row.as_ref(), me, epoch, before);
                        let at_after = lease::check(row.as_ref(), me, epoch, after);
                        assert!(
                            at_before == Err(why.clone()) || at_after == Err(why.clone()),
                            "{ctx}: refused with {why:?}; the model says {at_before:?} .. {at_after:?}"
                        );
                    }
                    RenewAnswer::Failed => unreachable!("not an answer of the store"),
                },
                3 => match pool.release_lease(&ch, me, epoch).await.unwrap() {
                    Ok(released) => {
                        let model =
                            lease::release(row.as_ref(), me, epoch, released.valid_until).unwrap();
                        assert_eq!(model, released, "{ctx}");
                        row = Some(released);
                    }
                    Err(why) => {
                        let after = db_now(&client).await;
                        let at_before = lease::check(row.as_ref(), me, epoch, before);
                        let at_after = lease::check(row.as_ref(), me, epoch, after);
                        assert!(
                            at_before == Err(why.clone()) || at_after == Err(why.clone()),
                            "{ctx}: refused with {why:?}; the model says {at_before:?} .. {at_after:?}"
                        );
                    }
                },
                _ => {
                    let ms = i64::try_from(rng.below(200)).unwrap();
                    wait_db_until(&client, before + Duration::milliseconds(ms)).await;
                }
            }
        }
        // The store's row is the model's.
        let table = pool.leases().await.unwrap();
        let stored = table
            .leases
            .into_iter()
            .find(|(c, _)| *c == ch)
            .map(|(_, l)| l);
        assert_eq!(stored, row, "seed {seed:#x}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_racing_for_an_expired_lease_exactly_one_wins() {
    let test = "two_instances_racing_for_an_expired_lease_exactly_one_wins";
    let Some((db, pool_a)) = migrated(test).await else {
        return;
    };
    let pool_b = pool(&db, 2).await;
    let ch = ChannelId::new("1000000004");
    let (a, b) = (InstanceId::new("a"), InstanceId::new("b"));
    let holder = db.client().await;
    let mut wins = [0_u32; 2];
    let mut epoch = 0;
    for round in 0..40 {
        // From round 1 on, the row is expired (the last winner released)
        // and, in every other round, locked by a third connection until
        // both acquires provably wait on it, so they are released into the
        // race together.
        let lock = round > 0 && round % 2 == 0;
        if lock {
            holder
                .batch_execute(&format!(
                    "BEGIN; SELECT 1 FROM channel_leases WHERE channel_id = '{ch}' FOR SHARE"
                ))
                .await
                .unwrap();
        }
        let race = |pool: PgPool, me: InstanceId, ch: ChannelId| {
            tokio::spawn(async move { pool.acquire_lease(&ch, &me, LONG).await })
        };
        let ta = race(pool_a.clone(), a.clone(), ch.clone());
        let tb = race(pool_b.clone(), b.clone(), ch.clone());
        if lock {
            let deadline = tokio::time::Instant::now() + StdDuration::from_secs(30);
            loop {
                let waiting: i64 = holder
                    .query_one(
                        "SELECT count(*) FROM pg_stat_activity
                          WHERE datname = current_database() AND wait_event_type = 'Lock'
                            AND pid <> pg_backend_pid()",
                        &[],
                    )
                    .await
                    .unwrap()
                    .get(0);
                if waiting == 2 {
                    break;
                }
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "round {round}: the acquires never both waited ({waiting} waiting)"
                );
                tokio::time::sleep(StdDuration::from_millis(5)).await;
            }
            holder.batch_execute("COMMIT").await.unwrap();
        }
        let answers = [ta.await.unwrap().unwrap(), tb.await.unwrap().unwrap()];
        let winners: Vec<(usize, &Lease)> = answers
            .iter()
            .enumerate()
            .filter_map(|(i, ans)| match ans {
                AcquireAnswer::Granted { lease, .. } => Some((i, lease)),
                _ => None,
            })
            .collect();
        assert_eq!(winners.len(), 1, "round {round}: {answers:?}");
        let (w, lease) = winners[0];
        epoch += 1;
        assert_eq!(
            lease.epoch,
            Epoch(epoch),
            "round {round}: one epoch per grant"
        );
        // The loser saw the winner's grant standing.
        let loser = &answers[1 - w];
        assert_eq!(
            loser,
            &AcquireAnswer::Held(lease.clone()),
            "round {round}: the loser names the winner"
        );
        wins[w] += 1;
        let me = [&a, &b][w];
        pool_a
            .release_lease(&ch, me, lease.epoch)
            .await
            .unwrap()
            .unwrap();
    }
    assert_eq!(wins.iter().sum::<u32>(), 40);
}

#[tokio::test]
async fn a_fenced_write_after_a_takeover_rolls_back_and_names_the_fence() {
    let test = "a_fenced_write_after_a_takeover_rolls_back_and_names_the_fence";
    let Some((db, pool)) = migrated(test).await else {
        return;
    };
    let client = db.client().await;
    let ch = ChannelId::new("1000000005");
    let (a, b) = (InstanceId::new("web-1:10"), InstanceId::new("web-2:20"));
    // Short, but long enough for a loaded machine to pass the fence first.
    let (_, la) = granted(
        pool.acquire_lease(&ch, &a, Duration::milliseconds(1500))
            .await
            .unwrap(),
    );
    fenced_write(&pool, &ch, &a, la.epoch, "a-while-valid")
        .await
        .unwrap();

    // Lapsed but not yet taken over: the holder's own write is fenced too.
    wait_db_until(&client, la.valid_until).await;
    let err = fenced_write(&pool, &ch, &a, la.epoch, "a-lapsed")
        .await
        .unwrap_err();
    assert!(
        matches!(&err, PgError::Fenced { why: NotHeld::Lapsed { valid_until }, .. } if *valid_until == la.valid_until),
        "{err:?}"
    );

    let (_, lb) = granted(pool.acquire_lease(&ch, &b, LONG).await.unwrap());
    assert_eq!(lb.epoch, Epoch(2));
    let err = fenced_write(&pool, &ch, &a, la.epoch, "a-after-takeover")
        .await
        .unwrap_err();
    let PgError::Fenced {
        channel,
        holder,
        epoch,
        why,
    } = &err
    else {
        panic!("expected the fence, got {err:?}");
    };
    assert_eq!((channel, holder, *epoch), (&ch, &a, Epoch(1)));
    assert_eq!(
        why,
        &NotHeld::OtherHolder {
            holder: b.clone(),
            epoch: Epoch(2)
        }
    );
    let text = err.to_string();
    for part in [
        "channel 1000000005 fenced",
        "instance web-1:10",
        "epoch 1",
        "instance web-2:20 holds the lease (epoch 2)",
    ] {
        assert!(text.contains(part), "{part:?} in {text}");
    }
    // A fence with a wrong epoch of the right holder, and on a channel
    // nobody leads, fail too.
    let err = fenced_write(&pool, &ch, &b, Epoch(1), "b-old-epoch")
        .await
        .unwrap_err();
    assert!(
        matches!(
            &err,
            PgError::Fenced {
                why: NotHeld::OtherEpoch { epoch: Epoch(2) },
                ..
            }
        ),
        "{err:?}"
    );
    let nobody = ChannelId::new("1000000099");
    let err = fenced_write(&pool, &nobody, &b, Epoch(1), "nobody")
        .await
        .unwrap_err();
    assert!(
        matches!(
            &err,
            PgError::Fenced {
                why: NotHeld::NoLease,
                ..
            }
        ),
        "{err:?}"
    );

    // The new holder writes; nothing of the fenced writes was committed.
    fenced_write(&pool, &ch, &b, lb.epoch, "b").await.unwrap();
    assert_eq!(channel_rows(&client).await, ["a-while-valid", "b"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_takeover_waits_for_an_in_flight_fenced_write_and_then_sees_it() {
    let test = "a_takeover_waits_for_an_in_flight_fenced_write_and_then_sees_it";
    let Some((db, pool_a)) = migrated(test).await else {
        return;
    };
    // One connection, so the acquire runs on the backend whose pid we know.
    let pool_b = pool(&db, 1).await;
    let observer = db.client().await;
    let ch = ChannelId::new("1000000006");
    let (a, b) = (InstanceId::new("a"), InstanceId::new("b"));
    let (_, la) = granted(
        pool_a
            .acquire_lease(&ch, &a, Duration::milliseconds(1500))
            .await
            .unwrap(),
    );

    // a's write transaction passes the fence and writes, then stays open
    // past the end of a's grant.
    let mut conn_a = pool_a.get().await.unwrap();
    let pid_a = backend_pid(&conn_a).await;
    let tx = conn_a.transaction().await.unwrap();
    fence(&*tx, &pool_a, &ch, &a, la.epoch).await.unwrap();
    tx.execute(
        "INSERT INTO channels (id, name, added_at) VALUES ('1000000006', 'written-by-a', 0)",
        &[],
    )
    .await
    .unwrap();
    wait_db_until(&observer, la.valid_until).await;

    // b's acquire of the expired lease waits for a's transaction.
    let pid_b = backend_pid(&pool_b.get().await.unwrap()).await;
    let takeover = {
        let (pool_b, ch, b) = (pool_b.clone(), ch.clone(), b.clone());
        tokio::spawn(async move { pool_b.acquire_lease(&ch, &b, LONG).await })
    };
    wait_until_blocked(&observer, pid_b, pid_a).await;
    assert!(!takeover.is_finished(), "the takeover did not wait");

    tx.commit().await.unwrap();
    let (_, lb) = granted(takeover.await.unwrap().unwrap());
    assert_eq!((lb.epoch, &lb.holder), (Epoch(2), &b));
    // The new leader reads what the old one committed.
    let seen: i64 = pool_b
        .get()
        .await
        .unwrap()
        .query_one(
            "SELECT count(*) FROM channels WHERE name = 'written-by-a'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(seen, 1);
    // And a's next write is fenced.
    let err = fenced_write(&pool_a, &ch, &a, la.epoch, "late")
        .await
        .unwrap_err();
    assert!(matches!(err, PgError::Fenced { .. }), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fence_that_waited_for_the_row_is_judged_when_it_got_it() {
    let test = "a_fence_that_waited_for_the_row_is_judged_when_it_got_it";
    let Some((db, pool)) = migrated(test).await else {
        return;
    };
    let observer = db.client().await;
    let ch = ChannelId::new("1000000010");
    let a = InstanceId::new("a");
    let (_, la) = granted(
        pool.acquire_lease(&ch, &a, Duration::milliseconds(1500))
            .await
            .unwrap(),
    );
    // Another transaction locks the row (as a takeover's update does)
    // while a's grant is still valid ...
    let locker = db.client().await;
    let pid_locker = backend_pid(&locker).await;
    locker
        .batch_execute(&format!(
            "BEGIN; SELECT 1 FROM channel_leases WHERE channel_id = '{ch}' FOR UPDATE"
        ))
        .await
        .unwrap();
    // ... and a's fence, asked for before valid_until, waits for it.
    let conn = pool.get().await.unwrap();
    let pid_a = backend_pid(&conn).await;
    assert!(
        db_now(&observer).await < la.valid_until,
        "the test machine is too slow"
    );
    let write = {
        let (pool, ch, a) = (pool.clone(), ch.clone(), a.clone());
        tokio::spawn(async move {
            let mut conn = conn;
            let tx = conn.transaction().await.unwrap();
            fence(&*tx, &pool, &ch, &a, Epoch(1)).await
        })
    };
    wait_until_blocked(&observer, pid_a, pid_locker).await;
    wait_db_until(&observer, la.valid_until).await;
    locker.batch_execute("COMMIT").await.unwrap();
    // It got the row after valid_until: judged then, the grant had lapsed.
    let err = write.await.unwrap().unwrap_err();
    assert!(
        matches!(&err, PgError::Fenced { why: NotHeld::Lapsed { valid_until }, .. } if *valid_until == la.valid_until),
        "{err:?}"
    );
}

#[tokio::test]
async fn a_lease_lives_by_the_database_clock_alone() {
    let test = "a_lease_lives_by_the_database_clock_alone";
    let Some(db) = test_db(test).await else {
        return;
    };
    // A session time zone far from UTC changes nothing: the statements
    // work in unix milliseconds of clock_timestamp().
    db.client()
        .await
        .batch_execute(&format!(
            "ALTER DATABASE \"{}\" SET timezone = 'Pacific/Kiritimati'",
            db.name
        ))
        .await
        .unwrap();
    let pool = pool(&db, 2).await;
    pool.migrate().await.unwrap();
    let client = db.client().await;
    let ch = ChannelId::new("1000000007");
    let (a, b) = (InstanceId::new("a"), InstanceId::new("b"));

    let ttl = Duration::milliseconds(1500);
    let (granted_at, la) = granted(pool.acquire_lease(&ch, &a, ttl).await.unwrap());
    // The grant is the TTL on the database's clock, from the statement's now.
    assert_eq!(la.valid_until - granted_at, ttl);
    let before = db_now(&client).await;
    assert!(granted_at <= before);
    assert!(
        (before - granted_at) < Duration::seconds(5),
        "db_now is the database's clock"
    );
    let RenewAnswer::Renewed {
        db_now: renewed_at,
        valid_until,
    } = pool.renew_lease(&ch, &a, Epoch(1), ttl).await.unwrap()
    else {
        panic!("renewal refused")
    };
    assert_eq!(valid_until - renewed_at, ttl);

    // Valid until the database's clock reaches valid_until, not a
    // millisecond less: b is refused while the database says so, and
    // granted from valid_until on.
    let a_lease = Lease {
        holder: a.clone(),
        epoch: Epoch(1),
        valid_until,
    };
    wait_db_until(&client, valid_until - Duration::milliseconds(100)).await;
    let answer = pool.acquire_lease(&ch, &b, ttl).await.unwrap();
    let after = db_now(&client).await;
    let mut taken = match answer {
        AcquireAnswer::Held(standing) => {
            assert_eq!(standing, a_lease);
            None
        }
        // Only a machine that spent 100 ms between two statements gets
        // here, and then only at or after valid_until.
        AcquireAnswer::Granted { db_now, lease } => {
            assert!(
                after >= valid_until,
                "granted at {db_now} before {valid_until}"
            );
            assert!(
                db_now >= valid_until,
                "granted at {db_now} before {valid_until}"
            );
            Some(lease)
        }
        AcquireAnswer::Failed => unreachable!("not an answer of the store"),
    };
    if taken.is_none() {
        wait_db_until(&client, valid_until).await;
        let (now, lb) = granted(pool.acquire_lease(&ch, &b, ttl).await.unwrap());
        assert!(now >= valid_until);
        taken = Some(lb);
    }
    let lb = taken.unwrap();
    assert_eq!((lb.epoch, &lb.holder), (Epoch(2), &b));
    // The lapsed grant is not revived by its holder.
    assert_eq!(
        pool.renew_lease(&ch, &a, Epoch(1), ttl).await.unwrap(),
        RenewAnswer::Refused(NotHeld::OtherHolder {
            holder: b.clone(),
            epoch: Epoch(2)
        })
    );
}

#[tokio::test]
async fn orphans_are_recorded_once_by_key_id_and_their_revocation_settles() {
    let test = "orphans_are_recorded_once_by_key_id_and_their_revocation_settles";
    let Some((db, pool)) = migrated(test).await else {
        return;
    };
    let ch = ChannelId::new("1000000008");
    let group = GroupName::new("backend");
    let kid = KeyId::new("sDTOzw5wIfxxxxPEzcmeQA");
    let me = InstanceId::new("web-1:10");
    let expires_at = DateTime::from_timestamp_millis(1_800_000_000_000).unwrap();
    let new = NewOrphan {
        channel: &ch,
        group: &group,
        key_id: &kid,
        epoch: Epoch(3),
        intent: IntentId::from_raw(41),
        recorded_by: &me,
        expires_at,
    };
    let client = db.client().await;
    let before = db_now(&client).await;
    let first = pool.record_orphan(&new).await.unwrap();
    let after = db_now(&client).await;
    assert_eq!(
        (
            &first.channel,
            &first.group,
            &first.key_id,
            first.epoch,
            first.intent.get(),
            &first.recorded_by,
            first.expires_at,
            &first.revoke
        ),
        (
            &ch,
            &group,
            &kid,
            Epoch(3),
            41,
            &me,
            expires_at,
            &OrphanRevoke::Pending
        )
    );
    assert!(before <= first.recorded_at && first.recorded_at <= after);

    // Recording it again (a retry) keeps the first row.
    let other = InstanceId::new("web-2:20");
    let again = pool
        .record_orphan(&NewOrphan {
            recorded_by: &other,
            epoch: Epoch(4),
            ..new
        })
        .await
        .unwrap();
    assert_eq!(again, first);
    assert_eq!(pool.orphans(None).await.unwrap(), vec![first.clone()]);

    // A failed revocation says why; a success is final.
    assert!(
        pool.settle_orphan(&kid, &RevokeOutcome::Failed("LINE answered 500".into()))
            .await
            .unwrap()
    );
    assert_eq!(
        pool.orphans(Some(&ch)).await.unwrap()[0].revoke,
        OrphanRevoke::Failed {
            detail: "LINE answered 500".into()
        }
    );
    assert!(
        pool.settle_orphan(&kid, &RevokeOutcome::Revoked)
            .await
            .unwrap()
    );
    let revoked = pool.orphans(Some(&ch)).await.unwrap().remove(0).revoke;
    assert!(
        matches!(revoked, OrphanRevoke::Revoked { at } if at >= after),
        "{revoked:?}"
    );
    assert!(
        !pool
            .settle_orphan(&kid, &RevokeOutcome::Failed("late".into()))
            .await
            .unwrap()
    );
    assert_eq!(pool.orphans(Some(&ch)).await.unwrap()[0].revoke, revoked);
    assert!(
        !pool
            .settle_orphan(&KeyId::new("unknown"), &RevokeOutcome::NoSecret)
            .await
            .unwrap()
    );

    // Without a secret it stays, marked so; other channels have none.
    let kid2 = KeyId::new("second-kid");
    pool.record_orphan(&NewOrphan {
        key_id: &kid2,
        ..new
    })
    .await
    .unwrap();
    assert!(
        pool.settle_orphan(&kid2, &RevokeOutcome::NoSecret)
            .await
            .unwrap()
    );
    let all = pool.orphans(Some(&ch)).await.unwrap();
    assert_eq!(all.len(), 2);
    assert_eq!(all[1].revoke, OrphanRevoke::NoSecret);
    assert!(
        pool.orphans(Some(&ChannelId::new("1000000009")))
            .await
            .unwrap()
            .is_empty()
    );

    // The record has no place for a token value: its columns are these.
    let columns: Vec<String> = client
        .query(
            "SELECT column_name::text FROM information_schema.columns
              WHERE table_name = 'fenced_orphans' ORDER BY ordinal_position",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        columns,
        [
            "id",
            "channel_id",
            "group_name",
            "key_id",
            "epoch",
            "intent_id",
            "recorded_by",
            "recorded_at",
            "expires_at",
            "revoked_at",
            "revoke_outcome",
            "revoke_detail"
        ]
    );
}

/// A store on `db` as an instance under `[ha]` opens it (no writer lock),
/// with one channel and one group synced.
fn shared_store(url: &str, ch: &ChannelId, group: &GroupName) -> linetokd::store::Store {
    let target = PgTarget::parse(url).unwrap();
    let store = linetokd::store::Store::open_postgres(
        &target,
        &PoolOptions::default(),
        linetokd::store::StoreOptions {
            shared: true,
            ..linetokd::store::StoreOptions::default()
        },
    )
    .unwrap();
    store
        .sync_config(
            DateTime::from_timestamp(1_700_000_000, 0).unwrap(),
            &[linetokd::store::ChannelSpec {
                id: ch.clone(),
                name: "shop-bot".into(),
                groups: vec![group.clone()],
                fingerprint: None,
                short_lived: Vec::new(),
            }],
        )
        .unwrap();
    store
}

#[tokio::test]
async fn a_takeover_closes_older_epochs_intents_which_settle_only_after_their_assertion_expired() {
    let test = "a_takeover_closes_older_epochs_intents";
    let Some((db, pool)) = migrated(test).await else {
        return;
    };
    let (ch, group) = (ChannelId::new("1000000009"), GroupName::new("backend"));
    let (a, b) = (InstanceId::new("a"), InstanceId::new("b"));
    let store = {
        let (url, ch, group) = (db.url(), ch.clone(), group.clone());
        tokio::task::spawn_blocking(move || shared_store(&url, &ch, &group))
            .await
            .unwrap()
    };
    let (_, la) = granted(pool.acquire_lease(&ch, &a, LONG).await.unwrap());
    let fence_a = linetokd::store::Fence {
        channel: ch.clone(),
        holder: a.clone(),
        epoch: la.epoch,
    };
    let t = DateTime::from_timestamp(1_700_000_100, 0).unwrap();
    let exp = t + Duration::minutes(10);
    // A journals an issue under its grant, with its assertion's expiry,
    // and is cut off before it learns the outcome.
    let fenced_a = store.fenced(fence_a.clone());
    let intent = {
        let (ch, group) = (ch.clone(), group.clone());
        tokio::task::spawn_blocking(move || fenced_a.begin_issue_with(t, &ch, &group, Some(exp)))
            .await
            .unwrap()
            .unwrap()
    };
    // The grant ends; B takes over under the next epoch.
    pool.release_lease(&ch, &a, la.epoch)
        .await
        .unwrap()
        .unwrap();
    let (_, lb) = granted(pool.acquire_lease(&ch, &b, LONG).await.unwrap());
    assert_eq!(lb.epoch, la.epoch.next());
    let fenced_b = store.fenced(linetokd::store::Fence {
        channel: ch.clone(),
        holder: b.clone(),
        epoch: lb.epoch,
    });
    let (closed, before_exp, after_exp, a_write) = {
        let (ch, group, fenced_a) = (ch.clone(), group.clone(), store.fenced(fence_a));
        tokio::task::spawn_blocking(move || {
            let closed = fenced_b.close_intents_of_older_epochs(t).unwrap();
            // A listing asked for before the assertion expired (plus LINE's
            // clock allowance) must not settle it: the request may still
            // be on its way.
            let before = fenced_b
                .settleable_through(&ch, exp + Duration::minutes(4), Duration::minutes(5))
                .unwrap();
            let after = fenced_b
                .settleable_through(
                    &ch,
                    exp + Duration::minutes(5) + Duration::seconds(1),
                    Duration::minutes(5),
                )
                .unwrap();
            // A, still believing it leads, is fenced: nothing is written.
            let a_write = fenced_a.begin_issue_with(t, &ch, &group, Some(exp));
            (closed, before, after, a_write)
        })
        .await
        .unwrap()
    };
    assert_eq!(closed.len(), 1);
    assert_eq!(closed[0].id, intent);
    // Until it settles, its assertion's expiry is the channel's hold, read
    // alike by the driver (one channel) and by `status` and `plan` (all).
    let (alone, all) = {
        let (ch, store) = (ch.clone(), store.clone());
        tokio::task::spawn_blocking(move || {
            (
                store.held_assertion_exp(&ch, 0).unwrap(),
                store.held_assertion_exps_by_channel().unwrap(),
            )
        })
        .await
        .unwrap()
    };
    assert_eq!(alone, Some(exp));
    assert_eq!(all, vec![(ch.clone(), exp)]);
    assert!(before_exp < intent.get(), "{before_exp}");
    assert_eq!(after_exp, intent.get());
    let err = a_write.unwrap_err();
    assert!(err.is_fenced(), "{err:?}");

    // The closed issuance is of unknown outcome (what `lost_token` is
    // judged from) until A records the token it got as an orphan: then
    // its outcome is that key ID, and the key ID is the channel's orphan.
    let unknown = |store: linetokd::store::Store| {
        let ch = ch.clone();
        tokio::task::spawn_blocking(move || {
            let unknown = store.unknown_outcomes_since(&ch, t).unwrap();
            let orphans = store.orphan_key_ids(&ch).unwrap();
            (unknown, orphans)
        })
    };
    let (before, orphans) = unknown(store.clone()).await.unwrap();
    assert_eq!(before.len(), 1);
    assert_eq!(before[0].0, intent.get());
    assert!(orphans.is_empty());
    let kid = KeyId::new("orphan-of-a");
    pool.record_orphan(&NewOrphan {
        channel: &ch,
        group: &group,
        key_id: &kid,
        epoch: la.epoch,
        intent,
        recorded_by: &a,
        expires_at: exp + Duration::days(30),
    })
    .await
    .unwrap();
    let (after, orphans) = unknown(store.clone()).await.unwrap();
    assert!(after.is_empty(), "{after:?}");
    assert_eq!(orphans, vec![kid]);
    drop(store);
}

#[tokio::test]
async fn a_stored_token_is_announced_to_listeners_at_commit() {
    let Some((db, pool)) = migrated("a_stored_token_is_announced").await else {
        return;
    };
    let (ch, group) = (ChannelId::new("1000000010"), GroupName::new("backend"));
    let store = {
        let (url, ch, group) = (db.url(), ch.clone(), group.clone());
        tokio::task::spawn_blocking(move || shared_store(&url, &ch, &group))
            .await
            .unwrap()
    };
    let (_client, mut told) = pool
        .listen(linetokd::store::CHANGED_NOTIFICATION)
        .await
        .unwrap();
    let t = DateTime::from_timestamp(1_700_000_200, 0).unwrap();
    let intent = {
        let (store, ch, group) = (store.clone(), ch.clone(), group.clone());
        tokio::task::spawn_blocking(move || store.begin_issue(t, &ch, &group).unwrap())
            .await
            .unwrap()
    };
    {
        let store = store.clone();
        tokio::task::spawn_blocking(move || {
            store
                .complete_issue(
                    t,
                    intent,
                    &linetokd::store::IssuedToken {
                        key_id: KeyId::new("announcedKid0000000000"),
                        value: linetokd::domain::AccessToken::new("announced-token-value"),
                        issued_at: t,
                        expires_at: t + Duration::days(30),
                        verified_at: Some(t),
                    },
                    &[],
                )
                .unwrap();
        })
        .await
        .unwrap();
    }
    // Delivered at the commit, naming the channel (never a value).
    let payload = tokio::time::timeout(StdDuration::from_secs(30), told.recv())
        .await
        .expect("a notification within 30 s")
        .expect("the listener is open");
    assert_eq!(payload, ch.as_str());
    drop(store);
}
