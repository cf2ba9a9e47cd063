//! Path resolution as envd does it: an empty path is the default workdir (or the user's home),
//! `~` and `~/x` expand to the user's home, relative paths resolve against the user's home, and
//! the result is lexically cleaned (`.`, `..`, duplicate slashes).

use std::path::{Component, Path, PathBuf};

/// Why a path could not be resolved.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("cannot expand user-specific home dir in '{0}'")]
    OtherUsersHome(String),
    #[error("path contains a NUL byte")]
    Nul,
}

/// Lexically cleans an absolute path (no file system access).
pub fn clean(path: &Path) -> PathBuf {
    let mut out = PathBuf::from("/");
    for c in path.components() {
        match c {
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
            Component::ParentDir => {
                out.pop();
            }
            Component::Normal(n) => out.push(n),
        }
    }
    out
}

/// Resolves `path` for a user with home `home`; `default_workdir` applies to an empty path.
pub fn expand_and_resolve(
    path: &str,
    home: &Path,
    default_workdir: Option<&Path>,
) -> Result<PathBuf, PathError> {
    if path.contains('\0') {
        return Err(PathError::Nul);
    }
    let path: PathBuf = if path.is_empty() {
        match default_workdir {
            Some(w) => w.to_path_buf(),
            None => PathBuf::new(),
        }
    } else if let Some(rest) = path.strip_prefix('~') {
        if rest.is_empty() {
            home.to_path_buf()
        } else if let Some(r) = rest.strip_prefix('/') {
            home.join(r)
        } else {
            return Err(PathError::OtherUsersHome(path.to_string()));
        }
    } else {
        PathBuf::from(path)
    };
    if path.is_absolute() {
        Ok(clean(&path))
    } else {
        Ok(clean(&home.join(path)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(p: &str, wd: Option<&str>) -> Result<String, PathError> {
        expand_and_resolve(p, Path::new("/home/user"), wd.map(Path::new))
            .map(|p| p.display().to_string())
    }

    #[test]
    fn resolution_rules() {
        assert_eq!(r("", None).unwrap(), "/home/user");
        assert_eq!(r("", Some("/work")).unwrap(), "/work");
        assert_eq!(r("a.txt", Some("/work")).unwrap(), "/home/user/a.txt");
        assert_eq!(r("~", None).unwrap(), "/home/user");
        assert_eq!(r("~/x/../y", None).unwrap(), "/home/user/y");
        assert_eq!(r("/tmp//a/./b/..", None).unwrap(), "/tmp/a");
        assert_eq!(r("../../../etc", None).unwrap(), "/etc");
        assert_eq!(r("/..", None).unwrap(), "/");
        assert!(matches!(
            r("~root/x", None),
            Err(PathError::OtherUsersHome(_))
        ));
        assert_eq!(r("a\0b", None), Err(PathError::Nul));
    }

    proptest::proptest! {
        #[test]
        fn always_absolute_and_clean(p in "[a-z./~]{0,20}") {
            if let Ok(x) = expand_and_resolve(&p, Path::new("/h"), None) {
                proptest::prop_assert!(x.is_absolute());
                let s = x.display().to_string();
                proptest::prop_assert!(!s.contains("/./") && !s.contains("//") && !s.contains("/../"));
            }
        }
    }
}
