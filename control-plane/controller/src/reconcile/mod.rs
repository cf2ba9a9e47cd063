//! Kube adapters: each reconciler reads the world, calls the pure planner and performs the plan.

pub mod claim;
pub mod sandbox;
pub mod sandboxset;
pub mod updateops;

use std::sync::Arc;
use std::time::{Duration, Instant};

use kube::runtime::controller::Action;

use crate::context::Context;
use crate::error::Error;

/// Requeue policy on error: conflicts retry fast, everything else backs off a little.
pub fn error_policy(controller: &'static str, err: &Error) -> Action {
    if err.metric_label() == "conflict" {
        Action::requeue(Duration::from_millis(200))
    } else {
        tracing::warn!(controller, error = %err, "reconcile failed");
        Action::requeue(Duration::from_secs(2))
    }
}

/// Times a reconcile and records its outcome.
pub async fn instrumented<F>(
    ctx: &Arc<Context>,
    controller: &'static str,
    fut: F,
) -> Result<Action, Error>
where
    F: std::future::Future<Output = Result<Action, Error>>,
{
    let start = Instant::now();
    let res = fut.await;
    ctx.metrics.observe(
        controller,
        start.elapsed(),
        res.as_ref().err().map(Error::metric_label),
    );
    res
}

/// Serialises `new` as a merge-patch body that also clears the top-level fields `old` had and
/// `new` dropped (a plain merge patch would keep them).
pub fn merge_patch_replacing<T: serde::Serialize>(old: Option<&T>, new: &T) -> serde_json::Value {
    let mut new_v = serde_json::to_value(new).expect("serialises");
    if let (Some(old_v), Some(obj)) = (
        old.map(|o| serde_json::to_value(o).expect("serialises")),
        new_v.as_object_mut(),
    ) && let Some(old_obj) = old_v.as_object()
    {
        for k in old_obj.keys() {
            if !obj.contains_key(k) {
                obj.insert(k.clone(), serde_json::Value::Null);
            }
        }
    }
    new_v
}
