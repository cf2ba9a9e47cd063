//! One home for turning a failed system call on a path the client named into the client-facing
//! answer: the Connect code for RPCs and the HTTP status for `/files`. A client's mistake (a
//! name too long, a symlink loop, a directory moved into itself) is a 4xx, never a 500; 5xx is
//! left for what the daemon itself cannot do.

use std::io;

use http::StatusCode;

use crate::connect::{Code, RpcError};

/// A failed step and its I/O error; the classification looks at the error, the message at both.
#[derive(Debug, thiserror::Error)]
#[error("{context}: {source}")]
pub struct Failed {
    pub context: String,
    #[source]
    pub source: io::Error,
}

impl Failed {
    pub fn new(context: impl Into<String>, source: io::Error) -> Self {
        Failed {
            context: context.into(),
            source,
        }
    }

    /// The RPC error for this failure.
    pub fn to_rpc(&self) -> RpcError {
        rpc_error(&self.source, &self.context)
    }
}

/// The Connect code of an I/O error caused by a request.
pub fn code_of(e: &io::Error) -> Code {
    let Some(errno) = e.raw_os_error() else {
        return match e.kind() {
            io::ErrorKind::NotFound => Code::NotFound,
            io::ErrorKind::PermissionDenied => Code::PermissionDenied,
            io::ErrorKind::AlreadyExists => Code::AlreadyExists,
            io::ErrorKind::InvalidInput
            | io::ErrorKind::InvalidData
            | io::ErrorKind::NotADirectory
            | io::ErrorKind::IsADirectory => Code::InvalidArgument,
            _ => Code::Internal,
        };
    };
    match errno {
        libc::ENOENT | libc::ENOTDIR => Code::NotFound,
        libc::ELOOP => Code::FailedPrecondition,
        libc::EACCES | libc::EPERM | libc::EROFS => Code::PermissionDenied,
        // A name longer than NAME_MAX/PATH_MAX, a rename into its own subtree, a directory
        // where a file is needed.
        libc::ENAMETOOLONG | libc::EINVAL | libc::EISDIR => Code::InvalidArgument,
        libc::EEXIST => Code::AlreadyExists,
        // EPIPE: the process closed its end of stdin.
        libc::ENOTEMPTY | libc::EBUSY | libc::EXDEV | libc::ETXTBSY | libc::EPIPE => {
            Code::FailedPrecondition
        }
        libc::ENOSPC | libc::EDQUOT | libc::EMFILE | libc::ENFILE | libc::EFBIG => {
            Code::ResourceExhausted
        }
        _ => Code::Internal,
    }
}

/// An RPC error for a failed operation: `what` says which step failed.
pub fn rpc_error(e: &io::Error, what: &str) -> RpcError {
    let code = code_of(e);
    let message = match e.raw_os_error() {
        Some(libc::ELOOP) => format!("{what}: cyclic symlink or chain >255 links: {e}"),
        _ => format!("{what}: {e}"),
    };
    RpcError::new(code, message)
}

/// The HTTP status of an I/O error on `/files`: the Connect mapping, except that a full disk is
/// 507 Insufficient Storage, as envd answers uploads.
pub fn http_status_of(e: &io::Error) -> StatusCode {
    match e.raw_os_error() {
        Some(libc::ENOSPC) | Some(libc::EDQUOT) => StatusCode::INSUFFICIENT_STORAGE,
        _ => code_of(e).http_status(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_mistakes_are_4xx() {
        for (errno, status) in [
            (libc::ENAMETOOLONG, 400),
            (libc::EINVAL, 400),
            (libc::ELOOP, 412),
            (libc::ENOENT, 404),
            (libc::ENOTDIR, 404),
            (libc::EACCES, 403),
            (libc::EEXIST, 409),
            (libc::ENOTEMPTY, 412),
            (libc::ENOSPC, 507),
            (libc::EMFILE, 429),
            (libc::EIO, 500),
        ] {
            let e = io::Error::from_raw_os_error(errno);
            assert_eq!(http_status_of(&e).as_u16(), status, "errno {errno}");
        }
        assert_eq!(
            code_of(&io::Error::from(io::ErrorKind::NotFound)),
            Code::NotFound
        );
    }
}
