//! The kernels installed in the kernels' virtualenv (`<venv>/share/jupyter/kernels/*/kernel.json`,
//! where `pip install ipykernel` and `python -m bash_kernel.install --sys-prefix` put them), and
//! which one serves a language.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use jupyter_protocol::JupyterKernelspec;

/// A kernel that can be started: its name, language and command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelSpec {
    pub name: String,
    /// Normalized (lowercase) language, e.g. `python`, `bash`.
    pub language: String,
    /// Command line with the `{connection_file}` placeholder.
    pub argv: Vec<String>,
    pub env: BTreeMap<String, String>,
}

impl KernelSpec {
    /// ipykernel: gets the E2B display formatters and the IPython settings.
    pub fn is_ipykernel(&self) -> bool {
        self.argv.iter().any(|a| a == "ipykernel_launcher")
    }

    /// The command line for a connection file. A bare or stale interpreter name (`python`,
    /// as ipykernel's own spec says, or an absolute path from wherever the venv was built) is
    /// the venv's Python: every kernel installed there runs on it.
    pub fn command_line(&self, venv: &Path, connection_file: &Path) -> Vec<String> {
        let python = venv.join("bin").join("python").display().to_string();
        self.argv
            .iter()
            .enumerate()
            .map(|(i, a)| {
                if a == "{connection_file}" {
                    connection_file.display().to_string()
                } else if i == 0 && is_python_name(a) {
                    python.clone()
                } else {
                    a.clone()
                }
            })
            .collect()
    }
}

fn is_python_name(arg: &str) -> bool {
    let base = Path::new(arg)
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or(arg);
    base == "python"
        || base
            .strip_prefix("python3")
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('.'))
}

/// Every kernel of a venv, by language.
#[derive(Debug, Clone, Default)]
pub struct KernelSpecs {
    specs: Vec<KernelSpec>,
}

impl KernelSpecs {
    /// Reads `<venv>/share/jupyter/kernels`. Unreadable or malformed specs are skipped with a
    /// warning; a venv without any kernel is an error.
    pub fn load(venv: &Path) -> Result<Self, String> {
        let dir = kernels_dir(venv);
        let entries =
            std::fs::read_dir(&dir).map_err(|e| format!("no kernels in {}: {e}", dir.display()))?;
        let mut specs = Vec::new();
        for entry in entries.flatten() {
            let path = entry.path().join("kernel.json");
            let name = entry.file_name().to_string_lossy().to_string();
            match std::fs::read(&path)
                .map_err(|e| e.to_string())
                .and_then(|b| Self::parse(&name, &b))
            {
                Ok(spec) => specs.push(spec),
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "skipping a kernelspec")
                }
            }
        }
        if specs.is_empty() {
            return Err(format!("no kernelspec in {}", dir.display()));
        }
        specs.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(Self { specs })
    }

    /// One `kernel.json`.
    pub fn parse(name: &str, json: &[u8]) -> Result<KernelSpec, String> {
        let spec: JupyterKernelspec = serde_json::from_slice(json).map_err(|e| e.to_string())?;
        if spec.argv.is_empty() {
            return Err("empty argv".into());
        }
        Ok(KernelSpec {
            name: name.to_string(),
            language: spec.language.to_ascii_lowercase(),
            argv: spec.argv,
            env: spec.env.unwrap_or_default().into_iter().collect(),
        })
    }

    pub fn from_specs(specs: Vec<KernelSpec>) -> Self {
        Self { specs }
    }

    /// The kernel for a normalized language: the one named like it (`python3` for Python),
    /// else the first of that language.
    pub fn for_language(&self, language: &str) -> Option<&KernelSpec> {
        let preferred = if language == "python" {
            "python3"
        } else {
            language
        };
        self.specs
            .iter()
            .find(|s| s.language == language && s.name == preferred)
            .or_else(|| self.specs.iter().find(|s| s.language == language))
    }

    /// The languages that have a kernel, for error messages.
    pub fn languages(&self) -> Vec<String> {
        let mut l: Vec<String> = self.specs.iter().map(|s| s.language.clone()).collect();
        l.sort();
        l.dedup();
        l
    }
}

pub fn kernels_dir(venv: &Path) -> PathBuf {
    venv.join("share").join("jupyter").join("kernels")
}

#[cfg(test)]
mod tests {
    use super::*;

    const IPYKERNEL: &[u8] =
        br#"{"argv": ["python", "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python 3 (ipykernel)", "language": "python",
        "metadata": {"debugger": true}, "kernel_protocol_version": "5.5"}"#;
    const BASH: &[u8] = br#"{"argv": ["/old/venv/bin/python", "-m", "bash_kernel", "-f", "{connection_file}"],
        "codemirror_mode": "shell", "display_name": "Bash", "env": {"PS1": "$"}, "language": "bash"}"#;

    #[test]
    fn specs_as_pip_installs_them() {
        let py = KernelSpecs::parse("python3", IPYKERNEL).unwrap();
        assert!(py.is_ipykernel());
        assert_eq!(
            py.command_line(Path::new("/v"), Path::new("/r/k1.json")),
            [
                "/v/bin/python",
                "-m",
                "ipykernel_launcher",
                "-f",
                "/r/k1.json"
            ]
        );
        let bash = KernelSpecs::parse("bash", BASH).unwrap();
        assert!(!bash.is_ipykernel());
        assert_eq!(bash.env.get("PS1").map(String::as_str), Some("$"));
        assert_eq!(
            bash.command_line(Path::new("/v"), Path::new("/c.json"))[0],
            "/v/bin/python"
        );
        assert!(
            KernelSpecs::parse(
                "x",
                br#"{"argv": [], "display_name": "x", "language": "x"}"#
            )
            .is_err()
        );
        assert!(KernelSpecs::parse("x", b"{").is_err());
    }

    #[test]
    fn a_language_finds_its_kernel() {
        let mut other_py = KernelSpecs::parse("python3", IPYKERNEL).unwrap();
        other_py.name = "aaa-python".into();
        let specs = KernelSpecs::from_specs(vec![
            other_py,
            KernelSpecs::parse("python3", IPYKERNEL).unwrap(),
            KernelSpecs::parse("bash", BASH).unwrap(),
        ]);
        assert_eq!(specs.for_language("python").unwrap().name, "python3");
        assert_eq!(specs.for_language("bash").unwrap().name, "bash");
        assert!(specs.for_language("r").is_none());
        assert_eq!(specs.languages(), ["bash", "python"]);
    }

    #[test]
    fn only_interpreters_are_replaced() {
        for (arg, is) in [
            ("python", true),
            ("python3", true),
            ("python3.11", true),
            ("/usr/bin/python3", true),
            ("/opt/deno", false),
            ("pythonista", false),
            ("R", false),
        ] {
            assert_eq!(is_python_name(arg), is, "{arg}");
        }
    }

    #[test]
    fn load_reads_a_venv() {
        let dir = tempfile::tempdir().unwrap();
        let kernels = kernels_dir(dir.path());
        std::fs::create_dir_all(kernels.join("python3")).unwrap();
        std::fs::write(kernels.join("python3/kernel.json"), IPYKERNEL).unwrap();
        std::fs::create_dir_all(kernels.join("broken")).unwrap();
        std::fs::write(kernels.join("broken/kernel.json"), b"nope").unwrap();
        let specs = KernelSpecs::load(dir.path()).unwrap();
        assert_eq!(specs.languages(), ["python"]);
        assert!(KernelSpecs::load(&dir.path().join("missing")).is_err());
    }
}
