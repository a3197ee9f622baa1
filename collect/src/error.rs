//! The one error type the pipeline returns: a message meant for the user, saying what failed
//! and what to do about it.

use std::fmt;

/// A failure that ends a command (nothing already collected is lost: the pipeline writes
/// what it has before it returns one where it can).
#[derive(Debug)]
pub struct Error {
    /// What failed, why, and the fix where there is one.
    pub message: String,
    /// The exit status psample should end with (1, or a shell's 126/127 when a launched
    /// command could not be started).
    pub exit_code: i32,
}

impl Error {
    /// An error with this message.
    pub fn new(message: impl Into<String>) -> Self {
        Error {
            message: message.into(),
            exit_code: 1,
        }
    }

    /// An error ending psample with `exit_code` instead of 1.
    pub fn with_exit_code(message: impl Into<String>, exit_code: i32) -> Self {
        Error {
            message: message.into(),
            exit_code,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        Error::new(e.to_string())
    }
}
