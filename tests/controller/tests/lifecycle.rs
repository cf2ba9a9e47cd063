//! Sandbox lifecycle, runtime injection, seed manifests and crash recovery against a real
//! apiserver, with the real `sandbox-controller` binary and the node simulator.

use std::collections::BTreeMap;
use std::time::Duration;

use controller_tests::{ControllerProcess, Env};
use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolumeClaim, Pod};
use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams, PostParams};
use sandbox_api::keys::*;
use sandbox_api::{Sandbox, SandboxClaim, SandboxSet};
use serde_json::json;

fn sandbox(name: &str, extra: serde_json::Value) -> Sandbox {
    let mut v = json!({
        "apiVersion": "agents.kruise.io/v1alpha1", "kind": "Sandbox",
        "metadata": {"name": name},
        "spec": {"template": {"spec": {"containers": [{"name": "main", "image": "python:3"}]}}}
    });
    for (k, x) in extra.as_object().cloned().unwrap_or_default() {
        v["spec"][k] = x;
    }
    serde_json::from_value(v).unwrap()
}

async fn phase(env: &Env, name: &str) -> Result<Sandbox, String> {
    env.api::<Sandbox>()
        .get(name)
        .await
        .map_err(|e| e.to_string())
}

fn phase_of(s: &Sandbox) -> String {
    s.status
        .as_ref()
        .and_then(|s| s.phase.clone())
        .unwrap_or_default()
}

async fn wait_phase(env: &Env, name: &str, want: &str) -> Sandbox {
    env.eventually(
        &format!("{name} phase {want}"),
        Duration::from_secs(60),
        || async {
            let s = phase(env, name).await?;
            if phase_of(&s) == want {
                Ok(s)
            } else {
                Err(format!("phase {:?}", s.status))
            }
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_deletes_the_pod_and_resume_brings_the_same_sandbox_back() {
    let env = Env::new("pause").await;
    let api: Api<Sandbox> = env.api();
    let pods: Api<Pod> = env.api();
    api.create(&PostParams::default(), &sandbox("p1", json!({})))
        .await
        .unwrap();
    let running = wait_phase(&env, "p1", "Running").await;
    let first_pod = env
        .eventually("pod ready", Duration::from_secs(30), || async {
            let p = pods.get("p1").await.map_err(|e| e.to_string())?;
            let s = phase(&env, "p1").await?;
            if sandbox_api::state::is_ready(&s) {
                Ok(p)
            } else {
                Err("not ready".into())
            }
        })
        .await;

    api.patch(
        "p1",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"paused": true}})),
    )
    .await
    .unwrap();
    let paused = env
        .eventually("paused and pod gone", Duration::from_secs(60), || async {
            let s = phase(&env, "p1").await?;
            let pod = pods.get_opt("p1").await.map_err(|e| e.to_string())?;
            let done = s.status.as_ref().is_some_and(|st| {
                st.conditions
                    .iter()
                    .any(|c| c.type_ == "SandboxPaused" && c.status == "True")
            });
            if phase_of(&s) == "Paused" && done && pod.is_none() {
                Ok(s)
            } else {
                Err(format!("phase={} pod={}", phase_of(&s), pod.is_some()))
            }
        })
        .await;
    assert!(
        paused.finalizers().iter().any(|f| f == FINALIZER_SANDBOX),
        "paused sandbox carries the finalizer"
    );

    api.patch(
        "p1",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"paused": false}})),
    )
    .await
    .unwrap();
    let resumed = env
        .eventually("resumed and ready", Duration::from_secs(60), || async {
            let s = phase(&env, "p1").await?;
            if phase_of(&s) == "Running" && sandbox_api::state::is_ready(&s) {
                Ok(s)
            } else {
                Err(format!("{:?}", s.status))
            }
        })
        .await;
    assert_eq!(
        resumed.metadata.uid, running.metadata.uid,
        "the same sandbox object came back"
    );
    let new_pod = pods.get("p1").await.unwrap();
    assert_ne!(
        new_pod.metadata.uid, first_pod.metadata.uid,
        "resume recreated the pod"
    );
    assert!(
        !resumed.finalizers().iter().any(|f| f == FINALIZER_SANDBOX),
        "finalizer released after resume"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_and_shutdown_timers_fire() {
    let env = Env::new("timers").await;
    let api: Api<Sandbox> = env.api();
    let now = k8s_openapi::jiff::Timestamp::now();
    let at = |s: i64| {
        (now + Duration::from_secs(s as u64))
            .strftime("%Y-%m-%dT%H:%M:%SZ")
            .to_string()
    };
    api.create(
        &PostParams::default(),
        &sandbox("t-pause", json!({"pauseTime": at(4)})),
    )
    .await
    .unwrap();
    api.create(
        &PostParams::default(),
        &sandbox("t-stop", json!({"shutdownTime": at(6)})),
    )
    .await
    .unwrap();
    env.eventually(
        "pauseTime paused the sandbox",
        Duration::from_secs(40),
        || async {
            let s = phase(&env, "t-pause").await?;
            if s.spec.paused && phase_of(&s) == "Paused" {
                Ok(())
            } else {
                Err(format!("paused={} phase={}", s.spec.paused, phase_of(&s)))
            }
        },
    )
    .await;
    env.eventually(
        "shutdownTime deleted the sandbox",
        Duration::from_secs(40),
        || async {
            match api.get_opt("t-stop").await.map_err(|e| e.to_string())? {
                None => Ok(()),
                Some(s) => Err(format!("still there, phase {}", phase_of(&s))),
            }
        },
    )
    .await;
}

async fn injection_env(prefix: &str) -> Env {
    let env = Env::new(prefix).await;
    let agent = json!({
        "mainContainer": {"name": "main", "env": [{"name": "ENVD_DIR", "value": "/mnt/envd"}],
            "volumeMounts": [{"name": "envd", "mountPath": "/mnt/envd"}],
            "lifecycle": {"postStart": {"exec": {"command": ["bash", "/mnt/envd/envd-run.sh"]}}}},
        "csiSidecar": [{"name": "runtime", "image": "agent-runtime:test", "restartPolicy": "Always"}],
        "volume": [{"name": "envd", "emptyDir": {}}]
    });
    let proxy =
        json!({"containers": [{"name": "proxy", "image": "proxy:test"}], "labels": {"mesh": "on"}});
    let cm = ConfigMap {
        metadata: kube::api::ObjectMeta {
            name: Some(INJECTION_CONFIGMAP.into()),
            ..Default::default()
        },
        data: Some(BTreeMap::from([
            (RUNTIME_AGENT.to_string(), agent.to_string()),
            (RUNTIME_TRAFFIC_PROXY.to_string(), proxy.to_string()),
        ])),
        ..Default::default()
    };
    env.api::<ConfigMap>()
        .create(&PostParams::default(), &cm)
        .await
        .unwrap();
    env
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runtime_injection_rules_hold_on_real_pods() {
    let env = injection_env("inject").await;
    let api: Api<Sandbox> = env.api();
    let pods: Api<Pod> = env.api();
    // agent-runtime: sidecar + env + mount + postStart merged with the user's exec hook.
    api.create(
        &PostParams::default(),
        &sandbox(
            "inj-ok",
            json!({
                "runtimes": [{"name": "agent-runtime"}],
                "template": {"spec": {"containers": [{"name": "main", "image": "python:3",
                    "lifecycle": {"postStart": {"exec": {"command": ["echo", "user"]}}}}]}}
            }),
        ),
    )
    .await
    .unwrap();
    wait_phase(&env, "inj-ok", "Running").await;
    let pod = pods.get("inj-ok").await.unwrap();
    let spec = pod.spec.unwrap();
    assert_eq!(spec.init_containers.as_ref().unwrap()[0].name, "runtime");
    let main = &spec.containers[0];
    assert_eq!(main.env.as_ref().unwrap()[0].name, "ENVD_DIR");
    let cmd = main
        .lifecycle
        .clone()
        .unwrap()
        .post_start
        .unwrap()
        .exec
        .unwrap()
        .command
        .unwrap();
    assert_eq!(cmd, ["bash", "/mnt/envd/envd-run.sh", "--", "echo", "user"]);

    // agent-runtime is skipped when the user already has a container with the sidecar's name.
    api.create(&PostParams::default(), &sandbox("inj-skip", json!({
        "runtimes": [{"name": "agent-runtime"}],
        "template": {"spec": {"initContainers": [{"name": "runtime", "image": "mine", "restartPolicy": "Always"}],
            "containers": [{"name": "main", "image": "python:3"}]}}
    }))).await.unwrap();
    wait_phase(&env, "inj-skip", "Running").await;
    let spec = pods.get("inj-skip").await.unwrap().spec.unwrap();
    assert_eq!(spec.init_containers.as_ref().unwrap().len(), 1);
    assert_eq!(
        spec.init_containers.as_ref().unwrap()[0].image.as_deref(),
        Some("mine")
    );
    assert!(spec.containers[0].env.is_none(), "nothing injected");

    // Generic runtime: a container-name conflict blocks the pod; labels never override the user's.
    api.create(&PostParams::default(), &sandbox("inj-conflict", json!({
        "runtimes": [{"name": "traffic-proxy"}],
        "template": {"spec": {"containers": [{"name": "main", "image": "python:3"}, {"name": "proxy", "image": "mine"}]}}
    }))).await.unwrap();
    api.create(&PostParams::default(), &sandbox("inj-labels", json!({
        "runtimes": [{"name": "traffic-proxy"}],
        "template": {"metadata": {"labels": {"mesh": "off"}}, "spec": {"containers": [{"name": "main", "image": "python:3"}]}}
    }))).await.unwrap();
    // Declared runtime missing from the ConfigMap: no pod, stays Pending.
    api.create(
        &PostParams::default(),
        &sandbox("inj-missing", json!({"runtimes": [{"name": "csi"}]})),
    )
    .await
    .unwrap();
    wait_phase(&env, "inj-labels", "Running").await;
    let labels_pod = pods.get("inj-labels").await.unwrap();
    assert_eq!(labels_pod.labels()["mesh"], "off");
    assert_eq!(labels_pod.spec.unwrap().containers.len(), 2);
    tokio::time::sleep(Duration::from_secs(3)).await;
    for name in ["inj-conflict", "inj-missing"] {
        assert!(
            pods.get_opt(name).await.unwrap().is_none(),
            "{name} must not get a pod"
        );
        let s = phase(&env, name).await.unwrap();
        assert_eq!(phase_of(&s), "Pending", "{name}");
    }
    let log = env.controller_log();
    assert!(
        log.contains("inject conflicting with container proxy"),
        "conflict is reported"
    );
    assert!(
        log.contains("injection template csi not found"),
        "missing template is reported"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_manifests_apply_unchanged_and_work() {
    let env = Env::new("seeds").await;
    let dir = test_support::repo_root().join("tests/controller/seeds");
    for f in [
        "sandbox.yaml",
        "sandboxset-code-interpreter.yaml",
        "sandboxclaim.yaml",
    ] {
        let text = std::fs::read_to_string(dir.join(f)).unwrap();
        env.cluster
            .apply_yaml_str_in(&text, &env.ns)
            .await
            .unwrap_or_else(|e| panic!("{f}: {e}"));
    }
    // The bare sandbox gets its PVC and its pod.
    wait_phase(&env, "sandbox-sample", "Running").await;
    let pvcs: Api<PersistentVolumeClaim> = env.api();
    let pvc = pvcs
        .get("www-sandbox-sample")
        .await
        .expect("PVC from volumeClaimTemplates");
    assert_eq!(pvc.owner_references()[0].name, "sandbox-sample");
    // The misspelt key survives in the schemaless template.
    let raw: Api<kube::api::DynamicObject> = Api::namespaced_with(
        env.client(),
        &env.ns,
        &kube::api::ApiResource::erase::<SandboxSet>(&()),
    );
    let set = raw.get("code-interpreter").await.unwrap();
    assert_eq!(
        set.data["spec"]["template"]["spec"]["containers"][0]["ImagePullPolicy"],
        "IfNotPresent"
    );
    // The claim takes 3 sandboxes (2 from stock, the rest created) with its labels.
    let claims: Api<SandboxClaim> = env.api();
    env.eventually(
        "sample claim completes",
        Duration::from_secs(90),
        || async {
            let c = claims
                .get("sandboxclaim-sample")
                .await
                .map_err(|e| e.to_string())?;
            let st = c.status.unwrap_or_default();
            if st.phase.as_deref() == Some("Completed") && st.claimed_replicas == 3 {
                Ok(())
            } else {
                Err(format!("{st:?}"))
            }
        },
    )
    .await;
    let claimed = env.sandboxes("claim-id=sandboxclaim-sample").await;
    assert_eq!(claimed.len(), 3);
    for s in claimed {
        assert_eq!(s.labels()[LABEL_SANDBOX_CLAIMED], "true");
        assert_eq!(s.annotations()["claim-purpose"], "integration-test");
        // Upstream skips runtime init for a set that neither declares `agent-runtime` nor has an
        // init container named `runtime` (this one's is called `init`).
        assert!(
            !s.annotations()
                .contains_key(ANNOTATION_INIT_RUNTIME_REQUEST)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn controller_killed_mid_way_converges_after_restart() {
    let mut env = Env::new("crash").await;
    let sets: Api<SandboxSet> = env.api();
    let set: SandboxSet = serde_json::from_value(json!({
        "apiVersion": "agents.kruise.io/v1alpha1", "kind": "SandboxSet", "metadata": {"name": "crash"},
        "spec": {"replicas": 30, "template": {"spec": {"containers": [{"name": "main", "image": "python:3"}]}}}
    })).unwrap();
    sets.create(&PostParams::default(), &set).await.unwrap();
    let claim: SandboxClaim = serde_json::from_value(json!({
        "apiVersion": "agents.kruise.io/v1alpha1", "kind": "SandboxClaim", "metadata": {"name": "crash-claim"},
        "spec": {"templateName": "crash", "replicas": 5, "claimTimeout": "2m"}
    })).unwrap();
    env.api::<SandboxClaim>()
        .create(&PostParams::default(), &claim)
        .await
        .unwrap();
    // Kill -9 while the pool is filling.
    env.eventually("some sandboxes exist", Duration::from_secs(30), || async {
        let n = env
            .sandboxes(&format!("{LABEL_SANDBOX_POOL}=crash"))
            .await
            .len();
        if n >= 5 { Ok(()) } else { Err(format!("{n}")) }
    })
    .await;
    env.controller.as_mut().unwrap().child.kill_now();
    tokio::time::sleep(Duration::from_secs(2)).await;
    env.controller = Some(ControllerProcess::start(
        env.cluster,
        &env.ns,
        &["--leader-elect"],
    ));

    env.eventually(
        "pool and claim converge",
        Duration::from_secs(120),
        || async {
            let all = env.sandboxes(&format!("{LABEL_SANDBOX_POOL}=crash")).await;
            let live: Vec<&Sandbox> = all
                .iter()
                .filter(|s| s.metadata.deletion_timestamp.is_none())
                .collect();
            let unused = live
                .iter()
                .filter(|s| {
                    s.labels().get(LABEL_SANDBOX_CLAIMED).map(String::as_str) == Some("false")
                })
                .count();
            let claimed = live
                .iter()
                .filter(|s| {
                    s.labels().get(LABEL_SANDBOX_CLAIMED).map(String::as_str) == Some("true")
                })
                .count();
            let ready = live
                .iter()
                .filter(|s| sandbox_api::state::is_ready(s))
                .count();
            let c = env
                .api::<SandboxClaim>()
                .get("crash-claim")
                .await
                .map_err(|e| e.to_string())?;
            let st = c.status.unwrap_or_default();
            if unused == 30
                && claimed == 5
                && ready == 35
                && st.claimed_replicas == 5
                && st.phase.as_deref() == Some("Completed")
            {
                Ok(())
            } else {
                Err(format!(
                    "unused={unused} claimed={claimed} ready={ready} claim={:?}/{}",
                    st.phase, st.claimed_replicas
                ))
            }
        },
    )
    .await;
    // Nothing duplicated: every pod belongs to exactly one live sandbox and vice versa.
    let pods: Api<Pod> = env.api();
    let pod_list = pods.list(&Default::default()).await.unwrap();
    let live_pods = pod_list
        .items
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .count();
    assert_eq!(live_pods, 35);
    // The restarted controller holds the lease.
    let leases: Api<k8s_openapi::api::coordination::v1::Lease> = env.api();
    let lease = leases
        .get("f57b9a68.kruise.io")
        .await
        .expect("leader lease");
    assert!(lease.spec.unwrap().holder_identity.is_some());
}

/// Creates a SandboxSet whose pods declare the runtime init container (so claims initialise
/// them) and run `command` (JSON argv for the node simulator).
async fn create_runtime_set(env: &Env, name: &str, replicas: i32, command: &str) {
    let set: SandboxSet = serde_json::from_value(json!({
        "apiVersion": "agents.kruise.io/v1alpha1", "kind": "SandboxSet", "metadata": {"name": name},
        "spec": {"replicas": replicas, "template": {
            "metadata": {"annotations": {kube_harness::COMMAND_ANNOTATION: command}},
            "spec": {"initContainers": [{"name": "runtime", "image": "agent-runtime:test", "restartPolicy": "Always"}],
                     "containers": [{"name": "main", "image": "python:3"}]}}}
    }))
    .unwrap();
    env.api::<SandboxSet>()
        .create(&PostParams::default(), &set)
        .await
        .unwrap();
}

/// A stand-in runtime for the pod process: records the body of `POST /init` in its work
/// directory (the real agent-runtime is not built yet; the HTTP path is the same).
const INIT_RECORDER: &str = r#"
import http.server, os, sys
class H(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get('content-length', 0)))
        if self.path == '/init':
            with open(os.path.join(sys.argv[3], 'init.json'), 'wb') as f:
                f.write(body)
        self.send_response(204)
        self.end_headers()
    def do_GET(self):
        self.send_response(200)
        self.end_headers()
http.server.ThreadingHTTPServer((sys.argv[1], int(sys.argv[2])), H).serve_forever()
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claim_env_vars_reach_the_runtime_through_init() {
    let env = Env::new("init").await;
    let command = serde_json::to_string(&[
        "python3",
        "-c",
        INIT_RECORDER,
        "{ip}",
        "{port}",
        "{workdir}",
    ])
    .unwrap();
    create_runtime_set(&env, "rt", 1, &command).await;
    let claim: SandboxClaim = serde_json::from_value(json!({
        "apiVersion": "agents.kruise.io/v1alpha1", "kind": "SandboxClaim", "metadata": {"name": "with-env"},
        "spec": {"templateName": "rt", "envVars": {"API_KEY": "sk-1", "DEBUG": "true"}}
    })).unwrap();
    env.api::<SandboxClaim>()
        .create(&PostParams::default(), &claim)
        .await
        .unwrap();
    // The claim counts its sandbox once the claim's own `/init` went through.
    let sbx = claimed_and_initialised(&env, "with-env").await;
    let sim = env
        .sim
        .pod(&env.ns, &sbx.name_any())
        .expect("simulated pod");
    let body: serde_json::Value = serde_json::from_slice(
        &std::fs::read(sim.workdir.join("init.json")).expect("init.json written"),
    )
    .unwrap();
    assert_eq!(body["envVars"]["API_KEY"], "sk-1");
    assert_eq!(body["envVars"]["DEBUG"], "true");
    assert_eq!(
        body["accessToken"].as_str(),
        sbx.annotations()
            .get(ANNOTATION_RUNTIME_ACCESS_TOKEN)
            .map(String::as_str)
    );

    // The claim's labels reach the pod as a metadata-only in-place update: the pod is patched
    // and the sandbox moves to the new revision without an InplaceUpdate condition (upstream:
    // "patched directly without touching conditions"; only image/resource changes wait).
    let pods: Api<Pod> = env.api();
    let sandboxes: Api<Sandbox> = env.api();
    let claim_uid = env
        .api::<SandboxClaim>()
        .get("with-env")
        .await
        .unwrap()
        .metadata
        .uid
        .unwrap();
    let done = env
        .eventually(
            "pod relabelled, sandbox at the new revision",
            Duration::from_secs(60),
            || async {
                let p = pods.get(&sbx.name_any()).await.map_err(|e| e.to_string())?;
                let s = sandboxes
                    .get(&sbx.name_any())
                    .await
                    .map_err(|e| e.to_string())?;
                let rev = s.status.as_ref().and_then(|st| st.update_revision.clone());
                let labels = p.labels();
                if labels.get(ANNOTATION_OWNER) == Some(&claim_uid)
                    && labels.get(LABEL_CLAIM_NAME).map(String::as_str) == Some("with-env")
                    && rev.is_some()
                    && labels.get(LABEL_POD_TEMPLATE_HASH) == rev.as_ref()
                {
                    Ok(s)
                } else {
                    Err(format!("pod labels {labels:?}, sandbox revision {rev:?}"))
                }
            },
        )
        .await;
    let conditions = done.status.unwrap_or_default().conditions;
    assert!(
        !conditions.iter().any(|c| c.type_ == "InplaceUpdate"),
        "a metadata-only change sets no InplaceUpdate condition: {conditions:?}"
    );
}

/// The sandbox `claim` took, once the claim reports it (its `/init` is sent before that).
async fn claimed_and_initialised(env: &Env, claim: &str) -> Sandbox {
    let claims = env.api::<SandboxClaim>();
    env.eventually(
        "claim counts its sandbox",
        Duration::from_secs(60),
        || async {
            let c = claims.get(claim).await.map_err(|e| e.to_string())?;
            let counted = c.status.as_ref().map_or(0, |s| s.claimed_replicas);
            if counted < 1 {
                return Err(format!("status {:?}", c.status));
            }
            env.sandboxes(&format!("agents.kruise.io/claim-name={claim}"))
                .await
                .into_iter()
                .next()
                .ok_or_else(|| "claim counted a sandbox the list lacks".to_string())
        },
    )
    .await
}

fn reserved_selector(claim: &str) -> String {
    format!("agents.kruise.io/claim-name={claim},agents.kruise.io/reserved-failed-sandbox=true")
}

/// The first sandbox `claim` reserved as failed, waited for.
async fn reserved_for(env: &Env, claim: &str, timeout: Duration) -> Sandbox {
    env.eventually(
        &format!("a sandbox reserved as failed by {claim}"),
        timeout,
        || async {
            env.sandboxes(&reserved_selector(claim))
                .await
                .into_iter()
                .next()
                .ok_or_else(|| "none reserved yet".to_string())
        },
    )
    .await
}

/// A runtime that refuses `/init` (400), for the failed-claim paths.
const INIT_REFUSER: &str = r#"
import http.server, sys
class H(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        self.rfile.read(int(self.headers.get('content-length', 0)))
        self.send_response(400)
        self.send_header('content-type', 'application/json')
        self.end_headers()
        self.wfile.write(b'{"message":"refused","code":400}')
    def do_GET(self):
        self.send_response(200)
        self.end_headers()
http.server.ThreadingHTTPServer((sys.argv[1], int(sys.argv[2])), H).serve_forever()
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sandboxes_whose_runtime_refuses_init_are_reserved_or_deleted_and_not_counted() {
    let env = Env::new("initfail").await;
    let command =
        serde_json::to_string(&["python3", "-c", INIT_REFUSER, "{ip}", "{port}"]).unwrap();
    create_runtime_set(&env, "refuse", 1, &command).await;
    // The same runtime in a set with no pool: the claim creates its sandbox, waits for it to be
    // Ready and initialises it inline.
    create_runtime_set(&env, "refuse-empty", 0, &command).await;
    // A set whose container exits at once: the claim's new sandbox never gets Ready and the wait
    // gives up as soon as the container is seen failing to start, long before waitReadyTimeout.
    create_runtime_set(
        &env,
        "crash",
        0,
        r#"["python3", "-c", "raise SystemExit(3)"]"#,
    )
    .await;
    let crashy: SandboxClaim = serde_json::from_value(json!({
        "apiVersion": "agents.kruise.io/v1alpha1", "kind": "SandboxClaim", "metadata": {"name": "crashy"},
        "spec": {"templateName": "crash", "reserveFailedSandbox": true, "waitReadyTimeout": "300s",
                 "claimTimeout": "600s"}
    }))
    .unwrap();
    env.api::<SandboxClaim>()
        .create(&PostParams::default(), &crashy)
        .await
        .unwrap();
    let claims = env.api::<SandboxClaim>();
    for (name, set, reserve, create) in [
        ("keep", "refuse", true, false),
        ("drop", "refuse", false, false),
        ("fresh", "refuse-empty", true, true),
    ] {
        let claim: SandboxClaim = serde_json::from_value(json!({
            "apiVersion": "agents.kruise.io/v1alpha1", "kind": "SandboxClaim", "metadata": {"name": name},
            "spec": {"templateName": set, "reserveFailedSandbox": reserve,
                     "createOnNoStock": create, "claimTimeout": "600s"}
        }))
        .unwrap();
        claims.create(&PostParams::default(), &claim).await.unwrap();
    }
    let keep_uid = claims.get("keep").await.unwrap().uid().unwrap();

    // reserveFailedSandbox: the sandbox stays, labelled and still owned, but is not counted.
    let reserved = reserved_for(&env, "keep", Duration::from_secs(60)).await;
    assert_eq!(
        reserved.annotations().get(ANNOTATION_OWNER),
        Some(&keep_uid),
        "a reserved sandbox keeps its owner"
    );
    // Without it, failed sandboxes are deleted: "drop" never keeps one.
    let events: Api<k8s_openapi::api::events::v1::Event> = env.api();
    env.eventually(
        "a deleted failed sandbox",
        Duration::from_secs(60),
        || async {
            let l = events
                .list(&Default::default())
                .await
                .map_err(|e| e.to_string())?;
            let failed: Vec<(String, String)> = l
                .items
                .iter()
                .filter(|e| e.reason.as_deref() == Some("ClaimSandboxFailed"))
                .map(|e| {
                    (
                        e.regarding
                            .as_ref()
                            .and_then(|r| r.name.clone())
                            .unwrap_or_default(),
                        e.note.clone().unwrap_or_default(),
                    )
                })
                .collect();
            if failed
                .iter()
                .any(|(claim, note)| claim == "drop" && note.ends_with("deleted"))
            {
                Ok(())
            } else {
                Err(format!("{failed:?}"))
            }
        },
    )
    .await;
    // A sandbox the claim created; a crashing one well before waitReadyTimeout (300 s).
    reserved_for(&env, "fresh", Duration::from_secs(60)).await;
    reserved_for(&env, "crashy", Duration::from_secs(90)).await;
    // No claim counts a failed sandbox.
    for name in ["keep", "drop", "fresh", "crashy"] {
        let c = claims.get(name).await.unwrap();
        let counted = c.status.as_ref().map_or(0, |s| s.claimed_replicas);
        assert_eq!(counted, 0, "{name}: {:?}", c.status);
        assert_ne!(
            c.status.as_ref().and_then(|s| s.phase.as_deref()),
            Some("Completed"),
            "{name} keeps claiming"
        );
    }
    let reserved_by_drop = env.sandboxes(&reserved_selector("drop")).await;
    assert!(
        reserved_by_drop.is_empty(),
        "drop reserves nothing: {:?}",
        reserved_by_drop
            .iter()
            .map(|s| s.name_any())
            .collect::<Vec<_>>()
    );
}

fn http_get(port: u16, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let code = out
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (code, out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_health_events_and_graceful_shutdown() {
    let mut env = Env::new("ops").await;
    env.controller.as_mut().unwrap().child.kill_now();
    env.controller = Some(ControllerProcess::start(
        env.cluster,
        &env.ns,
        &["--leader-elect"],
    ));
    let port = env.controller.as_ref().unwrap().metrics_port;
    let api: Api<Sandbox> = env.api();
    api.create(&PostParams::default(), &sandbox("m1", json!({})))
        .await
        .unwrap();
    wait_phase(&env, "m1", "Running").await;
    let text = env
        .eventually("metrics exposed", Duration::from_secs(20), || async {
            let (code, body) = http_get(port, "/metrics");
            if code == 200
                && body.contains("sandbox_controller_reconcile_total{controller=\"sandbox\"}")
            {
                Ok(body)
            } else {
                Err(body)
            }
        })
        .await;
    assert!(text.contains("sandbox_controller_pods_created_total"));
    assert!(
        text.contains("sandbox_controller_leader 1"),
        "leader gauge set"
    );
    assert_eq!(http_get(port, "/healthz").0, 200);
    assert_eq!(http_get(port, "/readyz").0, 200);
    // Phase events are recorded on the sandbox.
    let events: Api<k8s_openapi::api::events::v1::Event> = env.api();
    env.eventually("SandboxRunning event", Duration::from_secs(20), || async {
        let l = events
            .list(&Default::default())
            .await
            .map_err(|e| e.to_string())?;
        let reasons: Vec<String> = l.items.iter().filter_map(|e| e.reason.clone()).collect();
        if reasons.iter().any(|r| r == "SandboxRunning") {
            Ok(())
        } else {
            Err(format!("{reasons:?}"))
        }
    })
    .await;
    // SIGTERM: clean exit and the lease is released for a standby.
    let ctl = env.controller.as_mut().unwrap();
    ctl.child.signal(15);
    let status = tokio::time::timeout(Duration::from_secs(25), ctl.child.wait())
        .await
        .expect("exits after SIGTERM");
    assert!(status.success(), "exit status {status:?}\n{}", ctl.log());
    let leases: Api<k8s_openapi::api::coordination::v1::Lease> = env.api();
    let lease = leases.get("f57b9a68.kruise.io").await.unwrap();
    assert!(
        lease.spec.unwrap().holder_identity.is_none(),
        "lease released on shutdown"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standby_takes_over_when_the_leader_dies() {
    let mut env = Env::new("leader").await;
    env.controller.as_mut().unwrap().child.kill_now();
    let args = ["--leader-elect", "--leader-elect-lease-seconds", "4"];
    let mut a = ControllerProcess::start(env.cluster, &env.ns, &args);
    let leases: Api<k8s_openapi::api::coordination::v1::Lease> = env.api();
    let first = env
        .eventually("a leader", Duration::from_secs(20), || async {
            let l = leases
                .get_opt("f57b9a68.kruise.io")
                .await
                .map_err(|e| e.to_string())?;
            l.and_then(|l| l.spec?.holder_identity)
                .ok_or_else(|| "no holder".to_string())
        })
        .await;
    let b = ControllerProcess::start(env.cluster, &env.ns, &args);
    let sets: Api<SandboxSet> = env.api();
    let set: SandboxSet = serde_json::from_value(json!({
        "apiVersion": "agents.kruise.io/v1alpha1", "kind": "SandboxSet", "metadata": {"name": "ha"},
        "spec": {"replicas": 3, "template": {"spec": {"containers": [{"name": "main", "image": "python:3"}]}}}
    })).unwrap();
    sets.create(&PostParams::default(), &set).await.unwrap();
    let avail = |n: i32| {
        let sets = sets.clone();
        async move {
            let s = sets.get("ha").await.map_err(|e| e.to_string())?;
            let a = s.status.map(|s| s.available_replicas).unwrap_or(0);
            if a == n {
                Ok(())
            } else {
                Err(format!("{a} available"))
            }
        }
    };
    env.eventually("leader fills the pool", Duration::from_secs(60), || {
        avail(3)
    })
    .await;
    // The standby must not act while the leader lives: its metrics show no reconciles.
    let (_, standby_metrics) = http_get(b.metrics_port, "/metrics");
    assert!(
        standby_metrics.contains("sandbox_controller_leader 0"),
        "{standby_metrics}"
    );
    assert!(
        !standby_metrics.contains("sandbox_controller_reconcile_total{"),
        "standby reconciled"
    );
    a.child.kill_now();
    sets.patch(
        "ha",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"replicas": 5}})),
    )
    .await
    .unwrap();
    env.eventually(
        "standby took over and scaled the pool",
        Duration::from_secs(60),
        || avail(5),
    )
    .await;
    let holder = leases
        .get("f57b9a68.kruise.io")
        .await
        .unwrap()
        .spec
        .unwrap()
        .holder_identity
        .unwrap();
    assert_ne!(holder, first, "the lease moved to the standby");
    env.controller = Some(b);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claim_env_vars_reach_the_real_agent_runtime() {
    let env = Env::with_agent_runtime("init-real").await;
    let set: SandboxSet = serde_json::from_value(json!({
        "apiVersion": "agents.kruise.io/v1alpha1", "kind": "SandboxSet", "metadata": {"name": "agents"},
        "spec": {"replicas": 1, "template": {"spec": {
            "initContainers": [{"name": "runtime", "image": "agent-runtime:test", "restartPolicy": "Always"}],
            "containers": [{"name": "main", "image": "python:3"}]}}}
    })).unwrap();
    env.api::<SandboxSet>()
        .create(&PostParams::default(), &set)
        .await
        .unwrap();
    let claim: SandboxClaim = serde_json::from_value(json!({
        "apiVersion": "agents.kruise.io/v1alpha1", "kind": "SandboxClaim", "metadata": {"name": "agent"},
        "spec": {"templateName": "agents", "envVars": {"API_KEY": "sk-real", "MODE": "test"}}
    })).unwrap();
    env.api::<SandboxClaim>()
        .create(&PostParams::default(), &claim)
        .await
        .unwrap();
    // The claim counts its sandbox once the claim's own `/init` went through.
    let sbx = claimed_and_initialised(&env, "agent").await;
    let ip = sbx.status.as_ref().unwrap().sandbox_ip.clone().unwrap();
    let token = sbx.annotations()[ANNOTATION_RUNTIME_ACCESS_TOKEN].clone();
    // Ask the runtime itself, with the token the controller handed it.
    let get_envs = |token: &str| {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect((ip.as_str(), kube_harness::AGENT_RUNTIME_PORT))
            .expect("runtime answers");
        write!(
            s,
            "GET /envs HTTP/1.1\r\nHost: x\r\nX-Access-Token: {token}\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    };
    let out = get_envs(&token);
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(
        out.contains("\"API_KEY\":\"sk-real\"") && out.contains("\"MODE\":\"test\""),
        "{out}"
    );
    assert!(
        get_envs("wrong-token").starts_with("HTTP/1.1 401"),
        "the runtime now requires the claim's token"
    );
}
