//! The kernel layer against the real kernels of the kernels' virtualenv (`make kernels`,
//! `CODE_INTERPRETER_KERNELS_VENV`): start, execute and the messages that come back, interrupt,
//! a dead kernel, bash, and a context's life (state, env vars, restart) without HTTP.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use code_interpreter::contexts::{Contexts, Settings};
use code_interpreter::kernel::{Kernel, KernelEvent, LaunchConfig};
use code_interpreter::kernelspec::KernelSpecs;
use code_interpreter::protocol::{CellTracker, ExecuteRequest, OutputLine, Target};
use serde_json::Value;

struct Setup {
    _dir: tempfile::TempDir,
    home: PathBuf,
    venv: PathBuf,
    launch: LaunchConfig,
}

fn setup() -> Setup {
    let venv = test_support::artifact_from_env("CODE_INTERPRETER_KERNELS_VENV");
    let dir = tempfile::Builder::new().prefix("ci-").tempdir().unwrap();
    let home = dir.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    let startup = dir.path().join("ipython_startup.py");
    std::fs::write(&startup, include_str!("../kernel/ipython_startup.py")).unwrap();
    let launch = LaunchConfig {
        venv: venv.clone(),
        runtime_dir: dir.path().to_path_buf(),
        ipython_startup: startup,
        startup_timeout: Duration::from_secs(90),
    };
    Setup {
        _dir: dir,
        home,
        venv,
        launch,
    }
}

/// Runs a cell to its end; returns its lines as JSON.
async fn run(kernel: &Kernel, code: &str) -> Vec<Value> {
    let mut pending = kernel.execute(code, false).await.unwrap();
    let mut tracker = CellTracker::new();
    let mut lines = Vec::new();
    while !tracker.is_done() {
        match tokio::time::timeout(Duration::from_secs(60), pending.next())
            .await
            .expect("the cell ends")
        {
            KernelEvent::Message(m) => {
                if let Some(l) = tracker.on_message(&m) {
                    lines.push(serde_json::from_slice(&l.to_bytes()).unwrap());
                }
            }
            KernelEvent::Died(why) => panic!("kernel died: {why}"),
        }
    }
    lines
}

#[tokio::test]
async fn a_python_kernel_runs_cells_and_can_be_interrupted_and_killed() {
    let s = setup();
    let specs = KernelSpecs::load(&s.venv).unwrap();
    let kernel = Kernel::launch(specs.for_language("python").unwrap(), &s.home, &s.launch)
        .await
        .unwrap();

    let lines = run(&kernel, "import os\nprint(os.getcwd())\n6 * 7").await;
    assert_eq!(lines[0]["type"], "number_of_executions");
    assert_eq!(lines[1]["type"], "stdout");
    assert_eq!(lines[1]["text"], format!("{}\n", s.home.display()));
    assert_eq!(lines[2]["text"], "42");
    assert_eq!(lines[2]["is_main_result"], true);

    // The E2B formatters are installed: a DataFrame carries its columns.
    let lines = run(
        &kernel,
        "import pandas as pd\npd.DataFrame({'a': [1.5, float('nan')]})",
    )
    .await;
    assert_eq!(lines[1]["data"], serde_json::json!({"a": [1.5, null]}));

    // Interrupt: the cell ends with KeyboardInterrupt; the kernel lives on. As the service
    // does it: once the kernel took the cell and a moment later (a SIGINT that reaches
    // ipykernel outside the cell is caught by its message loop), repeated until it ends.
    let mut pending = kernel
        .execute("import time; time.sleep(60)", false)
        .await
        .unwrap();
    let mut tracker = CellTracker::new();
    let mut error = None;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !tracker.is_done() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the interrupt did not end the cell"
        );
        if tracker.interruptible() {
            tokio::time::sleep(Duration::from_millis(100)).await;
            kernel.interrupt().await.unwrap();
        }
        let Ok(event) = tokio::time::timeout(Duration::from_millis(500), pending.next()).await
        else {
            continue;
        };
        let KernelEvent::Message(m) = event else {
            panic!("died")
        };
        if let Some(OutputLine::Error { name, .. }) = tracker.on_message(&m) {
            error = Some(name);
        }
    }
    assert_eq!(error.as_deref(), Some("KeyboardInterrupt"));
    assert_eq!(run(&kernel, "1 + 1").await[1]["text"], "2");

    // A killed kernel: whoever waits hears it died.
    let mut pending = kernel
        .execute("import time; time.sleep(60)", false)
        .await
        .unwrap();
    kernel.kill();
    loop {
        match tokio::time::timeout(Duration::from_secs(30), pending.next())
            .await
            .unwrap()
        {
            KernelEvent::Died(why) => {
                assert!(why.contains("signal 9"), "{why}");
                break;
            }
            KernelEvent::Message(_) => {}
        }
    }
    assert!(kernel.is_dead());
    assert!(kernel.execute("1", false).await.is_err());
}

#[tokio::test]
async fn contexts_keep_state_undo_call_env_vars_and_restart() {
    let s = setup();
    let contexts = Arc::new(Contexts::new(
        KernelSpecs::load(&s.venv).unwrap(),
        Settings {
            launch: s.launch.clone(),
            workdir: s.home.clone(),
            max_contexts: 4,
            interrupt_timeout: Duration::from_secs(5),
        },
    ));
    let python = contexts
        .resolve(&Target::Language("python".into()))
        .await
        .unwrap();
    let sandbox = Arc::new(BTreeMap::from([(
        "SANDBOX".to_string(),
        "wide".to_string(),
    )]));

    let exec = |code: &str, vars: &[(&str, &str)]| {
        let req = ExecuteRequest {
            code: code.into(),
            context_id: None,
            language: None,
            env_vars: Some(
                vars.iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            ),
        };
        let ctx = Arc::clone(&python);
        let envs = Arc::clone(&sandbox);
        async move {
            let mut rx = ctx.execute(req, envs).await.unwrap();
            let mut lines: Vec<Value> = Vec::new();
            while let Some(b) = rx.recv().await {
                lines.push(serde_json::from_slice(&b).unwrap());
            }
            assert_eq!(lines.last().unwrap()["type"], "end_of_execution");
            lines
        }
    };
    let text = |lines: &[Value]| {
        lines
            .iter()
            .find(|l| l["type"] == "result")
            .map(|l| l["text"].as_str().unwrap().to_string())
    };

    exec("k = 'kept'", &[]).await;
    let probe = "import os; (os.environ.get('SANDBOX'), os.environ.get('CALL'))";
    assert_eq!(
        text(&exec(probe, &[("CALL", "x")]).await).unwrap(),
        "('wide', 'x')"
    );
    assert_eq!(text(&exec(probe, &[]).await).unwrap(), "('wide', None)");
    assert_eq!(text(&exec("k", &[]).await).unwrap(), "kept");

    // A bash context beside it.
    let bash = contexts.create("bash", None).await.unwrap();
    assert_eq!(bash.language, "bash");
    assert_eq!(contexts.list().len(), 2);

    // Restart: same context, fresh kernel.
    contexts.restart(&python.id).await.unwrap();
    let after = exec("k", &[]).await;
    assert_eq!(after[1]["name"], "NameError", "{after:?}");

    contexts.remove(&bash.id).unwrap();
    assert!(contexts.remove(&bash.id).is_err());
    assert!(contexts.create("cobol", None).await.is_err());
    contexts.kill_all();
}
