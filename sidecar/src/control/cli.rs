//! `mailroom-sidecar queue ...` and `mailroom-sidecar quarantine ...`: Postfix's `mailq`,
//! `postqueue -f` and `postsuper -d/-h/-H` for one sidecar, through its queue API.

use super::client::{Client, Error};
use crate::{
    queue::control::{Detail, Done, Flushed, Row, Status},
    spool::quarantine::Quarantined,
};
use clap::{Args, Subcommand, ValueEnum};
use std::{fmt::Write as _, net::SocketAddr, path::Path};

/// How answers are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// Aligned columns for people.
    Text,
    /// The API's JSON, pretty-printed, for scripts (and `kubectl mailroom`).
    Json,
}

/// Options every queue subcommand takes.
#[derive(Debug, Clone, Args)]
pub struct ClientOpts {
    /// The queue API's address. Default: `admin.queueApiAddress` from the config file
    /// (SIDECAR_CONFIG_PATH), else 127.0.0.1:9466.
    #[arg(long, global = true, value_name = "ADDR")]
    pub api: Option<SocketAddr>,
    /// Output format.
    #[arg(long, short = 'o', global = true, value_enum, default_value = "text")]
    pub output: Output,
    /// Who asks, for the sidecar's log (`kubectl mailroom` passes your Kubernetes user).
    /// Default: MAILROOM_ACTOR, else `cli:$USER`.
    #[arg(long, global = true, value_name = "NAME")]
    pub actor: Option<String>,
}

/// `queue` subcommands.
#[derive(Debug, Clone, Subcommand)]
pub enum QueueCommand {
    /// Every queued message: id, state, age, size, sender domain, recipient domains, attempts,
    /// next attempt and last error.
    List,
    /// One message: envelope, recipients and header section (the body only with --body).
    Show {
        /// The message id (from `queue list`).
        id: String,
        /// Include the body.
        #[arg(long)]
        body: bool,
    },
    /// Where one message is, or how it left the queue (delivered, bounced, handed off, ...).
    Status {
        /// The message id (the `queued as` of the app's `250`).
        id: String,
    },
    /// Retry deferred messages now, and open the route if it is parked.
    Flush {
        /// Only messages with a recipient still to be delivered at this domain.
        #[arg(long)]
        domain: Option<String>,
        /// Only if the sidecar delivers by this route (smarthost, direct, capture).
        #[arg(long)]
        route: Option<String>,
    },
    /// Retry one message now.
    Retry {
        /// The message id.
        id: String,
    },
    /// Remove one message. Say whether its sender gets a failure notice: --bounce or --silent.
    #[command(group(clap::ArgGroup::new("notice").required(true).args(["bounce", "silent"])))]
    Delete {
        /// The message id.
        id: String,
        /// Send the sender a failure notice (RFC 3464) for the recipients still pending.
        #[arg(long)]
        bounce: bool,
        /// Remove it without telling anyone.
        #[arg(long)]
        silent: bool,
    },
    /// Hold one message: no delivery attempt until released, also across restarts.
    Hold {
        /// The message id.
        id: String,
    },
    /// Release a held message.
    Release {
        /// The message id.
        id: String,
    },
}

/// `quarantine` subcommands.
#[derive(Debug, Clone, Subcommand)]
pub enum QuarantineCommand {
    /// What the spool set aside as damaged.
    List,
    /// Queue a quarantined message again, as found, for its unfinished recipients.
    Release {
        /// The message id (from `quarantine list`).
        id: String,
    },
}

/// What a subcommand asks of the API.
#[derive(Debug, Clone)]
pub enum Request {
    /// A `queue` subcommand.
    Queue(QueueCommand),
    /// A `quarantine` subcommand.
    Quarantine(QuarantineCommand),
}

/// Exit code when the API refused (no such message, busy, held).
pub const EXIT_REFUSED: u8 = 1;
/// BSD `EX_UNAVAILABLE`: the API could not be reached.
pub const EXIT_UNAVAILABLE: u8 = 69;

/// Runs one subcommand; returns the process's exit code.
pub fn run(request: Request, opts: ClientOpts) -> u8 {
    let addr = opts.api.unwrap_or_else(configured_address);
    let actor = opts
        .actor
        .clone()
        .or_else(|| std::env::var("MAILROOM_ACTOR").ok())
        .unwrap_or_else(|| {
            format!(
                "cli:{}",
                std::env::var("USER").unwrap_or_else(|_| "unknown".into())
            )
        });
    let client = Client::new(addr, actor);
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start: {e}");
            return EXIT_UNAVAILABLE;
        }
    };
    match rt.block_on(call(&client, request, opts.output)) {
        Ok(text) => {
            print!("{text}");
            0
        }
        Err(e @ Error::Refused { .. }) => {
            eprintln!("{e}");
            EXIT_REFUSED
        }
        Err(e) => {
            eprintln!("{e}");
            EXIT_UNAVAILABLE
        }
    }
}

/// The API address from the config file the sidecar runs with, else the default.
fn configured_address() -> SocketAddr {
    let path = std::env::var(crate::settings::ENV_CONFIG_PATH)
        .unwrap_or_else(|_| crate::settings::DEFAULT_CONFIG_PATH.into());
    address_in(Path::new(&path)).unwrap_or_else(|| {
        crate::config::DEFAULT_QUEUE_API_ADDR
            .parse()
            .expect("constant address parses")
    })
}

fn address_in(path: &Path) -> Option<SocketAddr> {
    let text = std::fs::read_to_string(path).ok()?;
    let doc: serde_yaml_ng::Value = serde_yaml_ng::from_str(&text).ok()?;
    doc.get("admin")?.get("queueApiAddress")?.as_str()?.parse().ok()
}

async fn call(c: &Client, request: Request, output: Output) -> Result<String, Error> {
    let json = output == Output::Json;
    let pretty = |v: &dyn erased::Json| v.pretty();
    Ok(match request {
        Request::Queue(QueueCommand::List) => {
            let rows: Vec<Row> = c.get("/v1/queue").await?;
            if json { pretty(&rows) } else { list_text(&rows) }
        }
        Request::Queue(QueueCommand::Show { id, body }) => {
            let path = format!("/v1/queue/{id}{}", if body { "?body=true" } else { "" });
            let d: Detail = c.get(&path).await?;
            if json { pretty(&d) } else { show_text(&d) }
        }
        Request::Queue(QueueCommand::Status { id }) => {
            let s: Status = c.get(&format!("/v1/queue/{id}/status")).await?;
            if json {
                pretty(&s)
            } else {
                let error = s
                    .last_error
                    .map(|e| format!(" (last error: {e})"))
                    .unwrap_or_default();
                format!("{}: {} after {} attempt(s){error}\n", s.id, s.state, s.attempts)
            }
        }
        Request::Queue(QueueCommand::Flush { domain, route }) => {
            let mut query = Vec::new();
            if let Some(d) = domain {
                query.push(format!("domain={d}"));
            }
            if let Some(r) = route {
                query.push(format!("route={r}"));
            }
            let path = format!("/v1/queue/flush?{}", query.join("&"));
            let f: Flushed = c.post(&path).await?;
            if json {
                pretty(&f)
            } else {
                let mut s = format!("{} message(s) due now", f.flushed);
                if f.held > 0 {
                    let _ = write!(s, "; {} held message(s) stay held", f.held);
                }
                if f.unparked {
                    s.push_str("; the parked route is open again");
                }
                s + "\n"
            }
        }
        Request::Queue(QueueCommand::Retry { id }) => {
            done(c.post(&format!("/v1/queue/{id}/retry")).await?, json)
        }
        Request::Queue(QueueCommand::Hold { id }) => {
            done(c.post(&format!("/v1/queue/{id}/hold")).await?, json)
        }
        Request::Queue(QueueCommand::Release { id }) => {
            done(c.post(&format!("/v1/queue/{id}/release")).await?, json)
        }
        Request::Queue(QueueCommand::Delete { id, bounce, .. }) => {
            done(c.delete(&format!("/v1/queue/{id}?bounce={bounce}")).await?, json)
        }
        Request::Quarantine(QuarantineCommand::List) => {
            let list: Vec<Quarantined> = c.get("/v1/quarantine").await?;
            if json {
                pretty(&list)
            } else {
                quarantine_text(&list)
            }
        }
        Request::Quarantine(QuarantineCommand::Release { id }) => {
            done(c.post(&format!("/v1/quarantine/{id}/release")).await?, json)
        }
    })
}

mod erased {
    /// Pretty JSON of any answer.
    pub trait Json {
        fn pretty(&self) -> String;
    }
    impl<T: serde::Serialize> Json for T {
        fn pretty(&self) -> String {
            serde_json::to_string_pretty(self).unwrap_or_default() + "\n"
        }
    }
}

fn done(d: Done, json: bool) -> String {
    if json {
        erased::Json::pretty(&d)
    } else {
        format!("{}: {}\n", d.id, d.result)
    }
}

/// `3m12s`-style durations.
fn human_secs(s: u64) -> String {
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{}s", s / 60, s % 60),
        3600..86400 => format!("{}h{}m", s / 3600, (s % 3600) / 60),
        _ => format!("{}d{}h", s / 86400, (s % 86400) / 3600),
    }
}

fn human_bytes(b: u64) -> String {
    match b {
        0..1024 => format!("{b}B"),
        1024..1_048_576 => format!("{:.1}K", b as f64 / 1024.0),
        _ => format!("{:.1}M", b as f64 / 1_048_576.0),
    }
}

fn list_text(rows: &[Row]) -> String {
    if rows.is_empty() {
        return "the queue is empty\n".into();
    }
    let now = crate::message::now_secs();
    let mut out = format!(
        "{:<16}  {:<8}  {:>7}  {:>7}  {:>8}  {:>7}  {:<20}  {:<28}  {}\n",
        "ID", "STATE", "AGE", "SIZE", "ATTEMPTS", "NEXT", "SENDER", "RECIPIENTS", "LAST ERROR"
    );
    let mut bytes = 0;
    for r in rows {
        bytes += r.size;
        let next = r
            .next_attempt_at
            .map_or("-".into(), |t| human_secs(t.saturating_sub(now)));
        let mut rcpt = r.recipient_domains.first().cloned().unwrap_or_default();
        if r.recipients > 1 {
            let _ = write!(rcpt, " (+{})", r.recipients - 1);
        }
        let sender = if r.sender_domain.is_empty() {
            "<>".into()
        } else {
            r.sender_domain.clone()
        };
        let _ = writeln!(
            out,
            "{:<16}  {:<8}  {:>7}  {:>7}  {:>8}  {:>7}  {:<20}  {:<28}  {}",
            r.id,
            r.state.as_str(),
            human_secs(r.age_seconds),
            human_bytes(r.size),
            r.attempts,
            next,
            sender,
            rcpt,
            r.last_error.as_deref().unwrap_or("-")
        );
    }
    let _ = writeln!(out, "-- {} in {} message(s)", human_bytes(bytes), rows.len());
    out
}

fn show_text(d: &Detail) -> String {
    let r = &d.row;
    let mut out = String::new();
    let _ = writeln!(out, "id:          {}", r.id);
    let _ = writeln!(out, "state:       {}", r.state.as_str());
    let _ = writeln!(out, "age:         {}", human_secs(r.age_seconds));
    let _ = writeln!(out, "size:        {}", human_bytes(r.size));
    let _ = writeln!(out, "attempts:    {}", r.attempts);
    if let Some(e) = &r.last_error {
        let _ = writeln!(out, "last error:  {e}");
    }
    let _ = writeln!(out, "sender:      <{}>", d.sender);
    for rc in &d.recipient_list {
        let state = if rc.done { "done" } else { "pending" };
        let notify = rc
            .notify
            .as_deref()
            .map_or(String::new(), |n| format!(" NOTIFY={n}"));
        let _ = writeln!(out, "recipient:   <{}> {state}{notify}", rc.address);
    }
    let _ = writeln!(out, "dkim signed: {}", if d.signed { "yes" } else { "not yet" });
    out.push('\n');
    out.push_str(&d.headers.replace("\r\n", "\n"));
    if let Some(body) = &d.body {
        out.push('\n');
        out.push_str(&body.replace("\r\n", "\n"));
    }
    out
}

fn quarantine_text(list: &[Quarantined]) -> String {
    if list.is_empty() {
        return "the quarantine is empty\n".into();
    }
    let mut out = format!(
        "{:<32}  {:<20}  {:>7}  {:<24}  {}\n",
        "NAME", "KIND", "SIZE", "SENDER", "RECIPIENTS"
    );
    for q in list {
        let kind = match q.complete {
            Some(false) => format!("{} (incomplete)", q.kind),
            _ => q.kind.clone(),
        };
        let _ = writeln!(
            out,
            "{:<32}  {:<20}  {:>7}  {:<24}  {}",
            q.name,
            kind,
            human_bytes(q.bytes),
            q.sender.as_deref().map_or("-".into(), |s| format!("<{s}>")),
            if q.recipients.is_empty() {
                "-".into()
            } else {
                q.recipients.join(", ")
            }
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_sizes_read_like_mailq() {
        assert_eq!(human_secs(59), "59s");
        assert_eq!(human_secs(192), "3m12s");
        assert_eq!(human_secs(7300), "2h1m");
        assert_eq!(human_secs(90000), "1d1h");
        assert_eq!(human_bytes(2048), "2.0K");
        assert_eq!(human_bytes(512), "512B");
    }

    #[test]
    fn the_api_address_comes_from_the_config_file() {
        let dir = std::env::temp_dir().join(format!("mailroom-cli-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let file = dir.join("sidecar.yaml");
        std::fs::write(&file, "admin:\n  queueApiAddress: 127.0.0.1:19466\n").expect("write");
        assert_eq!(address_in(&file), Some("127.0.0.1:19466".parse().expect("addr")));
        std::fs::write(&file, "admin: {}\n").expect("write");
        assert_eq!(address_in(&file), None);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
