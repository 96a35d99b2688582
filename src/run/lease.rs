//! Leadership as this replica may act on it. kube-lease-manager reports the Lease gained, and lost
//! to another holder; but while its renewals fail (the API server or etcd away) it goes on
//! reporting the Lease held, although another replica may take it once it expires. So while the
//! manager reports it held, the replica also reads the Lease's record every so often and leads
//! only until that record, as last read, expires: `renewTime` + `leaseDurationSeconds`, both
//! written by this replica's lease manager with its own clock. A record naming another holder
//! makes it stand by at once (the manager reports the loss on its next look).

use std::time::Duration;

use k8s_openapi::{
    api::coordination::v1::Lease,
    jiff::{SignedDuration, Timestamp},
};
use kube::Api;
use tokio::{sync::watch, time::Instant};

/// Where this replica stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Leadership {
    /// Another replica holds the Lease, or nobody yet.
    StandingBy,
    /// This replica holds the Lease, and its record says so and has not expired.
    Leading,
    /// The lease manager reports the Lease held, but its record of this replica has expired (or
    /// was never read): it could not be renewed in time, and another replica may take it.
    Lapsed,
}

/// What the Lease's record says of this replica.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Record {
    /// It holds the Lease until then.
    Holds(Timestamp),
    /// Another replica holds it, or nobody (no Lease, no holder, no renewal).
    Other,
}

/// What `lease` (`None`: there is none) says of `identity`.
fn record(lease: Option<&Lease>, identity: &str) -> Record {
    let until = lease
        .and_then(|lease| lease.spec.as_ref())
        .filter(|spec| spec.holder_identity.as_deref() == Some(identity))
        .and_then(|spec| {
            let renewed = spec.renew_time.as_ref()?.0;
            let seconds = spec.lease_duration_seconds?;
            renewed.checked_add(SignedDuration::from_secs(seconds.into())).ok()
        });
    until.map_or(Record::Other, Record::Holds)
}

/// The standing of a replica whose lease manager reports the Lease `held` or not, given the
/// Lease's record as last read (`None`: not read yet), at `now`.
fn standing(held: bool, record: Option<Record>, now: Timestamp) -> Leadership {
    match (held, record) {
        (false, _) | (true, Some(Record::Other)) => Leadership::StandingBy,
        (true, Some(Record::Holds(until))) if now < until => Leadership::Leading,
        (true, _) => Leadership::Lapsed,
    }
}

/// How long the record `last` read keeps this replica leading from `now`.
fn left(last: Option<Record>, now: Timestamp) -> Option<Duration> {
    match last {
        Some(Record::Holds(until)) => Duration::try_from(until.duration_since(now)).ok(),
        _ => None,
    }
}

/// Follows the lease manager's reports (`held`) and, while they say held, the record of the Lease
/// `name` in `leases` (read every third of `duration`, each read bounded by it, as the manager
/// renews a third of `duration` before expiry), for `identity`. The standing is published on the
/// returned channel until its receivers are gone; then `held` is dropped, which makes the lease
/// manager release the Lease.
pub fn follow(
    mut held: watch::Receiver<bool>,
    leases: Api<Lease>,
    name: String,
    identity: String,
    duration: Duration,
) -> watch::Receiver<Leadership> {
    let (standing_tx, standing_rx) = watch::channel(Leadership::StandingBy);
    let every = duration / 3;
    tokio::spawn(async move {
        let mut last = None;
        let mut read_now = true;
        loop {
            let holds = *held.borrow_and_update();
            if !holds {
                last = None;
            }
            let now = Timestamp::now();
            let current = standing(holds, last, now);
            standing_tx.send_if_modified(|standing| std::mem::replace(standing, current) != current);
            let expires = (current == Leadership::Leading)
                .then(|| left(last, now))
                .flatten()
                .map(|left| Instant::now() + left);
            let pause = if read_now { Duration::ZERO } else { every / 2 };
            let read = async {
                tokio::time::sleep(pause).await;
                tokio::time::timeout(every, leases.get_opt(&name)).await
            };
            read_now = false;
            tokio::select! {
                () = standing_tx.closed() => return,
                changed = held.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    read_now = true;
                }
                // At the record's expiry, even while a read is pending.
                () = tokio::time::sleep_until(expires.unwrap_or_else(Instant::now)), if expires.is_some() => read_now = true,
                // A failed or slow read keeps the record last read: its expiry stays the deadline.
                read = read, if holds => {
                    if let Ok(Ok(lease)) = read {
                        last = Some(record(lease.as_ref(), &identity));
                    }
                }
            }
        }
    });
    standing_rx
}

#[cfg(test)]
mod tests {
    use k8s_openapi::{api::coordination::v1::LeaseSpec, apimachinery::pkg::apis::meta::v1::MicroTime};

    use super::*;

    fn lease(holder: &str, renewed: Timestamp, seconds: i32) -> Lease {
        Lease {
            spec: Some(LeaseSpec {
                holder_identity: Some(holder.into()),
                renew_time: Some(MicroTime(renewed)),
                lease_duration_seconds: Some(seconds),
                ..LeaseSpec::default()
            }),
            ..Lease::default()
        }
    }

    #[test]
    fn a_held_lease_leads_until_its_record_expires() {
        let renewed = Timestamp::now();
        let ours = record(Some(&lease("me", renewed, 3)), "me");
        assert_eq!(ours, Record::Holds(renewed + SignedDuration::from_secs(3)));
        assert_eq!(standing(true, Some(ours), renewed), Leadership::Leading);
        let expired = renewed + SignedDuration::from_secs(3);
        assert_eq!(standing(true, Some(ours), expired), Leadership::Lapsed);
        assert_eq!(standing(true, None, renewed), Leadership::Lapsed, "never read");
        assert_eq!(standing(false, Some(ours), renewed), Leadership::StandingBy);
        assert_eq!(left(Some(ours), renewed), Some(Duration::from_secs(3)));
        assert_eq!(left(Some(ours), expired), Some(Duration::ZERO));
        assert_eq!(left(Some(Record::Other), renewed), None);
    }

    #[test]
    fn a_record_of_another_holder_or_none_stands_by() {
        let now = Timestamp::now();
        assert_eq!(record(Some(&lease("other", now, 3)), "me"), Record::Other);
        assert_eq!(record(Some(&Lease::default()), "me"), Record::Other);
        assert_eq!(record(None, "me"), Record::Other);
        assert_eq!(standing(true, Some(Record::Other), now), Leadership::StandingBy);
    }
}
