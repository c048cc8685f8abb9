//! A network namespace joined to this host by a veth pair: a peer on another "host" with
//! a non-loopback address, for tests of what the switch tells peers it cannot reach over
//! loopback. Needs root (CAP_NET_ADMIN), as CI has; removed on drop.

use std::net::Ipv4Addr;
use std::process::Command;

#[derive(Debug)]
pub struct Netns {
    pub name: String,
    /// This host's end of the veth pair.
    pub host_ip: Ipv4Addr,
    /// The namespace's end.
    pub ns_ip: Ipv4Addr,
    host_if: String,
}

fn run(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("ip {args:?}: {e} (needs iproute2)"));
    assert!(
        out.status.success(),
        "ip {args:?} failed (network namespaces need root): {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Netns {
    /// A fresh namespace `sy-<tag>-<pid>` on a /24 of 10.0.0.0/8 picked from the pid.
    pub fn create(tag: &str) -> Netns {
        let pid = std::process::id();
        let name = format!("sy-{tag}-{pid}");
        let host_if = format!("vsyh{}", pid % 1_000_000);
        let ns_if = format!("vsyn{}", pid % 1_000_000);
        let (b, c) = (200 + (pid % 50) as u8, ((pid / 50) % 256) as u8);
        let host_ip = Ipv4Addr::new(10, b, c, 1);
        let ns_ip = Ipv4Addr::new(10, b, c, 2);
        // Leftovers of a killed run with the same pid would make `add` fail.
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        let _ = Command::new("ip").args(["link", "del", &host_if]).output();
        run(&["netns", "add", &name]);
        let ns = Netns {
            name,
            host_ip,
            ns_ip,
            host_if,
        };
        run(&[
            "link",
            "add",
            &ns.host_if,
            "type",
            "veth",
            "peer",
            "name",
            &ns_if,
        ]);
        run(&["link", "set", &ns_if, "netns", &ns.name]);
        run(&["addr", "add", &format!("{host_ip}/24"), "dev", &ns.host_if]);
        run(&["link", "set", &ns.host_if, "up"]);
        let exec = |args: &[&str]| {
            let mut all = vec!["netns", "exec", &ns.name, "ip"];
            all.extend_from_slice(args);
            run(&all);
        };
        exec(&["addr", "add", &format!("{ns_ip}/24"), "dev", &ns_if]);
        exec(&["link", "set", &ns_if, "up"]);
        exec(&["link", "set", "lo", "up"]);
        ns
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_if])
            .output();
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}
