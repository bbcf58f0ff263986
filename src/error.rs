//! The one error type the CLI treats specially: a usage error (a flag out of range, options that
//! contradict each other) exits with status 2 like clap's own parse errors; everything else exits 1.

use std::fmt;

/// An error in how the tool was invoked, as opposed to a failure while running.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageError(pub String);

impl fmt::Display for UsageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

/// Exit status for an error chain: 2 if any link is a [`UsageError`], else 1.
pub fn exit_code(err: &anyhow::Error) -> i32 {
    if err.chain().any(|e| e.is::<UsageError>()) {
        2
    } else {
        1
    }
}

/// A file or directory that is not there, with the message a user sees. It is an
/// `std::io::Error` of kind `NotFound` underneath, so that a caller can tell a missing file from
/// bad contents (the Python module raises `FileNotFoundError` for it, `ValueError` for the rest).
pub fn not_found(message: String) -> anyhow::Error {
    std::io::Error::new(std::io::ErrorKind::NotFound, message).into()
}

/// Whether the error is a write to a closed pipe (stdout piped into `head`, say).
pub fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|e| e.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe))
}

/// A non-finite loss or gradient: the step was not applied.
#[derive(Debug, Clone, PartialEq)]
pub struct Diverged(pub String);

impl std::fmt::Display for Diverged {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Diverged {}
