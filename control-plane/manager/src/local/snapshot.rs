//! Files of local sandboxes: copying a home directory for a snapshot (and back into a new
//! sandbox), the snapshot records, and the runtime's log lines.

use std::collections::BTreeMap;
use std::io;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::Path;

use crate::model::{LogLine, SnapshotRecord};

/// Copies `src` to `dst` (created): directories, regular files with their permission bits, and
/// symlinks as symlinks. Sockets, FIFOs and devices are skipped.
pub fn copy_tree(src: &Path, dst: &Path) -> io::Result<()> {
    std::fs::create_dir_all(dst)?;
    std::fs::set_permissions(dst, std::fs::metadata(src)?.permissions())?;
    for entry in std::fs::read_dir(src)? {
        let entry = entry?;
        let ft = entry.file_type()?;
        let (from, to) = (entry.path(), dst.join(entry.file_name()));
        if ft.is_dir() {
            copy_tree(&from, &to)?;
        } else if ft.is_symlink() {
            symlink(std::fs::read_link(&from)?, &to)?;
        } else if ft.is_file() {
            std::fs::copy(&from, &to)?;
            let mode = entry.metadata()?.permissions().mode();
            std::fs::set_permissions(&to, std::fs::Permissions::from_mode(mode))?;
        }
    }
    Ok(())
}

/// Every snapshot record under `dir` (`<id>/snapshot.json`); unreadable ones are logged.
pub fn load_all(dir: &Path) -> Vec<SnapshotRecord> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    rd.filter_map(Result::ok)
        .filter_map(|e| {
            match crate::store::read_json::<SnapshotRecord>(&e.path().join("snapshot.json")) {
                Ok(Some(s)) => Some(s),
                Ok(None) => {
                    tracing::warn!(dir = %e.path().display(), "snapshot without a record; ignored");
                    None
                }
                Err(err) => {
                    tracing::error!(error = %err, "unreadable snapshot record; ignored");
                    None
                }
            }
        })
        .collect()
}

/// The last `limit` lines of a runtime's JSON log as log lines (non-JSON lines are kept as
/// plain messages).
pub fn read_logs(path: &Path, limit: usize) -> Vec<LogLine> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(limit)..]
        .iter()
        .map(|l| parse_line(l))
        .collect()
}

fn parse_line(line: &str) -> LogLine {
    let v: serde_json::Value = serde_json::from_str(line).unwrap_or(serde_json::Value::Null);
    let timestamp = v["timestamp"]
        .as_str()
        .and_then(|t| t.parse().ok())
        .unwrap_or(jiff::Timestamp::UNIX_EPOCH);
    let mut fields = BTreeMap::new();
    if let Some(obj) = v["fields"].as_object() {
        for (k, val) in obj {
            if k != "message" {
                fields.insert(
                    k.clone(),
                    val.as_str()
                        .map(str::to_string)
                        .unwrap_or_else(|| val.to_string()),
                );
            }
        }
    }
    LogLine {
        timestamp,
        level: v["level"].as_str().unwrap_or("info").to_ascii_lowercase(),
        message: v["fields"]["message"]
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| line.to_string()),
        fields,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_files_modes_and_links() {
        let d = tempfile::tempdir().unwrap();
        let src = d.path().join("src");
        std::fs::create_dir_all(src.join("a/b")).unwrap();
        std::fs::write(src.join("a/b/f.sh"), "echo").unwrap();
        std::fs::set_permissions(src.join("a/b/f.sh"), std::fs::Permissions::from_mode(0o750))
            .unwrap();
        symlink("a/b/f.sh", src.join("link")).unwrap();
        let dst = d.path().join("dst");
        copy_tree(&src, &dst).unwrap();
        assert_eq!(
            std::fs::read_to_string(dst.join("a/b/f.sh")).unwrap(),
            "echo"
        );
        let mode = std::fs::metadata(dst.join("a/b/f.sh"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o750);
        assert_eq!(
            std::fs::read_link(dst.join("link")).unwrap(),
            Path::new("a/b/f.sh")
        );
    }

    #[test]
    fn log_lines_from_json_and_text() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("runtime.log");
        std::fs::write(
            &p,
            "{\"timestamp\":\"2026-12-03T10:00:00Z\",\"level\":\"INFO\",\"fields\":{\"message\":\"process started\",\"pid\":7}}\nplain\n",
        )
        .unwrap();
        let l = read_logs(&p, 10);
        assert_eq!(l.len(), 2);
        assert_eq!(l[0].message, "process started");
        assert_eq!(l[0].level, "info");
        assert_eq!(l[0].fields["pid"], "7");
        assert_eq!(l[1].message, "plain");
        assert_eq!(read_logs(&p, 1).len(), 1);
    }
}
