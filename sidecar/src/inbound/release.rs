//! `XRELEASE` on a hub: a sidecar is done with messages it holds shadow copies of here
//! (docs/hub.md, "Shadow copies"); the sink drops those copies.

use super::{
    auth::AUTH_REQUIRED,
    reply::{self, Reply},
    session::{Flow, Session},
};
use crate::message::{MessageSink, handoff};
use tokio::io::{AsyncRead, AsyncWrite};

const BAD_KEYS: Reply = Reply::new(501, "5.5.4", "XRELEASE takes one or more hand-off keys");
const IN_TRANSACTION: Reply = Reply::new(503, "5.5.1", "XRELEASE not allowed during a mail transaction");

impl<S, K> Session<S, K>
where
    S: AsyncRead + AsyncWrite + Unpin,
    K: MessageSink,
{
    /// `XRELEASE <key> [<key> …]`; `args` is the line after the verb.
    pub(super) async fn release(&mut self, args: &[u8]) -> Flow {
        if self.config.shadows.is_none() {
            return self.bad(reply::NOT_IMPLEMENTED);
        }
        if !self.authenticated {
            return self.bad(AUTH_REQUIRED);
        }
        if self.tx.is_some() {
            return self.bad(IN_TRANSACTION);
        }
        let keys = std::str::from_utf8(args)
            .ok()
            .and_then(|a| handoff::parse_release(a.trim_end_matches(['\r', '\n'])));
        let Some(keys) = keys else {
            return self.bad(BAD_KEYS);
        };
        let keys: Vec<String> = keys.into_iter().map(str::to_owned).collect();
        let released = self.sink.release_shadows(keys).await;
        self.reply(Reply::dynamic(250, "2.0.0", format!("{released} released")))
    }
}
