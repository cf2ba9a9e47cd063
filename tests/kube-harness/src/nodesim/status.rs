//! What a kubelet would report for a pod, as a plain function of the pod spec and the state of
//! its simulated container (one local process stands for all containers of the pod).

use std::net::Ipv4Addr;

use k8s_openapi::api::core::v1::{
    ContainerState, ContainerStateRunning, ContainerStateTerminated, ContainerStateWaiting,
    ContainerStatus, Pod, PodCondition, PodIP, PodStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use serde_json::{Value, json};

/// How a run of the pod's process ended.
#[derive(Clone, Debug, PartialEq)]
pub struct Termination {
    pub exit_code: i32,
    pub signal: Option<i32>,
    /// `Completed` (exit 0) or `Error`.
    pub reason: String,
    /// The end of the process output.
    pub message: Option<String>,
    pub started_at: Time,
    pub finished_at: Time,
}

/// The simulated container state.
#[derive(Clone, Debug, PartialEq)]
pub enum RunPhase {
    /// Not started yet (`ContainerCreating`) or waiting to restart (`CrashLoopBackOff`).
    Waiting {
        reason: String,
        message: Option<String>,
    },
    Running {
        started_at: Time,
        ready: bool,
    },
    /// Ended for good (restart policy says so).
    Terminated(Termination),
}

/// Everything the simulator knows about one pod beyond its spec.
#[derive(Clone, Debug, PartialEq)]
pub struct PodRun {
    pub ip: Option<Ipv4Addr>,
    pub host_ip: Ipv4Addr,
    pub start_time: Time,
    pub phase: RunPhase,
    pub restart_count: i32,
    pub last_termination: Option<Termination>,
    /// Container id suffix of the current run (changes with each start).
    pub run_id: u64,
}

/// Pod conditions the simulator owns.
const OWN_CONDITIONS: &[&str] = &[
    "PodReadyToStartContainers",
    "Initialized",
    "ContainersReady",
    "Ready",
    "PodScheduled",
];

/// Whether the pod's restart policy restarts a process that exited with `exit_code`.
pub fn restarts(pod: &Pod, exit_code: i32) -> bool {
    match pod
        .spec
        .as_ref()
        .and_then(|s| s.restart_policy.as_deref())
        .unwrap_or("Always")
    {
        "Never" => false,
        "OnFailure" => exit_code != 0,
        _ => true,
    }
}

/// Whether every readiness gate of the pod has its condition True.
fn gates_pass(pod: &Pod) -> bool {
    let gates = pod.spec.as_ref().and_then(|s| s.readiness_gates.as_ref());
    let conditions = pod.status.as_ref().and_then(|s| s.conditions.as_ref());
    gates.into_iter().flatten().all(|g| {
        conditions
            .into_iter()
            .flatten()
            .any(|c| c.type_ == g.condition_type && c.status == "True")
    })
}

fn state_of(phase: &RunPhase) -> ContainerState {
    match phase {
        RunPhase::Waiting { reason, message } => ContainerState {
            waiting: Some(ContainerStateWaiting {
                reason: Some(reason.clone()),
                message: message.clone(),
            }),
            ..Default::default()
        },
        RunPhase::Running { started_at, .. } => ContainerState {
            running: Some(ContainerStateRunning {
                started_at: Some(started_at.clone()),
            }),
            ..Default::default()
        },
        RunPhase::Terminated(t) => ContainerState {
            terminated: Some(terminated(t)),
            ..Default::default()
        },
    }
}

fn terminated(t: &Termination) -> ContainerStateTerminated {
    ContainerStateTerminated {
        exit_code: t.exit_code,
        signal: t.signal,
        reason: Some(t.reason.clone()),
        message: t.message.clone(),
        started_at: Some(t.started_at.clone()),
        finished_at: Some(t.finished_at.clone()),
        ..Default::default()
    }
}

/// The status a kubelet would write for `pod` given `run`. Conditions of other writers (e.g.
/// readiness gates set by a controller) are kept; transition times of unchanged conditions too.
pub fn desired_status(pod: &Pod, run: &PodRun, now: &Time) -> PodStatus {
    let spec = pod.spec.clone().unwrap_or_default();
    let current = pod.status.clone().unwrap_or_default();
    let running = matches!(run.phase, RunPhase::Running { .. });
    let containers_ready = matches!(run.phase, RunPhase::Running { ready: true, .. });
    let ready = containers_ready && gates_pass(pod);
    let phase = match &run.phase {
        RunPhase::Terminated(t) if t.exit_code == 0 => "Succeeded",
        RunPhase::Terminated(_) => "Failed",
        RunPhase::Running { .. } => "Running",
        // A container waiting to be restarted keeps the pod Running, as on a real node.
        RunPhase::Waiting { .. } if run.restart_count > 0 || run.last_termination.is_some() => {
            "Running"
        }
        RunPhase::Waiting { .. } => "Pending",
    };

    let image_id = |image: &str| format!("sim://{image}");
    let container_id = |name: &str| {
        format!(
            "sim://{}/{name}/{}",
            pod.metadata.uid.as_deref().unwrap_or(""),
            run.run_id
        )
    };
    let last_state = run.last_termination.as_ref().map(|t| ContainerState {
        terminated: Some(terminated(t)),
        ..Default::default()
    });
    let status_for = |c: &k8s_openapi::api::core::v1::Container, init: bool| -> ContainerStatus {
        let sidecar = init && c.restart_policy.as_deref() == Some("Always");
        if init && !sidecar {
            // Plain init containers ran to completion before the main process.
            return ContainerStatus {
                name: c.name.clone(),
                image: c.image.clone().unwrap_or_default(),
                image_id: image_id(c.image.as_deref().unwrap_or_default()),
                container_id: Some(container_id(&c.name)),
                ready: !matches!(run.phase, RunPhase::Waiting { .. } if run.restart_count == 0),
                started: Some(false),
                restart_count: 0,
                state: Some(ContainerState {
                    terminated: Some(ContainerStateTerminated {
                        exit_code: 0,
                        reason: Some("Completed".into()),
                        started_at: Some(run.start_time.clone()),
                        finished_at: Some(run.start_time.clone()),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            };
        }
        // Resizes take effect at once: what the spec asks for is what runs.
        let resources =
            c.resources
                .as_ref()
                .map(|r| k8s_openapi::api::core::v1::ResourceRequirements {
                    limits: r.limits.clone(),
                    requests: r.requests.clone(),
                    claims: None,
                });
        ContainerStatus {
            name: c.name.clone(),
            image: c.image.clone().unwrap_or_default(),
            image_id: image_id(c.image.as_deref().unwrap_or_default()),
            allocated_resources: resources.as_ref().and_then(|r| r.requests.clone()),
            resources,
            container_id:
                (!matches!(run.phase, RunPhase::Waiting { .. } if run.restart_count == 0))
                    .then(|| container_id(&c.name)),
            ready: containers_ready,
            started: Some(running),
            restart_count: run.restart_count,
            state: Some(state_of(&run.phase)),
            last_state: last_state.clone(),
            ..Default::default()
        }
    };
    let container_statuses: Vec<ContainerStatus> = spec
        .containers
        .iter()
        .map(|c| status_for(c, false))
        .collect();
    let init_statuses: Vec<ContainerStatus> = spec
        .init_containers
        .iter()
        .flatten()
        .map(|c| status_for(c, true))
        .collect();

    let truth = |b: bool| if b { "True" } else { "False" }.to_string();
    let own: Vec<(&str, String, Option<&str>)> = vec![
        ("PodReadyToStartContainers", truth(run.ip.is_some()), None),
        ("Initialized", truth(true), None),
        (
            "ContainersReady",
            truth(containers_ready),
            (!containers_ready).then_some("ContainersNotReady"),
        ),
        (
            "Ready",
            truth(ready),
            (!ready).then_some(if containers_ready {
                "ReadinessGatesNotReady"
            } else {
                "ContainersNotReady"
            }),
        ),
        ("PodScheduled", truth(true), None),
    ];
    let previous = current.conditions.clone().unwrap_or_default();
    let mut conditions: Vec<PodCondition> = previous
        .iter()
        .filter(|c| !OWN_CONDITIONS.contains(&c.type_.as_str()))
        .cloned()
        .collect();
    for (type_, status, reason) in own {
        let prev = previous.iter().find(|c| c.type_ == type_);
        let last_transition_time = match prev {
            Some(p) if p.status == status => p.last_transition_time.clone(),
            _ => Some(now.clone()),
        };
        conditions.push(PodCondition {
            type_: type_.to_string(),
            status,
            reason: reason.map(str::to_string),
            last_transition_time,
            last_probe_time: None,
            observed_generation: pod.metadata.generation,
            ..Default::default()
        });
    }

    let ip = run.ip.map(|ip| ip.to_string());
    PodStatus {
        phase: Some(phase.to_string()),
        conditions: Some(conditions),
        host_ip: Some(run.host_ip.to_string()),
        host_ips: Some(vec![k8s_openapi::api::core::v1::HostIP {
            ip: run.host_ip.to_string(),
        }]),
        pod_ip: ip.clone(),
        pod_ips: ip.map(|ip| vec![PodIP { ip }]),
        start_time: Some(run.start_time.clone()),
        container_statuses: Some(container_statuses),
        init_container_statuses: (!init_statuses.is_empty()).then_some(init_statuses),
        qos_class: current.qos_class.clone(),
        observed_generation: pod.metadata.generation,
        ..current
    }
}

/// The fields of a pod status the simulator writes, for comparing what is stored with what it
/// wants (conditions compared without their timestamps).
fn owned_view(status: &PodStatus) -> Value {
    let conditions: Vec<Value> = {
        let mut cs: Vec<Value> = status
            .conditions
            .iter()
            .flatten()
            .map(|c| json!({"type": c.type_, "status": c.status, "reason": c.reason, "observedGeneration": c.observed_generation}))
            .collect();
        cs.sort_by_key(|c| c["type"].as_str().unwrap_or_default().to_string());
        cs
    };
    json!({
        "phase": status.phase,
        "observedGeneration": status.observed_generation,
        "hostIP": status.host_ip,
        "podIP": status.pod_ip,
        "podIPs": status.pod_ips,
        "startTime": status.start_time,
        "conditions": conditions,
        "containerStatuses": status.container_statuses,
        "initContainerStatuses": status.init_container_statuses,
    })
}

/// A JSON merge patch turning the pod's stored status into `desired`, or `None` when they agree.
/// The patch carries the pod's resourceVersion, so a concurrent writer makes it fail with 409
/// instead of being overwritten.
pub fn status_patch(pod: &Pod, desired: &PodStatus) -> Option<Value> {
    let current = pod.status.clone().unwrap_or_default();
    if owned_view(&current) == owned_view(desired) {
        return None;
    }
    Some(json!({
        "metadata": {"resourceVersion": pod.metadata.resource_version},
        "status": {
            "phase": desired.phase,
            "observedGeneration": desired.observed_generation,
            "conditions": desired.conditions,
            "hostIP": desired.host_ip,
            "hostIPs": desired.host_ips,
            "podIP": desired.pod_ip,
            "podIPs": desired.pod_ips,
            "startTime": desired.start_time,
            "containerStatuses": desired.container_statuses,
            "initContainerStatuses": desired.init_container_statuses,
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::jiff::Timestamp;

    fn t(secs: i64) -> Time {
        Time(Timestamp::from_second(secs).unwrap())
    }

    fn pod(yaml: &str) -> Pod {
        serde_yaml::from_str(yaml).unwrap()
    }

    fn base_pod() -> Pod {
        pod(
            "metadata: {name: p, namespace: n, uid: u1, resourceVersion: '7'}
spec:
  containers: [{name: main, image: img:1}]
",
        )
    }

    fn run(phase: RunPhase) -> PodRun {
        PodRun {
            ip: Some(Ipv4Addr::new(127, 1, 0, 5)),
            host_ip: Ipv4Addr::LOCALHOST,
            start_time: t(100),
            phase,
            restart_count: 0,
            last_termination: None,
            run_id: 1,
        }
    }

    fn cond<'a>(s: &'a PodStatus, type_: &str) -> &'a PodCondition {
        s.conditions
            .as_ref()
            .unwrap()
            .iter()
            .find(|c| c.type_ == type_)
            .unwrap()
    }

    #[test]
    fn ready_process_makes_a_running_ready_pod() {
        let p = base_pod();
        let s = desired_status(
            &p,
            &run(RunPhase::Running {
                started_at: t(101),
                ready: true,
            }),
            &t(102),
        );
        assert_eq!(s.phase.as_deref(), Some("Running"));
        assert_eq!(s.pod_ip.as_deref(), Some("127.1.0.5"));
        assert_eq!(s.pod_ips.as_ref().unwrap()[0].ip, "127.1.0.5");
        assert_eq!(cond(&s, "Ready").status, "True");
        assert_eq!(cond(&s, "ContainersReady").status, "True");
        let cs = &s.container_statuses.as_ref().unwrap()[0];
        assert!(cs.ready);
        assert_eq!(cs.started, Some(true));
        assert_eq!(cs.image, "img:1");
        assert!(cs.state.as_ref().unwrap().running.is_some());
    }

    #[test]
    fn unready_process_is_running_but_not_ready() {
        let s = desired_status(
            &base_pod(),
            &run(RunPhase::Running {
                started_at: t(101),
                ready: false,
            }),
            &t(102),
        );
        assert_eq!(s.phase.as_deref(), Some("Running"));
        assert_eq!(cond(&s, "Ready").status, "False");
        assert_eq!(
            cond(&s, "Ready").reason.as_deref(),
            Some("ContainersNotReady")
        );
    }

    #[test]
    fn readiness_gates_hold_ready_until_their_condition_is_true() {
        let mut p = pod("metadata: {name: p, uid: u1}
spec:
  containers: [{name: main, image: img}]
  readinessGates: [{conditionType: example.com/gate}]
status:
  conditions: [{type: example.com/gate, status: 'False'}]
");
        let r = run(RunPhase::Running {
            started_at: t(101),
            ready: true,
        });
        let s = desired_status(&p, &r, &t(102));
        assert_eq!(cond(&s, "ContainersReady").status, "True");
        assert_eq!(cond(&s, "Ready").status, "False");
        // The gate condition of the other writer is kept as it was.
        assert_eq!(cond(&s, "example.com/gate").status, "False");
        p.status.as_mut().unwrap().conditions.as_mut().unwrap()[0].status = "True".into();
        let s = desired_status(&p, &r, &t(103));
        assert_eq!(cond(&s, "Ready").status, "True");
    }

    #[test]
    fn crash_loop_keeps_pod_running_with_restart_count_and_last_state() {
        let mut r = run(RunPhase::Waiting {
            reason: "CrashLoopBackOff".into(),
            message: None,
        });
        r.restart_count = 2;
        r.last_termination = Some(Termination {
            exit_code: 3,
            signal: None,
            reason: "Error".into(),
            message: Some("boom".into()),
            started_at: t(101),
            finished_at: t(102),
        });
        let s = desired_status(&base_pod(), &r, &t(103));
        assert_eq!(s.phase.as_deref(), Some("Running"));
        let cs = &s.container_statuses.as_ref().unwrap()[0];
        assert_eq!(cs.restart_count, 2);
        assert!(!cs.ready);
        assert_eq!(
            cs.state
                .as_ref()
                .unwrap()
                .waiting
                .as_ref()
                .unwrap()
                .reason
                .as_deref(),
            Some("CrashLoopBackOff")
        );
        assert_eq!(
            cs.last_state
                .as_ref()
                .unwrap()
                .terminated
                .as_ref()
                .unwrap()
                .exit_code,
            3
        );
    }

    #[test]
    fn terminal_phases_follow_the_exit_code() {
        let term = |code| {
            RunPhase::Terminated(Termination {
                exit_code: code,
                signal: None,
                reason: if code == 0 { "Completed" } else { "Error" }.into(),
                message: None,
                started_at: t(1),
                finished_at: t(2),
            })
        };
        assert_eq!(
            desired_status(&base_pod(), &run(term(0)), &t(3))
                .phase
                .as_deref(),
            Some("Succeeded")
        );
        assert_eq!(
            desired_status(&base_pod(), &run(term(1)), &t(3))
                .phase
                .as_deref(),
            Some("Failed")
        );
    }

    #[test]
    fn reports_resources_and_observed_generation() {
        let mut p = pod("metadata: {name: p, uid: u1, generation: 3}
spec:
  containers:
  - name: main
    image: img
    resources: {requests: {cpu: 250m}, limits: {cpu: '1'}}
");
        let r = run(RunPhase::Running {
            started_at: t(101),
            ready: true,
        });
        let s = desired_status(&p, &r, &t(102));
        assert_eq!(s.observed_generation, Some(3));
        assert_eq!(cond(&s, "Ready").observed_generation, Some(3));
        let cs = &s.container_statuses.as_ref().unwrap()[0];
        assert_eq!(
            cs.resources.as_ref().unwrap().requests.as_ref().unwrap()["cpu"].0,
            "250m"
        );
        assert_eq!(cs.allocated_resources.as_ref().unwrap()["cpu"].0, "250m");
        // A newer generation (e.g. a resize) needs a new write.
        p.status = Some(s);
        p.metadata.generation = Some(4);
        assert!(status_patch(&p, &desired_status(&p, &r, &t(103))).is_some());
    }

    #[test]
    fn restart_policy_decides_restarts() {
        let mut p = base_pod();
        assert!(restarts(&p, 0));
        p.spec.as_mut().unwrap().restart_policy = Some("OnFailure".into());
        assert!(restarts(&p, 1));
        assert!(!restarts(&p, 0));
        p.spec.as_mut().unwrap().restart_policy = Some("Never".into());
        assert!(!restarts(&p, 1));
    }

    #[test]
    fn sidecar_init_containers_report_running_and_plain_ones_completed() {
        let p = pod("metadata: {name: p, uid: u1}
spec:
  initContainers:
  - {name: setup, image: busybox}
  - {name: runtime, image: rt, restartPolicy: Always}
  containers: [{name: main, image: img}]
");
        let s = desired_status(
            &p,
            &run(RunPhase::Running {
                started_at: t(101),
                ready: true,
            }),
            &t(102),
        );
        let init = s.init_container_statuses.unwrap();
        assert_eq!(
            init[0]
                .state
                .as_ref()
                .unwrap()
                .terminated
                .as_ref()
                .unwrap()
                .reason
                .as_deref(),
            Some("Completed")
        );
        assert!(init[1].state.as_ref().unwrap().running.is_some());
        assert!(init[1].ready);
    }

    #[test]
    fn patch_is_none_once_stored_and_keeps_transition_times() {
        let mut p = base_pod();
        let r = run(RunPhase::Running {
            started_at: t(101),
            ready: true,
        });
        let s = desired_status(&p, &r, &t(102));
        let patch = status_patch(&p, &s).expect("first write");
        assert_eq!(patch["metadata"]["resourceVersion"], "7");
        p.status = Some(s);
        let again = desired_status(&p, &r, &t(500));
        assert!(status_patch(&p, &again).is_none());
        assert_eq!(cond(&again, "Ready").last_transition_time, Some(t(102)));
    }
}
