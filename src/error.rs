//! What an error means for the exit status: a usage or configuration error
//! (2) is marked with [`UsageError`]; everything else at run time is 1.

use std::fmt;

/// Marks an error as the caller's to fix (bad argument, bad configuration).
#[derive(Debug)]
pub struct UsageError(pub String);

impl fmt::Display for UsageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

pub fn usage(msg: impl Into<String>) -> anyhow::Error {
    UsageError(msg.into()).into()
}

pub fn is_usage(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| cause.is::<UsageError>())
}

/// Marks why a container cannot be brought to the host's version at all
/// (its files cannot be read, a packaged driver it may not replace, a CUDA
/// toolkit refused): the admin's to change, told as a warning rather than
/// as a failed install. Used as an error or as context.
#[derive(Debug)]
pub struct Refused(pub String);

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Refused {}

pub fn refused(msg: impl Into<String>) -> anyhow::Error {
    Refused(msg.into()).into()
}

pub fn is_refused(err: &anyhow::Error) -> bool {
    err.downcast_ref::<Refused>().is_some()
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context;

    #[test]
    fn a_refusal_is_found_under_any_context() {
        let err = Err::<(), _>(refused("purging would remove the toolkit"))
            .context("stage cleanup")
            .context("installing")
            .unwrap_err();
        assert!(is_refused(&err));
        let as_context = Err::<(), _>(anyhow::anyhow!("EACCES"))
            .context(Refused("cannot read".into()))
            .context("installing")
            .unwrap_err();
        assert!(is_refused(&as_context));
        assert!(!is_refused(&anyhow::anyhow!("exit status 1")));
        assert!(!is_usage(&err));
    }
}
