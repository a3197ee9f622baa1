//! The one error type the pipeline returns: a message meant for the user, saying what failed
//! and what to do about it.

use std::fmt;

/// A failure that ends a command (nothing already collected is lost: the pipeline writes
/// what it has before it returns one where it can).
#[derive(Debug)]
pub struct Error {
    /// What failed, why, and the fix where there is one.
    pub message: String,
}

impl Error {
    /// An error with this message.
    pub fn new(message: impl Into<String>) -> Self {
        Error {
            message: message.into(),
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
