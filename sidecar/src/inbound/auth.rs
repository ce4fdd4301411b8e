//! SMTP AUTH on a hub's listener (RFC 4954 with PLAIN, RFC 4616): the one credential of the
//! Relay, read from its files at each attempt so that a rotated Secret applies at once. A
//! listener without `listen.auth` offers no AUTH and refuses the command.

use super::{
    reply::{self, Reply},
    session::{Flow, Session},
};
use crate::{config::ListenAuth, message::MessageSink};
use base64::{Engine, engine::general_purpose::STANDARD};
use tokio::io::{AsyncRead, AsyncWrite};

/// RFC 4954 6: 235 2.7.0.
const AUTH_OK: Reply = Reply::new(235, "2.7.0", "Authentication successful");
/// RFC 4954 6: 535 5.7.8.
pub(super) const AUTH_FAILED: Reply = Reply::new(535, "5.7.8", "Authentication credentials invalid");
/// RFC 4954 6: 530 5.7.0 before MAIL when AUTH is required.
pub(super) const AUTH_REQUIRED: Reply = Reply::new(530, "5.7.0", "Authentication required");
/// A hub takes hand-offs (MAIL with XHANDOFF) and nothing else.
pub(super) const HANDOFF_ONLY: Reply = Reply::new(
    550,
    "5.7.1",
    "This hub takes hand-offs only (MAIL with XHANDOFF, docs/hub.md)",
);
/// RFC 4954 6: 454 4.7.0, the credential could not be checked now.
const AUTH_TEMPORARY: Reply = Reply::new(454, "4.7.0", "Temporary authentication failure");
/// RFC 4954 4: 504 5.5.4 for a mechanism we do not offer.
const AUTH_MECHANISM: Reply = Reply::new(504, "5.5.4", "Unrecognized authentication type; use PLAIN");
const AUTH_TWICE: Reply = Reply::new(503, "5.5.1", "Already authenticated");
const AUTH_IN_TRANSACTION: Reply = Reply::new(503, "5.5.1", "AUTH not allowed during a mail transaction");
/// RFC 4954 4: 501 for a response that is not base64, or a cancelled exchange.
const AUTH_BAD_RESPONSE: Reply = Reply::new(501, "5.5.2", "Cannot decode the AUTH response");
const AUTH_CANCELLED: Reply = Reply::new(501, "5.0.0", "Authentication cancelled");
/// RFC 4954 4: an empty challenge.
const CONTINUE: &[u8] = b"334 \r\n";

// === impl Session (AUTH) ===

impl<S, K> Session<S, K>
where
    S: AsyncRead + AsyncWrite + Unpin,
    K: MessageSink,
{
    /// `AUTH <mechanism> [initial-response]`.
    pub(super) fn auth(&mut self, mechanism: u64, initial: &str) -> Flow {
        if self.config.listen.auth.is_none() {
            return self.bad(reply::NOT_IMPLEMENTED);
        }
        if self.helo.as_ref().is_none_or(|h| !h.extended) {
            return self.bad(reply::NEED_HELO);
        }
        if self.authenticated {
            return self.bad(AUTH_TWICE);
        }
        if self.tx.is_some() {
            return self.bad(AUTH_IN_TRANSACTION);
        }
        if mechanism != smtp_proto::AUTH_PLAIN {
            return self.bad(AUTH_MECHANISM);
        }
        if initial.is_empty() {
            self.output.extend_from_slice(CONTINUE);
            self.auth_pending = true;
            return Flow::Continue;
        }
        self.plain(initial)
    }

    /// The client's answer to our `334`.
    pub(super) fn auth_response(&mut self, line: &[u8]) -> Flow {
        self.auth_pending = false;
        let line = line.strip_suffix(b"\n").unwrap_or(line);
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        match std::str::from_utf8(line) {
            // RFC 4954 4: "*" cancels the exchange.
            Ok("*") => self.bad(AUTH_CANCELLED),
            Ok(text) => self.plain(text),
            Err(_) => self.bad(AUTH_BAD_RESPONSE),
        }
    }

    fn plain(&mut self, response: &str) -> Flow {
        // RFC 4954 4: "=" is an empty initial response.
        let decoded = match response {
            "=" => Ok(Vec::new()),
            text => STANDARD.decode(text),
        };
        let Ok(decoded) = decoded else {
            return self.bad(AUTH_BAD_RESPONSE);
        };
        let Some(auth) = self.config.listen.auth.clone() else {
            return self.bad(reply::NOT_IMPLEMENTED);
        };
        match verify(&decoded, &auth) {
            Ok(true) => {
                self.authenticated = true;
                self.reply(AUTH_OK)
            }
            Ok(false) => {
                self.metrics.auth_failures.inc();
                tracing::warn!(peer = %self.peer, "AUTH failed: wrong credentials");
                self.bad(AUTH_FAILED)
            }
            Err(error) => {
                tracing::error!(%error, "cannot read the listener's credential files");
                self.reply(AUTH_TEMPORARY)
            }
        }
    }
}

/// Checks a decoded PLAIN message (`authzid NUL authcid NUL passwd`, RFC 4616 2) against the
/// credential files. An authorization identity other than the user's own is refused.
fn verify(decoded: &[u8], auth: &ListenAuth) -> std::io::Result<bool> {
    let mut parts = decoded.split(|&b| b == 0);
    let (Some(authzid), Some(user), Some(password), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Ok(false);
    };
    let want_user = std::fs::read(&auth.username_file)?;
    let want_password = std::fs::read(&auth.password_file)?;
    let (want_user, want_password) = (trim(&want_user), trim(&want_password));
    if want_user.is_empty() || want_password.is_empty() {
        return Err(std::io::Error::other("the user name or password file is empty"));
    }
    let user_ok = same(user, want_user);
    let password_ok = same(password, want_password);
    Ok(user_ok & password_ok & (authzid.is_empty() || authzid == user))
}

/// A Secret's file may end with a newline that is not part of the value.
fn trim(value: &[u8]) -> &[u8] {
    let value = value.strip_suffix(b"\n").unwrap_or(value);
    value.strip_suffix(b"\r").unwrap_or(value)
}

/// Compares digests, so the time taken says nothing about how much of a secret matched.
fn same(a: &[u8], b: &[u8]) -> bool {
    let digest = |v: &[u8]| ring::digest::digest(&ring::digest::SHA256, v);
    digest(a).as_ref() == digest(b).as_ref()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_accepts_the_credential_and_nothing_else() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (user, password) = (dir.path().join("u"), dir.path().join("p"));
        std::fs::write(&user, "hub\n").expect("write");
        std::fs::write(&password, "s3cret").expect("write");
        let auth = ListenAuth {
            username_file: user,
            password_file: password,
        };
        assert!(verify(b"\0hub\0s3cret", &auth).expect("files readable"));
        assert!(verify(b"hub\0hub\0s3cret", &auth).expect("files readable"));
        for bad in [
            &b"\0hub\0s3cre"[..],
            b"\0hub\0s3cret\0",
            b"\0hu\0s3cret",
            b"other\0hub\0s3cret",
            b"hub\0s3cret",
            b"",
        ] {
            assert!(!verify(bad, &auth).expect("files readable"), "{bad:?}");
        }
        std::fs::write(&auth.password_file, "").expect("write");
        assert!(
            verify(b"\0hub\0", &auth).is_err(),
            "an empty password file is never a match"
        );
    }
}
