//! Condition bookkeeping with upstream semantics: setting an identical status/reason/message is a
//! no-op, and `lastTransitionTime` only moves when `status` changes. Messages are capped at 1024
//! characters plus "...".

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use sandbox_api::Condition;

const MAX_MESSAGE: usize = 1024;

pub fn get<'a>(conds: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conds.iter().find(|c| c.type_ == type_)
}

pub fn is_true(conds: &[Condition], type_: &str) -> bool {
    get(conds, type_).is_some_and(|c| c.status == "True")
}

pub fn reason<'a>(conds: &'a [Condition], type_: &str) -> Option<&'a str> {
    get(conds, type_).and_then(|c| c.reason.as_deref())
}

pub fn set(
    conds: &mut Vec<Condition>,
    type_: &str,
    status: bool,
    reason: &str,
    message: &str,
    now: Timestamp,
) {
    let status = if status { "True" } else { "False" };
    let mut message = message.to_string();
    if message.chars().count() > MAX_MESSAGE {
        message = message.chars().take(MAX_MESSAGE).collect::<String>() + "...";
    }
    let message = (!message.is_empty()).then_some(message);
    let reason = (!reason.is_empty()).then(|| reason.to_string());
    match conds.iter_mut().find(|c| c.type_ == type_) {
        Some(c) => {
            if c.status == status && c.reason == reason && c.message == message {
                return;
            }
            if c.status != status || c.last_transition_time.is_none() {
                c.last_transition_time = Some(Time(now));
            }
            c.status = status.into();
            c.reason = reason;
            c.message = message;
        }
        None => conds.push(Condition {
            type_: type_.into(),
            status: status.into(),
            reason,
            message,
            last_transition_time: Some(Time(now)),
            observed_generation: None,
        }),
    }
}

pub fn remove(conds: &mut Vec<Condition>, type_: &str) {
    conds.retain(|c| c.type_ != type_);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transition_time_moves_only_on_status_change() {
        let t0 = Timestamp::from_second(100).unwrap();
        let t1 = Timestamp::from_second(200).unwrap();
        let mut c = Vec::new();
        set(&mut c, "Ready", false, "A", "", t0);
        set(&mut c, "Ready", false, "B", "m", t1);
        assert_eq!(c[0].last_transition_time, Some(Time(t0)));
        assert_eq!(c[0].reason.as_deref(), Some("B"));
        set(&mut c, "Ready", true, "B", "m", t1);
        assert_eq!(c[0].last_transition_time, Some(Time(t1)));
        assert!(is_true(&c, "Ready"));
        set(&mut c, "X", true, "", &"x".repeat(2000), t1);
        assert_eq!(get(&c, "X").unwrap().message.as_ref().unwrap().len(), 1027);
        remove(&mut c, "X");
        assert!(get(&c, "X").is_none());
    }
}
