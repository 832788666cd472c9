//! The replies that depend on the settings alone: the greeting, HELO's and EHLO's. Each thread builds them once
//! for the sessions it runs one after another, and builds them again only for sessions with other settings.

use std::borrow::Cow;
use std::cell::RefCell;

use super::reply::Reply;
use super::verbs::{self, ehlo_keywords};
use super::{Session, SessionParams};

/// The replies built for one host name and message size limit: all the settings they depend on (the EHLO
/// keywords' parameters read only those, see [`Extension`](super::Extension)).
struct Fixed {
    hostname: String,
    max_message_size: u64,
    greeting: Reply,
    helo: Reply,
    /// The EHLO replies built so far, by which of the sometimes-announced verbs they announce
    /// ([`verbs::announced_now`]).
    ehlo: Vec<(u32, Reply)>,
}

impl Fixed {
    fn new(params: &SessionParams) -> Fixed {
        let hostname = &params.hostname;
        Fixed {
            hostname: hostname.clone(),
            max_message_size: params.max_message_size,
            greeting: Reply::plain(220, format!("{hostname} ESMTP Postel")).shared(),
            helo: Reply::plain(250, hostname.clone()).shared(),
            ehlo: Vec::new(),
        }
    }

    fn fits(&self, params: &SessionParams) -> bool {
        self.hostname == params.hostname && self.max_message_size == params.max_message_size
    }
}

thread_local! {
    static FIXED: RefCell<Option<Fixed>> = const { RefCell::new(None) };
}

/// Calls `f` with the replies for `params`, built now if this thread has none for them.
fn with_fixed<R>(params: &SessionParams, f: impl FnOnce(&mut Fixed) -> R) -> R {
    FIXED.with_borrow_mut(|fixed| match fixed {
        Some(fixed) if fixed.fits(params) => f(fixed),
        _ => f(fixed.insert(Fixed::new(params))),
    })
}

/// The 220 greeting.
pub(super) fn greeting(params: &SessionParams) -> Reply {
    with_fixed(params, |fixed| fixed.greeting.clone())
}

/// The reply to HELO.
pub(super) fn helo(params: &SessionParams) -> Reply {
    with_fixed(params, |fixed| fixed.helo.clone())
}

/// The reply to EHLO: the host name, then the keywords `session` announces now.
pub(super) fn ehlo(session: &Session) -> Reply {
    let announced = verbs::announced_now(session);
    with_fixed(&session.params, |fixed| {
        if let Some((_, reply)) = fixed.ehlo.iter().find(|(bits, _)| *bits == announced) {
            return reply.clone();
        }
        let mut lines = vec![Cow::Owned(fixed.hostname.clone())];
        lines.extend(ehlo_keywords(session));
        let reply = Reply::lines(250, None, lines).shared();
        fixed.ehlo.push((announced, reply.clone()));
        reply
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::smtp::harness::{TestPolicy, params};

    #[test]
    fn each_reply_is_built_for_the_settings_and_the_keywords_announced_now() {
        let text = |reply: &Reply| reply.to_string();
        let plain = Session::new(params(), Box::new(TestPolicy::default()));
        assert_eq!(text(&greeting(&plain.params)), "220 mx.test ESMTP Postel");
        let first = ehlo(&plain);
        assert!(text(&first).contains("SIZE 1000") && text(&first).contains("STARTTLS"));
        assert_eq!(ehlo(&plain), first, "built once, the same again");

        let mut encrypted = Session::new(params(), Box::new(TestPolicy::default()));
        encrypted.tls_started("TLSv1.3".into());
        let inside = ehlo(&encrypted);
        assert!(!text(&inside).contains("STARTTLS") && text(&inside).contains("AUTH"));
        assert_eq!(ehlo(&plain), first, "each variant keeps its own");

        let other = SessionParams {
            hostname: "other.test".into(),
            max_message_size: 50,
            ..params()
        };
        let other = Session::new(other, Box::new(TestPolicy::default()));
        assert_eq!(text(&helo(&other.params)), "250 other.test");
        assert!(text(&ehlo(&other)).starts_with("250 other.test / PIPELINING / SIZE 50 / "));
    }
}
