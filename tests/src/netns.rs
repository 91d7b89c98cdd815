//! Throwaway network namespaces and veth pairs, removed on drop (also when a test panics).
//!
//! Every name carries the test's tag and this process's pid, so tests running in parallel (and
//! two concurrent test runs) never collide. Only documentation addresses are used.

use std::{
    net::Ipv4Addr,
    path::PathBuf,
    process::{Command, Output},
};

/// Runs a command and panics with its output when it fails.
pub fn run(program: &str, args: &[&str]) -> Output {
    let output = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|err| panic!("cannot run {program} {args:?}: {err}"));
    assert!(
        output.status.success(),
        "{program} {args:?} failed: {}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// A network namespace, deleted on drop.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates the namespace `afw-<tag>-<pid>` with its loopback up.
    pub fn new(tag: &str) -> Self {
        let name = format!("afw-{tag}-{}", std::process::id());
        // A leftover from a crashed run of the same pid would make `add` fail.
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        run("ip", &["netns", "add", &name]);
        let netns = Self { name };
        netns.ip(&["link", "set", "lo", "up"]);
        netns
    }

    /// The namespace's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its bind-mounted handle, for `nsenter --net=` and `setns`.
    pub fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.name)
    }

    /// `ip -n <ns> ARGS`.
    pub fn ip(&self, args: &[&str]) -> Output {
        let mut full = vec!["-n", self.name.as_str()];
        full.extend_from_slice(args);
        run("ip", &full)
    }

    /// The MAC address of `interface` in this namespace.
    pub fn mac(&self, interface: &str) -> [u8; 6] {
        let text = mac_of(self, interface);
        let mut mac = [0u8; 6];
        let mut parts = text.split(':');
        for byte in &mut mac {
            let part = parts
                .next()
                .unwrap_or_else(|| panic!("MAC {text} of {interface} is too short"));
            *byte = u8::from_str_radix(part, 16)
                .unwrap_or_else(|err| panic!("MAC {text} of {interface}: {err}"));
        }
        mac
    }

    /// `ip netns exec <ns> ARGS`.
    pub fn exec(&self, args: &[&str]) -> Output {
        let mut full = vec!["netns", "exec", self.name.as_str()];
        full.extend_from_slice(args);
        run("ip", &full)
    }

    /// Runs `f` on a thread that has entered this namespace: sockets it opens live here.
    pub fn spawn<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> std::thread::JoinHandle<T> {
        let path = self.path();
        std::thread::spawn(move || {
            let file = std::fs::File::open(&path)
                .unwrap_or_else(|err| panic!("open {}: {err}", path.display()));
            nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
                .unwrap_or_else(|err| panic!("setns {}: {err}", path.display()));
            f()
        })
    }

    /// Runs `f` in this namespace and returns its result.
    pub fn enter<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        self.spawn(f)
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Deleting the namespace also deletes the veth ends inside it.
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// Two namespaces joined by a veth pair: a protected `server` (192.0.2.1/24 on `server_if`)
/// and a `client` (192.0.2.2/24 plus the extra source addresses it is given).
///
/// IPv6 is disabled and neighbours are static, so the only frames that cross the veth are the
/// ones a test sends: counters can then be asserted exactly.
#[derive(Debug)]
pub struct VethLab {
    /// Interface name in the server namespace, where the firewall attaches.
    pub server_if: String,
    /// Interface name in the client namespace.
    pub client_if: String,
    // Field order: namespaces are dropped after nothing else needs them.
    /// The protected host.
    pub server: Netns,
    /// The traffic source.
    pub client: Netns,
}

/// The server's address.
pub const SERVER_ADDR: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
/// The client's own address.
pub const CLIENT_ADDR: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);

fn mac_of(netns: &Netns, interface: &str) -> String {
    let output = netns.ip(&["-j", "link", "show", "dev", interface]);
    let links: serde_json::Value =
        serde_json::from_slice(&output.stdout).expect("ip -j link show prints JSON");
    links[0]["address"]
        .as_str()
        .unwrap_or_else(|| panic!("no MAC for {interface}: {links}"))
        .to_owned()
}

impl VethLab {
    /// Builds the lab. `tag` must be unique among tests (at most 6 characters);
    /// `client_sources` are extra client addresses (each gets a static route back on the server).
    pub fn new(tag: &str, client_sources: &[Ipv4Addr]) -> Self {
        assert!(tag.len() <= 6, "tag {tag} too long for interface names");
        let server = Netns::new(&format!("{tag}-s"));
        let client = Netns::new(&format!("{tag}-c"));
        let suffix = std::process::id() % 100_000;
        let server_if = format!("s{tag}{suffix}");
        let client_if = format!("c{tag}{suffix}");
        assert!(server_if.len() <= 15, "{server_if} too long");
        let lab = Self {
            server_if,
            client_if,
            server,
            client,
        };
        let (s, c) = (&lab.server, &lab.client);
        for ns in [s, c] {
            ns.exec(&["sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1"]);
            ns.exec(&["sysctl", "-qw", "net.ipv6.conf.default.disable_ipv6=1"]);
        }
        lab.connect(client_sources);
        lab
    }

    /// Creates the veth pair with its addresses, routes and static neighbours: what
    /// [`VethLab::new`] does, and what a test that deleted the pair calls to re-create it.
    pub fn connect(&self, client_sources: &[Ipv4Addr]) {
        let (s, c) = (&self.server, &self.client);
        s.ip(&[
            "link",
            "add",
            &self.server_if,
            "type",
            "veth",
            "peer",
            "name",
            &self.client_if,
            "netns",
            c.name(),
        ]);
        s.ip(&["link", "set", &self.server_if, "up"]);
        c.ip(&["link", "set", &self.client_if, "up"]);
        s.ip(&["addr", "add", "192.0.2.1/24", "dev", &self.server_if]);
        c.ip(&["addr", "add", "192.0.2.2/24", "dev", &self.client_if]);
        for source in client_sources {
            c.ip(&[
                "addr",
                "add",
                &format!("{source}/32"),
                "dev",
                &self.client_if,
            ]);
            s.ip(&[
                "route",
                "add",
                &format!("{source}/32"),
                "dev",
                &self.server_if,
            ]);
        }
        let server_mac = mac_of(s, &self.server_if);
        let client_mac = mac_of(c, &self.client_if);
        c.ip(&[
            "neigh",
            "replace",
            "192.0.2.1",
            "lladdr",
            &server_mac,
            "dev",
            &self.client_if,
            "nud",
            "permanent",
        ]);
        for source in client_sources.iter().copied().chain([CLIENT_ADDR]) {
            s.ip(&[
                "neigh",
                "replace",
                &source.to_string(),
                "lladdr",
                &client_mac,
                "dev",
                &self.server_if,
                "nud",
                "permanent",
            ]);
        }
    }

    /// Packets the client's veth has transmitted so far.
    pub fn client_tx_packets(&self) -> u64 {
        let output = self
            .client
            .ip(&["-j", "-s", "link", "show", "dev", &self.client_if]);
        let links: serde_json::Value =
            serde_json::from_slice(&output.stdout).expect("ip -j -s link prints JSON");
        links[0]["stats64"]["tx"]["packets"]
            .as_u64()
            .unwrap_or_else(|| panic!("no tx counter in {links}"))
    }

    /// Whether an XDP program is attached to the server interface.
    pub fn server_has_xdp(&self) -> bool {
        let output = self
            .server
            .ip(&["-j", "link", "show", "dev", &self.server_if]);
        let links: serde_json::Value =
            serde_json::from_slice(&output.stdout).expect("ip -j link prints JSON");
        !links[0]["xdp"].is_null()
    }
}

/// Connects from `source` to the server's TCP `port` within `timeout`. Call it on a thread that
/// is in the client namespace ([`Netns::enter`]).
pub fn connect_from(
    source: Ipv4Addr,
    port: u16,
    timeout: std::time::Duration,
) -> std::io::Result<std::net::TcpStream> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None)?;
    socket.bind(&std::net::SocketAddr::from((source, 0)).into())?;
    socket.connect_timeout(
        &std::net::SocketAddr::from((SERVER_ADDR, port)).into(),
        timeout,
    )?;
    Ok(socket.into())
}
