//! Ports for the peers a test starts, with no moment where a chosen port is free for anyone else
//! to take. There is deliberately no "free port" helper (bind port 0, read the port, close,
//! hand the number to a peer): between the close and the peer's bind, another process, or an
//! outgoing connection's ephemeral port, can take it. Instead, by kind of peer:
//!
//! - A peer that can bind port 0 and report the port it got is started on port 0 and asked: our
//!   sidecar's `listening smtp=… admin=…` line ([`crate::stack::Proc::sidecar_addrs`]), the
//!   operator's `admin server listening` / `webhook listening` lines, Prometheus's
//!   `Listening on`, and the Python peers in `tests/peers/` that print their port
//!   ([`crate::stack::Proc::spawn_reporting_port`]).
//! - A port that must be known before its peer exists (a smarthost port written into the
//!   sidecar's config first), that a restarted peer must get back (an outage modelled by stopping
//!   and restarting the upstream), that several peers share (MX hosts on 127.0.0.2 and 127.0.0.3:
//!   direct delivery uses one port), or where nothing may listen (a smarthost that is down) is a
//!   [`Reservation`]: a socket bound with `SO_REUSEPORT` that never listens, held for the test's
//!   lifetime. Peers bind the same port with `SO_REUSEPORT` too (`upstream.py --reuse-port`).
//! - Inside a network namespace of the test's own (the node sandbox), ports are fixed below the
//!   ephemeral range, where nothing in that namespace picks ports (see `node::Node::start`).
//! - The control plane's etcd and kube-apiserver get ports chosen free and are restarted with new
//!   ones when one was taken (`ControlPlane::start_with`, "retrying with new ports").
//!
//! `bind_and_release_helpers_do_not_come_back` below fails when the old pattern reappears in
//! the repository's Rust or Python files.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use anyhow::{Context, Result};
use socket2::{Domain, Protocol, Socket, Type};

/// A TCP port held for as long as this value lives: a socket bound to it with `SO_REUSEPORT`
/// that never listens. On Linux such a socket receives no connections (they are refused while
/// no peer listens, as on a free port), and every bind of the port without `SO_REUSEPORT` (or
/// from another user) fails with `EADDRINUSE`, so no other process can take it, and the kernel
/// hands it to no port-0 bind or outgoing connection either. A peer of ours that binds it with `SO_REUSEPORT`
/// (same user) gets it, as often as it is restarted. Closing the socket on drop frees the port.
#[derive(Debug)]
#[must_use = "the port is only held while the reservation lives"]
pub struct Reservation {
    _held: Socket,
    addr: SocketAddr,
}

// === impl Reservation ===

impl Reservation {
    /// A port on every IPv4 address (`0.0.0.0`): it also covers peers bound to 127.0.0.2,
    /// 127.0.0.3, … (the MX hosts of the direct-delivery tests).
    pub fn any() -> Result<Self> {
        Self::on(IpAddr::V4(Ipv4Addr::UNSPECIFIED))
    }

    /// A port on `ip` only (e.g. a test node's gateway).
    pub fn on(ip: IpAddr) -> Result<Self> {
        let socket = Socket::new(
            Domain::for_address(SocketAddr::new(ip, 0)),
            Type::STREAM,
            Some(Protocol::TCP),
        )
        .context("creating a socket to reserve a port")?;
        // No SO_REUSEADDR: with it, a later bind to port 0 could be given this port.
        socket.set_reuse_port(true)?;
        socket
            .bind(&SocketAddr::new(ip, 0).into())
            .with_context(|| format!("reserving a port on {ip}"))?;
        let addr = socket
            .local_addr()?
            .as_socket()
            .context("the reserved address is not an IP address")?;
        Ok(Self { _held: socket, addr })
    }

    /// The reserved port.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// The address the reservation is bound to (`0.0.0.0:<port>` for [`Reservation::any`]).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The arguments that start `tests/peers/upstream.py` on this port:
    /// `--port <port> --reuse-port` (see [`crate::peers::Upstream::start_on`]).
    pub fn peer_args(&self) -> [String; 3] {
        ["--port".into(), self.port().to_string(), "--reuse-port".into()]
    }
}

#[cfg(test)]
mod tests {
    use std::{
        io::ErrorKind,
        net::{TcpListener, TcpStream},
        path::Path,
        time::Duration,
    };

    use super::*;

    fn reuse_port_listener(addr: SocketAddr) -> std::io::Result<TcpListener> {
        let socket = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP))?;
        socket.set_reuse_address(true)?;
        socket.set_reuse_port(true)?;
        socket.bind(&addr.into())?;
        socket.listen(16)?;
        Ok(socket.into())
    }

    fn connect(ip: [u8; 4], port: u16) -> std::io::Result<TcpStream> {
        TcpStream::connect_timeout(&SocketAddr::from((ip, port)), Duration::from_secs(2))
    }

    #[test]
    fn a_reservation_takes_no_connections() {
        let r = Reservation::any().expect("reserve");
        for ip in [[127, 0, 0, 1], [127, 0, 0, 2]] {
            let err = connect(ip, r.port()).expect_err("nothing listens on a reservation");
            assert_eq!(err.kind(), ErrorKind::ConnectionRefused, "{ip:?}: {err}");
        }
    }

    #[test]
    fn binds_without_so_reuseport_fail_while_it_lives() {
        let r = Reservation::any().expect("reserve");
        for ip in [[0, 0, 0, 0], [127, 0, 0, 1], [127, 0, 0, 3]] {
            let err = TcpListener::bind(SocketAddr::from((ip, r.port()))).expect_err("port is held");
            assert_eq!(err.kind(), ErrorKind::AddrInUse, "{ip:?}: {err}");
        }
        let local = Reservation::on(IpAddr::V4(Ipv4Addr::LOCALHOST)).expect("reserve on loopback");
        let err = TcpListener::bind(("127.0.0.1", local.port())).expect_err("port is held");
        assert_eq!(err.kind(), ErrorKind::AddrInUse);
        let port = r.port();
        drop(r);
        TcpListener::bind(("0.0.0.0", port)).expect("the port is free once the reservation is dropped");
    }

    #[test]
    fn peers_with_so_reuseport_bind_beside_it_and_again_after_a_restart() {
        let r = Reservation::any().expect("reserve");
        let mx1 = reuse_port_listener(SocketAddr::from(([127, 0, 0, 2], r.port()))).expect("127.0.0.2");
        let mx2 = reuse_port_listener(SocketAddr::from(([127, 0, 0, 3], r.port()))).expect("127.0.0.3");
        connect([127, 0, 0, 2], r.port()).expect("reaches the peer on 127.0.0.2");
        connect([127, 0, 0, 3], r.port()).expect("reaches the peer on 127.0.0.3");
        let (conn, _) = mx1.accept().expect("accept");
        assert_eq!(
            conn.local_addr().expect("addr"),
            SocketAddr::from(([127, 0, 0, 2], r.port()))
        );
        let err = connect([127, 0, 0, 1], r.port()).expect_err("no peer on 127.0.0.1");
        assert_eq!(err.kind(), ErrorKind::ConnectionRefused);
        // A stopped peer leaves the port closed but still held, and a restarted one gets it back.
        drop(mx1);
        let err = connect([127, 0, 0, 2], r.port()).expect_err("the peer is down");
        assert_eq!(err.kind(), ErrorKind::ConnectionRefused);
        let _back = reuse_port_listener(SocketAddr::from(([127, 0, 0, 2], r.port()))).expect("restart");
        connect([127, 0, 0, 2], r.port()).expect("reaches the restarted peer");
        drop(mx2);
    }

    #[test]
    fn port_zero_binds_never_get_a_reserved_port() {
        let held: Vec<Reservation> = (0..20).map(|_| Reservation::any().expect("reserve")).collect();
        for _ in 0..500 {
            let l = TcpListener::bind("127.0.0.1:0").expect("bind");
            let port = l.local_addr().expect("addr").port();
            assert!(
                held.iter().all(|r| r.port() != port),
                "port {port} was handed out twice"
            );
        }
    }

    /// Lines that pick a port, let it go and hand it on: a "free port" helper, or a port-0 bind
    /// whose socket is dropped in the same expression that reads its port.
    fn bind_and_release(line: &str) -> bool {
        let code = line.split("//").next().unwrap_or_default();
        let port_zero_bind = (code.contains("bind(\"127.0.0.1:0\")")
            || code.contains("bind((\"127.0.0.1\", 0))")
            || code.contains(", 0))?.local_addr()"))
            && code.contains(".local_addr()")
            && (code.contains(".port()") || code.contains("[1]"));
        let helper = [
            "fn free_port",
            "def free_port",
            "fn free_ports",
            "fn unused_port",
            "def unused_port",
        ]
        .iter()
        .any(|h| code.contains(h));
        port_zero_bind || helper
    }

    fn scan(root: &Path, dir: &Path, found: &mut Vec<String>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            if path.is_dir() {
                if !name.starts_with('.') && name != "target" && name != "node_modules" {
                    scan(root, &path, found);
                }
                continue;
            }
            if !(name.ends_with(".rs") || name.ends_with(".py")) || path.ends_with("support/src/ports.rs") {
                continue;
            }
            // The control plane's ports are chosen free and released, and its start is retried
            // with new ones when one was taken ("retrying with new ports").
            let retried = path.ends_with("support/src/control_plane.rs");
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            for (i, line) in lines.iter().enumerate() {
                // Also the two-line forms: a port-0 bind, then a line that hands on its port as the
                // value of a block or function (the socket closes right after).
                let next = lines.get(i + 1).map_or("", |l| l.trim());
                let port_zero =
                    line.contains("bind(\"127.0.0.1:0\")") || line.contains("bind((\"127.0.0.1\", 0))");
                let two_lines = port_zero
                    && ((next.ends_with(".port()") && next.contains("local_addr()"))
                        || (next.starts_with("return") && next.contains("getsockname()")));
                let allowed = retried && line.contains("fn free_ports");
                if (bind_and_release(line) || two_lines) && !allowed {
                    let shown = path.strip_prefix(root).unwrap_or(&path);
                    found.push(format!("{}:{}: {}", shown.display(), i + 1, line.trim()));
                }
            }
        }
    }

    #[test]
    fn the_check_recognises_the_pattern() {
        for bad in [
            "pub fn free_port() -> Result<u16> {",
            "let p = std::net::TcpListener::bind(\"127.0.0.1:0\")?.local_addr()?.port();",
            "Ok(TcpListener::bind((self.node.gateway(), 0))?.local_addr()?.port())",
            "def free_port():",
        ] {
            assert!(bind_and_release(bad), "{bad}");
        }
        for good in [
            "let listener = std::net::TcpListener::bind((node.gateway(), 0))?;",
            "let l = tokio::net::TcpListener::bind(\"127.0.0.1:0\").await?;",
            "// no fn free_port here",
        ] {
            assert!(!bind_and_release(good), "{good}");
        }
    }

    /// Fails when a bind-and-release port helper comes back anywhere in the repository.
    #[test]
    fn bind_and_release_helpers_do_not_come_back() {
        let repo = crate::stack::repo().canonicalize().expect("repository root");
        let mut found = Vec::new();
        for dir in [
            "config", "operator", "sidecar", "tests", "bench", "fuzz", "examples",
        ] {
            scan(&repo, &repo.join(dir), &mut found);
        }
        assert!(
            found.is_empty(),
            "a port is chosen and released before its peer binds it (see tests/support/src/ports.rs for \
             what to do instead):\n{}",
            found.join("\n")
        );
    }
}
