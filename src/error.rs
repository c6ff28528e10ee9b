//! The one printer for an error and its causes, used wherever an error reaches an operator.
//!
//! The gateway's errors follow hyper's rule: an error's `Display` says only what was being
//! done (with the key, file or address at fault) and its cause comes from `source()`, never
//! quoted in the text as well. So no level repeats another, and [`Chain`] prints each once.

use std::error::Error;
use std::fmt;

/// An error and every cause under it on one line, joined by `: `: "listen: cannot bind
/// 0.0.0.0:443: Permission denied (os error 13)". Use it for exit messages, config check
/// lines, reload failures and `error = %Chain(&e)` log fields; plain `{e}` says only the
/// first level.
#[derive(Clone, Copy)]
pub struct Chain<'a>(pub &'a (dyn Error + 'a));

impl fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut cause = self.0.source();
        while let Some(e) = cause {
            write!(f, ": {e}")?;
            cause = e.source();
        }
        Ok(())
    }
}

impl fmt::Debug for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::Chain;
    use std::io;

    #[derive(Debug, thiserror::Error)]
    #[error("starting")]
    struct Top(#[source] Middle);

    #[derive(Debug, thiserror::Error)]
    #[error("reading config file /etc/x.yaml")]
    struct Middle(#[source] io::Error);

    #[test]
    fn a_three_level_chain_prints_each_level_once() {
        let e = Top(Middle(io::Error::from(io::ErrorKind::PermissionDenied)));
        assert_eq!(
            Chain(&e).to_string(),
            "starting: reading config file /etc/x.yaml: permission denied"
        );
        assert_eq!(Chain(&io::Error::other("alone")).to_string(), "alone");
    }
}
