//! The requested mount path as a symbolic link to where the volume was published.

use std::io::ErrorKind;
use std::path::{Component, Path};

fn check(p: &Path, what: &str) -> Result<(), String> {
    if p.as_os_str().is_empty() {
        return Err(format!("invalid {what} path: path must not be empty"));
    }
    if p.components().any(|c| c == Component::ParentDir) {
        return Err(format!(
            "invalid {what} path: path must not contain '..' segments: {}",
            p.display()
        ));
    }
    Ok(())
}

/// Makes `link` a symbolic link to the directory `target`: its parent is created; an existing
/// link is replaced (kept when it already points there), an empty directory is replaced, a file
/// or a non-empty directory is refused (nothing of the user's is ever removed).
pub fn create_symlink(target: &Path, link: &Path) -> Result<(), String> {
    let fail = |e: String| {
        format!(
            "failed to create symlink {} -> {}: {e}",
            link.display(),
            target.display()
        )
    };
    check(target, "target").map_err(fail)?;
    check(link, "link").map_err(fail)?;
    match std::fs::metadata(target) {
        Err(_) => return Err(fail(format!("target does not exist: {}", target.display()))),
        Ok(m) if !m.is_dir() => {
            return Err(fail(format!(
                "target is not a directory: {}",
                target.display()
            )));
        }
        Ok(_) => {}
    }
    if let Some(parent) = link.parent() {
        std::fs::create_dir_all(parent).map_err(|e| fail(e.to_string()))?;
    }
    match std::fs::symlink_metadata(link) {
        Err(e) if e.kind() == ErrorKind::NotFound => {}
        Err(e) => return Err(fail(e.to_string())),
        Ok(m) if m.file_type().is_symlink() => {
            if std::fs::read_link(link).is_ok_and(|t| t == target) {
                return Ok(());
            }
            std::fs::remove_file(link).map_err(|e| fail(e.to_string()))?;
        }
        Ok(m) if m.is_dir() => {
            let empty = std::fs::read_dir(link)
                .map_err(|e| fail(e.to_string()))?
                .next()
                .is_none();
            if !empty {
                return Err(fail(format!(
                    "cannot create symlink: directory is not empty: {}",
                    link.display()
                )));
            }
            std::fs::remove_dir(link).map_err(|e| fail(e.to_string()))?;
        }
        Ok(_) => {
            return Err(fail(format!(
                "link path exists as a non-directory: {}",
                link.display()
            )));
        }
    }
    std::os::unix::fs::symlink(target, link).map_err(|e| fail(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_replace_only_what_holds_nothing() {
        let d = tempfile::tempdir().unwrap();
        let target = d.path().join("vol");
        std::fs::create_dir(&target).unwrap();
        let link = d.path().join("a/b/data");
        create_symlink(&target, &link).unwrap();
        assert_eq!(std::fs::read_link(&link).unwrap(), target);
        create_symlink(&target, &link).unwrap();

        let empty = d.path().join("empty");
        std::fs::create_dir(&empty).unwrap();
        create_symlink(&target, &empty).unwrap();
        assert!(
            std::fs::symlink_metadata(&empty)
                .unwrap()
                .file_type()
                .is_symlink()
        );

        let full = d.path().join("full");
        std::fs::create_dir(&full).unwrap();
        std::fs::write(full.join("keep"), b"x").unwrap();
        let e = create_symlink(&target, &full).unwrap_err();
        assert!(e.contains("directory is not empty"), "{e}");
        assert!(full.join("keep").exists());

        let file = d.path().join("file");
        std::fs::write(&file, b"x").unwrap();
        assert!(
            create_symlink(&target, &file)
                .unwrap_err()
                .contains("non-directory")
        );
        assert!(
            create_symlink(&d.path().join("missing"), &d.path().join("l"))
                .unwrap_err()
                .contains("target does not exist")
        );
        assert!(
            create_symlink(&target, Path::new("/tmp/../etc/x"))
                .unwrap_err()
                .contains("'..'")
        );
    }
}
