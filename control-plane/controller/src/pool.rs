//! Warm-pool arithmetic for a SandboxSet, over plain data: how many sandboxes to create, which to
//! delete on scale-down, dead clean-up and rolling update, and the resulting status counts.
//! The kube adapter (`reconcile::sandboxset`) lists the pool, calls [`plan_pool`] and acts.

use std::cmp::Ordering;

use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_openapi::jiff::Timestamp;

/// Where a pool member is in its life, as far as the pool is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemberState {
    /// Owned by the set and not Ready yet.
    Creating,
    /// Owned by the set and Ready.
    Available,
    /// No longer owned by the set (claimed). Never touched by the pool.
    Used,
    /// Deleting, terminal or past shutdown: clean up.
    Dead,
}

/// One sandbox carrying this set's `sandbox-pool` label.
#[derive(Debug, Clone, PartialEq)]
pub struct PoolMember {
    pub name: String,
    pub state: MemberState,
    /// Its `template-hash` equals the set's current revision (or the legacy revision).
    pub updated: bool,
    /// Phase is Pending (no pod running yet).
    pub pending: bool,
    /// Running but not Ready.
    pub running_not_ready: bool,
    pub recycled_count: i32,
    pub created: Timestamp,
    /// Carries a `lock` annotation: a claimer (or another scale-down) holds it.
    pub locked: bool,
    /// Already being deleted.
    pub deleting: bool,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct PoolSpec {
    pub replicas: i32,
    pub scale_max_unavailable: Option<IntOrString>,
    pub update_max_unavailable: Option<IntOrString>,
}

/// What one reconcile should do.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PoolPlan {
    pub create: usize,
    /// Lock-then-delete, in this order.
    pub scale_down: Vec<String>,
    pub delete_dead: Vec<String>,
    /// Lock-then-delete (old revision).
    pub rolling: Vec<String>,
    pub status: PoolCounts,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PoolCounts {
    pub replicas: i32,
    pub available: i32,
    pub updated: i32,
    pub updated_available: i32,
}

/// Error for an unparsable IntOrString percentage.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid maxUnavailable {0:?}: want an integer or a percentage like \"20%\"")]
pub struct BadIntOrPercent(pub String);

/// Resolves an IntOrString against `total`; percentages round up (upstream code does, whatever
/// its API comment says).
pub fn scaled_value(v: &IntOrString, total: i32) -> Result<i32, BadIntOrPercent> {
    match v {
        IntOrString::Int(i) => Ok(*i),
        IntOrString::String(s) => {
            let p = s
                .strip_suffix('%')
                .and_then(|n| n.trim().parse::<i64>().ok())
                .ok_or_else(|| BadIntOrPercent(s.clone()))?;
            let v = (p * total as i64 + 99).div_euclid(100);
            Ok(v.clamp(i32::MIN as i64, i32::MAX as i64) as i32)
        }
    }
}

/// Scale-down preference (first = deleted first): old revision, then Pending, then recycled
/// (more recycles first), then Running-not-Ready, then fresh Available; ties oldest first.
fn scale_down_order(a: &PoolMember, b: &PoolMember) -> Ordering {
    let rank = |m: &PoolMember| -> u8 {
        if !m.updated {
            0
        } else if m.pending {
            1
        } else if m.recycled_count > 0 {
            2
        } else if m.running_not_ready {
            3
        } else {
            4
        }
    };
    rank(a)
        .cmp(&rank(b))
        .then_with(|| b.recycled_count.cmp(&a.recycled_count))
        .then_with(|| a.created.cmp(&b.created))
        .then_with(|| a.name.cmp(&b.name))
}

/// Plans one reconcile of the pool.
pub fn plan_pool(spec: &PoolSpec, members: &[PoolMember]) -> Result<PoolPlan, BadIntOrPercent> {
    let live = |m: &&PoolMember| !m.deleting;
    let creating: Vec<&PoolMember> = members
        .iter()
        .filter(live)
        .filter(|m| m.state == MemberState::Creating)
        .collect();
    let available: Vec<&PoolMember> = members
        .iter()
        .filter(live)
        .filter(|m| m.state == MemberState::Available)
        .collect();
    let replicas = (creating.len() + available.len()) as i32;
    let avail = available.len() as i32;

    let mut plan = PoolPlan {
        delete_dead: members
            .iter()
            .filter(|m| m.state == MemberState::Dead && !m.deleting)
            .map(|m| m.name.clone())
            .collect(),
        ..Default::default()
    };

    let delta = spec.replicas - replicas;
    if delta > 0 {
        let mut want = delta;
        if let Some(mu) = &spec.scale_max_unavailable {
            let limit = (scaled_value(mu, spec.replicas)? - (replicas - avail)).max(0);
            want = want.min(limit);
        }
        plan.create = want.max(0) as usize;
    } else if delta < 0 {
        let mut candidates: Vec<&PoolMember> = creating
            .iter()
            .chain(available.iter())
            .copied()
            .filter(|m| !m.locked)
            .collect();
        candidates.sort_by(|a, b| scale_down_order(a, b));
        plan.scale_down = candidates
            .into_iter()
            .take((-delta) as usize)
            .map(|m| m.name.clone())
            .collect();
    }

    let updated_creating = creating.iter().filter(|m| m.updated).count() as i32;
    let updated_available = available.iter().filter(|m| m.updated).count() as i32;
    if delta == 0 {
        // Old Creating sandboxes go freely; old Available ones within the budget, oldest first.
        let mut old_creating: Vec<&PoolMember> = creating
            .iter()
            .copied()
            .filter(|m| !m.updated && !m.locked)
            .collect();
        old_creating.sort_by(|a, b| a.created.cmp(&b.created).then_with(|| a.name.cmp(&b.name)));
        plan.rolling
            .extend(old_creating.iter().map(|m| m.name.clone()));
        let budget = match &spec.update_max_unavailable {
            Some(v) => (scaled_value(v, spec.replicas)? - updated_creating).max(0),
            None => 0,
        };
        let mut old_available: Vec<&PoolMember> = available
            .iter()
            .copied()
            .filter(|m| !m.updated && !m.locked)
            .collect();
        old_available.sort_by(|a, b| a.created.cmp(&b.created).then_with(|| a.name.cmp(&b.name)));
        plan.rolling.extend(
            old_available
                .iter()
                .take(budget as usize)
                .map(|m| m.name.clone()),
        );
    }

    plan.status = PoolCounts {
        replicas,
        available: avail,
        updated: updated_creating + updated_available,
        updated_available,
    };
    Ok(plan)
}

/// Runs `count` operations in batches that start at `initial` and double after each batch that
/// fully succeeded; stops after the first batch with a failure. Returns the number of successes.
/// (Upstream `DoItSlowly`: a broken template fails one small batch, not hundreds of creates.)
pub async fn do_it_slowly<F, Fut, E>(count: usize, initial: usize, mut op: F) -> (usize, Option<E>)
where
    F: FnMut(usize) -> Fut,
    Fut: std::future::Future<Output = Result<(), E>>,
{
    let mut done = 0usize;
    let mut batch = initial.max(1);
    let mut index = 0usize;
    while index < count {
        let n = batch.min(count - index);
        let futs: Vec<Fut> = (index..index + n).map(&mut op).collect();
        let results = futures::future::join_all(futs).await;
        index += n;
        let mut first_err = None;
        for r in results {
            match r {
                Ok(()) => done += 1,
                Err(e) => {
                    if first_err.is_none() {
                        first_err = Some(e);
                    }
                }
            }
        }
        if first_err.is_some() {
            return (done, first_err);
        }
        batch *= 2;
    }
    (done, None)
}

pub use sandbox_api::claim::new_sandbox_from_set;

/// How a pool's refill gives way to a burst of claims (`--sandboxset-refill-quiet-ms`,
/// `--sandboxset-refill-max-hold-ms`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RefillHold {
    /// Refill once no sandbox of the set was claimed for this long (zero: never hold).
    pub quiet: std::time::Duration,
    /// ... or once a missing sandbox has waited this long, whatever the claims do.
    pub max: std::time::Duration,
}

/// Whether to postpone creating `create` sandboxes for a pool of `replicas` with `available`
/// left, the newest claim `since_claim` ago and the refill already held for `held_for`:
/// `Some(wait)` postpones (ask again after `wait`). The claims of a burst and the refill of
/// what they took would otherwise compete for the same apiserver at the same moment; the refill
/// waits for a quiet moment, never while fewer than half the pool is left, and never longer
/// than `hold.max`.
pub fn refill_hold(
    create: usize,
    replicas: i32,
    available: i32,
    since_claim: Option<std::time::Duration>,
    held_for: std::time::Duration,
    hold: &RefillHold,
) -> Option<std::time::Duration> {
    let since = since_claim?;
    if create == 0 || hold.quiet.is_zero() || available * 2 < replicas {
        return None;
    }
    if since >= hold.quiet || held_for >= hold.max {
        return None;
    }
    Some((hold.quiet - since).min(hold.max - held_for))
}

/// Whether a just-claimed sandbox's status write that only moves its `observedGeneration` (the
/// take's new `shutdownTime` bumped the generation) waits: `Some(wait)` while claims are still
/// coming (the newest one less than `hold.quiet` ago), never longer than `hold.max` after its own
/// claim. Like the refill, it then stays off the apiserver while a burst's takes need it.
pub fn observed_write_hold(
    since_own_claim: std::time::Duration,
    since_newest_claim: std::time::Duration,
    hold: &RefillHold,
) -> Option<std::time::Duration> {
    if hold.quiet.is_zero() || since_newest_claim >= hold.quiet || since_own_claim >= hold.max {
        return None;
    }
    Some((hold.quiet - since_newest_claim).min(hold.max - since_own_claim))
}

#[cfg(test)]
mod tests {
    #[test]
    fn observed_generation_writes_wait_for_the_burst_but_not_for_long() {
        use std::time::Duration as D;
        let hold = super::RefillHold {
            quiet: D::from_millis(500),
            max: D::from_secs(3),
        };
        let ms = D::from_millis;
        let f = super::observed_write_hold;
        assert_eq!(f(ms(50), ms(10), &hold), Some(ms(490)));
        assert_eq!(f(ms(2900), ms(10), &hold), Some(ms(100)));
        assert_eq!(f(ms(3000), ms(10), &hold), None);
        assert_eq!(f(ms(50), ms(500), &hold), None);
        let off = super::RefillHold {
            quiet: D::ZERO,
            ..hold
        };
        assert_eq!(f(ms(50), ms(10), &off), None);
    }

    #[test]
    fn refill_gives_way_to_a_burst_but_not_for_long_nor_below_half() {
        use std::time::Duration as D;
        let hold = super::RefillHold {
            quiet: D::from_millis(500),
            max: D::from_secs(3),
        };
        let ms = D::from_millis;
        let f = super::refill_hold;
        // A claim 100 ms ago, 400 of 500 left: wait for the quiet moment.
        assert_eq!(f(100, 500, 400, Some(ms(100)), ms(0), &hold), Some(ms(400)));
        // ... but not past the longest hold.
        assert_eq!(
            f(100, 500, 400, Some(ms(100)), ms(2800), &hold),
            Some(ms(200))
        );
        assert_eq!(f(100, 500, 400, Some(ms(100)), ms(3000), &hold), None);
        // Quiet already, no claim at all, nothing to create, below half, hold off: at once.
        assert_eq!(f(100, 500, 400, Some(ms(500)), ms(0), &hold), None);
        assert_eq!(f(100, 500, 400, None, ms(0), &hold), None);
        assert_eq!(f(0, 500, 500, Some(ms(1)), ms(0), &hold), None);
        assert_eq!(f(300, 500, 200, Some(ms(1)), ms(0), &hold), None);
        let off = super::RefillHold {
            quiet: D::ZERO,
            ..hold
        };
        assert_eq!(f(100, 500, 400, Some(ms(1)), ms(0), &off), None);
    }

    use super::*;
    use proptest::prelude::*;

    fn m(name: &str, state: MemberState, updated: bool, age: i64) -> PoolMember {
        PoolMember {
            name: name.into(),
            state,
            updated,
            pending: state == MemberState::Creating,
            running_not_ready: false,
            recycled_count: 0,
            created: Timestamp::from_second(1_000_000 - age).unwrap(),
            locked: false,
            deleting: false,
        }
    }

    fn spec(replicas: i32) -> PoolSpec {
        PoolSpec {
            replicas,
            ..Default::default()
        }
    }

    #[test]
    fn scales_up_to_replicas() {
        let members = vec![
            m("a", MemberState::Available, true, 1),
            m("u", MemberState::Used, true, 1),
        ];
        let plan = plan_pool(&spec(5), &members).unwrap();
        assert_eq!(plan.create, 4);
        assert_eq!(plan.status.replicas, 1);
        assert_eq!(plan.status.available, 1);
    }

    #[test]
    fn scale_up_is_limited_by_scale_strategy() {
        let members = vec![
            m("c1", MemberState::Creating, true, 1),
            m("c2", MemberState::Creating, true, 1),
        ];
        let mut s = spec(10);
        s.scale_max_unavailable = Some(IntOrString::String("30%".into())); // 3 of 10
        assert_eq!(plan_pool(&s, &members).unwrap().create, 1);
        s.scale_max_unavailable = Some(IntOrString::Int(2));
        assert_eq!(plan_pool(&s, &members).unwrap().create, 0);
    }

    #[test]
    fn scale_down_order_and_locks() {
        let mut members = vec![
            m("fresh-old", MemberState::Available, true, 100),
            m("fresh-new", MemberState::Available, true, 1),
            m("pending", MemberState::Creating, true, 5),
            m("oldrev", MemberState::Available, false, 2),
            m("locked-oldrev", MemberState::Available, false, 200),
            m("used", MemberState::Used, false, 300),
        ];
        members[4].locked = true;
        let mut recycled = m("recycled", MemberState::Available, true, 3);
        recycled.recycled_count = 2;
        members.push(recycled);
        let plan = plan_pool(&spec(2), &members).unwrap();
        assert_eq!(
            plan.scale_down,
            vec!["oldrev", "pending", "recycled", "fresh-old"]
        );
        assert!(!plan.scale_down.contains(&"used".to_string()));
        assert!(!plan.scale_down.contains(&"locked-oldrev".to_string()));
    }

    #[test]
    fn dead_are_deleted() {
        let members = vec![
            m("d", MemberState::Dead, true, 1),
            m("a", MemberState::Available, true, 1),
        ];
        let plan = plan_pool(&spec(1), &members).unwrap();
        assert_eq!(plan.delete_dead, vec!["d"]);
        assert_eq!(plan.create, 0);
    }

    #[test]
    fn rolling_update_respects_budget() {
        let mut members: Vec<PoolMember> = (0..10)
            .map(|i| m(&format!("old{i}"), MemberState::Available, false, 100 - i))
            .collect();
        let mut s = spec(10);
        s.update_max_unavailable = Some(IntOrString::Int(1));
        let plan = plan_pool(&s, &members).unwrap();
        assert_eq!(plan.rolling, vec!["old0"]);
        // One replacement still creating: budget used up.
        members[0] = m("new0", MemberState::Creating, true, 0);
        let plan = plan_pool(&s, &members).unwrap();
        assert!(plan.rolling.is_empty());
        // nil maxUnavailable means 0 (the webhook defaults it to 20%).
        s.update_max_unavailable = None;
        members[0] = m("new0", MemberState::Available, true, 0);
        assert!(plan_pool(&s, &members).unwrap().rolling.is_empty());
        // Old creating ones always go.
        members[1] = m("oldc", MemberState::Creating, false, 0);
        assert_eq!(plan_pool(&s, &members).unwrap().rolling, vec!["oldc"]);
    }

    #[test]
    fn percentages_round_up() {
        assert_eq!(
            scaled_value(&IntOrString::String("20%".into()), 9).unwrap(),
            2
        );
        assert_eq!(
            scaled_value(&IntOrString::String("20%".into()), 10).unwrap(),
            2
        );
        assert_eq!(
            scaled_value(&IntOrString::String("1%".into()), 1).unwrap(),
            1
        );
        assert_eq!(
            scaled_value(&IntOrString::String("0%".into()), 10).unwrap(),
            0
        );
        assert!(scaled_value(&IntOrString::String("abc".into()), 10).is_err());
    }

    fn arb_member() -> impl Strategy<Value = PoolMember> {
        (
            0u8..4,
            any::<bool>(),
            any::<bool>(),
            0i64..1000,
            any::<bool>(),
            0u32..1000,
        )
            .prop_map(|(st, updated, locked, age, pending, id)| {
                let state = match st {
                    0 => MemberState::Creating,
                    1 => MemberState::Available,
                    2 => MemberState::Used,
                    _ => MemberState::Dead,
                };
                let mut x = m(&format!("s{id}"), state, updated, age);
                x.locked = locked;
                x.pending = pending;
                x
            })
    }

    proptest! {
        /// The pool never schedules a locked, claimed or dead sandbox for scale-down or rolling
        /// deletion, never deletes more than the surplus, and creates only up to the deficit.
        #[test]
        fn plan_invariants(replicas in 0i32..30, mut members in proptest::collection::vec(arb_member(), 0..40)) {
            members.sort_by(|a, b| a.name.cmp(&b.name));
            members.dedup_by(|a, b| a.name == b.name);
            let s = PoolSpec { replicas, update_max_unavailable: Some(IntOrString::String("20%".into())), ..Default::default() };
            let plan = plan_pool(&s, &members).unwrap();
            let unused = members.iter().filter(|m| matches!(m.state, MemberState::Creating | MemberState::Available)).count() as i32;
            prop_assert_eq!(plan.status.replicas, unused);
            prop_assert!(plan.create as i32 <= (replicas - unused).max(0));
            prop_assert!(plan.scale_down.len() as i32 <= (unused - replicas).max(0));
            for name in plan.scale_down.iter().chain(plan.rolling.iter()) {
                let mm = members.iter().find(|m| &m.name == name).unwrap();
                prop_assert!(!mm.locked);
                prop_assert!(matches!(mm.state, MemberState::Creating | MemberState::Available));
            }
            if plan.create > 0 { prop_assert!(plan.scale_down.is_empty()); }
        }
    }

    #[tokio::test]
    async fn do_it_slowly_doubles_and_stops_on_error() {
        use std::sync::Mutex;
        let calls = Mutex::new(Vec::new());
        let (ok, err) = do_it_slowly(40, 2, |i| {
            calls.lock().unwrap().push(i);
            async move { if i == 9 { Err("boom") } else { Ok(()) } }
        })
        .await;
        // batches: [0,1] [2..5] [6..13] -> error in third batch, stop.
        assert_eq!(calls.lock().unwrap().len(), 14);
        assert_eq!(ok, 13);
        assert_eq!(err, Some("boom"));
        let (ok, err) = do_it_slowly(5, 16, |_| async { Ok::<(), ()>(()) }).await;
        assert_eq!((ok, err), (5, None));
    }
}
