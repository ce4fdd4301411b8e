//! `kubectl mailroom test-send`: one message into one pod's sidecar through a port-forward (the
//! sidecar listens on the pod's loopback, where a port-forward arrives), then followed with
//! `mailroom-sidecar queue status` until it leaves the queue.

use anyhow::{Context, Result, bail, ensure};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

/// Sends the SMTP transaction over `stream`; returns the sidecar's queue id from its `250`.
pub async fn smtp<S>(stream: S, from: &str, to: &str, message: &str) -> Result<String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let mut conn = BufReader::new(stream);
    expect(&mut conn, 220).await?;
    let mut queued = String::new();
    for (line, code) in [
        ("EHLO kubectl-mailroom".to_owned(), 250),
        (format!("MAIL FROM:<{from}>"), 250),
        (format!("RCPT TO:<{to}>"), 250),
        ("DATA".to_owned(), 354),
    ] {
        conn.get_mut().write_all(format!("{line}\r\n").as_bytes()).await?;
        expect(&mut conn, code)
            .await
            .with_context(|| format!("the sidecar refused {line}"))?;
    }
    // RFC 5321 4.5.2: a line starting with a dot gets another.
    let mut body = String::new();
    for line in message.lines() {
        if line.starts_with('.') {
            body.push('.');
        }
        body.push_str(line);
        body.push_str("\r\n");
    }
    body.push_str(".\r\n");
    conn.get_mut().write_all(body.as_bytes()).await?;
    let reply = expect(&mut conn, 250)
        .await
        .context("the sidecar refused the message")?;
    if let Some(id) = reply.split("queued as ").nth(1) {
        queued = id.trim().to_owned();
    }
    // The message is queued: a failed QUIT changes nothing.
    let _ = conn.get_mut().write_all(b"QUIT\r\n").await;
    ensure!(!queued.is_empty(), "the sidecar's 250 names no queue id: {reply}");
    Ok(queued)
}

/// Reads one (possibly multi-line) reply; fails unless its code is `code`. Returns its last line.
async fn expect<S: tokio::io::AsyncRead + Unpin>(conn: &mut BufReader<S>, code: u16) -> Result<String> {
    loop {
        let mut line = String::new();
        if conn.read_line(&mut line).await? == 0 {
            bail!("the connection closed");
        }
        let line = line.trim_end().to_owned();
        let got: u16 = line
            .get(..3)
            .and_then(|c| c.parse().ok())
            .context("not an SMTP reply")?;
        if line.as_bytes().get(3) == Some(&b'-') {
            continue;
        }
        ensure!(got == code, "{line}");
        return Ok(line);
    }
}

/// A plain test message.
pub fn message(from: &str, to: &str, now: &str) -> String {
    format!(
        "From: {from}\nTo: {to}\nSubject: mailroom test message\nDate: {now}\n\
         Message-ID: <kubectl-mailroom.{}@{}>\n\nSent by kubectl mailroom test-send.\n",
        std::process::id(),
        from.rsplit('@').next().unwrap_or("localhost")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_transaction_reads_the_queue_id_and_dot_stuffs() {
        let (client, server) = tokio::io::duplex(4096);
        let peer = tokio::spawn(async move {
            let mut s = BufReader::new(server);
            s.get_mut().write_all(b"220 hi\r\n").await.expect("greeting");
            let mut seen = String::new();
            for reply in ["250-x\r\n250 ok\r\n", "250 ok\r\n", "250 ok\r\n", "354 go\r\n"] {
                let mut l = String::new();
                s.read_line(&mut l).await.expect("command");
                seen.push_str(&l);
                s.get_mut().write_all(reply.as_bytes()).await.expect("reply");
            }
            loop {
                let mut l = String::new();
                s.read_line(&mut l).await.expect("data");
                seen.push_str(&l);
                if l == ".\r\n" {
                    break;
                }
            }
            s.get_mut()
                .write_all(b"250 2.0.0 Ok: queued as 00000000000000ab\r\n")
                .await
                .expect("250");
            seen
        });
        let id = smtp(client, "a@example.com", "b@example.net", "Subject: x\n\n.dot\n")
            .await
            .expect("sent");
        assert_eq!(id, "00000000000000ab");
        let seen = peer.await.expect("peer");
        assert!(seen.contains("MAIL FROM:<a@example.com>\r\n"), "{seen}");
        assert!(seen.contains("\r\n..dot\r\n.\r\n"), "{seen}");
    }
}
