//! In-kernel RTP forwarding through Linux connection tracking (the way AG Projects'
//! MediaProxy does it): once both legs of a bridge have latched, one conntrack entry
//! with a full NAT binding carries both directions, so the kernel rewrites
//! `caller → our port A` into `our port B → callee` (and back) without the packets
//! ever reaching our sockets.
//!
//! Why conntrack and not eBPF or a kernel module: it is in every distribution kernel,
//! needs no code loaded into the kernel (the workspace forbids `unsafe`, and eBPF would
//! need a toolchain on every host), and its entries carry packet and byte counters.
//! What it cannot do is rewrite RTP headers, so only a bridge whose relaying is the
//! identity (same codec and payload types both ways, each stream's SSRC, sequence
//! numbers and timestamps passed through) is offloaded; anything else (transcoding, a
//! source change, a re-INVITE) stays in, or falls back to, the userspace relay.
//! Packets from any other source do not match the entry and still reach our socket,
//! where the relay drops and counts them (anti RTP-bleed holds).
//!
//! [`KernelForwarder::enable`] prepares the network namespace: an nftables table
//! `switchyard` whose rule `ct status dnat accept` makes the kernel track connections,
//! empty NAT chains on the four hooks so NAT bindings are applied, and, before tracking,
//! a conntrack zone for packets to our RTP ports and no tracking for our own sends from
//! them ([`zone_of`], [`nft_ruleset`]), plus `nf_conntrack_acct` for the counters. It
//! needs `CAP_NET_ADMIN` and the `nft` command; without them the switch relays in
//! userspace as before. Entries are created,
//! read and deleted over ctnetlink (`NETLINK_NETFILTER`); the message encoding is
//! pure and unit-tested here, the socket calls are thin.

use std::io;
use std::net::{IpAddr, SocketAddr, SocketAddrV4};
use std::os::fd::OwnedFd;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rustix::net::{AddressFamily, RecvFlags, SendFlags, SocketType, netlink};

/// The nftables table that turns connection tracking and NAT on in this namespace.
pub const NFT_TABLE: &str = "switchyard";

/// How long the kernel keeps an idle entry before packets fall back to userspace.
const ENTRY_TIMEOUT: Duration = Duration::from_secs(60);

// nfnetlink / ctnetlink constants (linux/netfilter/nfnetlink.h, nfnetlink_conntrack.h).
const NFNL_SUBSYS_CTNETLINK: u16 = 1;
const IPCTNL_MSG_CT_NEW: u16 = 0;
const IPCTNL_MSG_CT_GET: u16 = 1;
const IPCTNL_MSG_CT_DELETE: u16 = 2;
const NLMSG_ERROR: u16 = 2;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_EXCL: u16 = 0x200;
const NLM_F_CREATE: u16 = 0x400;
const NLA_F_NESTED: u16 = 0x8000;
const AF_INET: u8 = 2;
const IPPROTO_UDP: u8 = 17;

const CTA_TUPLE_ORIG: u16 = 1;
const CTA_TUPLE_REPLY: u16 = 2;
const CTA_NAT_SRC: u16 = 6;
const CTA_TIMEOUT: u16 = 7;
const CTA_COUNTERS_ORIG: u16 = 9;
const CTA_COUNTERS_REPLY: u16 = 10;
const CTA_NAT_DST: u16 = 13;
const CTA_ZONE: u16 = 18;
const CTA_TUPLE_IP: u16 = 1;
const CTA_TUPLE_PROTO: u16 = 2;
const CTA_IP_V4_SRC: u16 = 1;
const CTA_IP_V4_DST: u16 = 2;
const CTA_PROTO_NUM: u16 = 1;
const CTA_PROTO_SRC_PORT: u16 = 2;
const CTA_PROTO_DST_PORT: u16 = 3;
const CTA_NAT_V4_MINIP: u16 = 1;
const CTA_NAT_V4_MAXIP: u16 = 2;
const CTA_NAT_PROTO: u16 = 3;
const CTA_PROTONAT_PORT_MIN: u16 = 1;
const CTA_PROTONAT_PORT_MAX: u16 = 2;
const CTA_COUNTERS_PACKETS: u16 = 1;
const CTA_COUNTERS_BYTES: u16 = 2;
const ENOENT: i32 = 2;
const EEXIST: i32 = 17;

/// One bridged RTP stream pair: what arrives from `a_peer` on `a_local` leaves from
/// `b_local` to `b_peer`, and what arrives from `b_peer` on `b_local` leaves from
/// `a_local` to `a_peer`. IPv4 only (conntrack NAT bindings are per family; IPv6
/// bridges stay in userspace).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Flow {
    pub a_peer: SocketAddrV4,
    pub a_local: SocketAddrV4,
    pub b_local: SocketAddrV4,
    pub b_peer: SocketAddrV4,
}

impl Flow {
    /// The flow for these four addresses, if all are IPv4 (mapped v6 counts) and our
    /// own are specific: a socket bound to 0.0.0.0 names no address packets go to.
    pub fn new(
        a_peer: SocketAddr,
        a_local: SocketAddr,
        b_local: SocketAddr,
        b_peer: SocketAddr,
    ) -> Option<Flow> {
        let flow = Flow {
            a_peer: v4(a_peer)?,
            a_local: v4(a_local)?,
            b_local: v4(b_local)?,
            b_peer: v4(b_peer)?,
        };
        let specific = |a: SocketAddrV4| !a.ip().is_unspecified();
        (specific(flow.a_local)
            && specific(flow.b_local)
            && zone_of(flow.a_local.port()) == zone_of(flow.b_local.port()))
        .then_some(flow)
    }

    /// The conntrack zone the flow's entry lives in: the one the nftables rule gives
    /// packets to either of our ports.
    pub fn zone(&self) -> u16 {
        zone_of(self.a_local.port())
    }
}

/// How many zones [`zone_of`] spreads ports over.
pub const ZONES: usize = 64;

/// The conntrack zone the nftables rule ([`nft_ruleset`]) gives a packet to our `port`:
/// bits 2–7 of the port, so an RTP/RTCP pair, and the pairs 4 or 256 ports apart, share
/// one. Why zones: source NAT searches every entry with the same original source for a
/// mapping to reuse (the kernel's `find_appropriate_src`), so with one peer sending all
/// its calls' media from one address and port, each install walked every live call;
/// zones split that walk 64 ways. A bridge's two ports must share a zone
/// ([`Flow::new`]); the pool books them so (`PortPool::alloc_in_zone`). One byte of the
/// port, so nft's payload load needs no byte-order conversion.
pub fn zone_of(port: u16) -> u16 {
    // Six bits: ZONES of them.
    (port & 0xff) >> 2
}

fn v4(addr: SocketAddr) -> Option<SocketAddrV4> {
    let ip = match addr.ip() {
        IpAddr::V4(ip) => ip,
        IpAddr::V6(ip) => ip.to_ipv4_mapped()?,
    };
    Some(SocketAddrV4::new(ip, addr.port()))
}

/// What the kernel forwarded for one [`Flow`]: per direction, packets and IP-level
/// octets (IP and UDP headers included).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FlowCounters {
    /// From `a_peer` (side A's far end) to `b_peer`.
    pub a_packets: u64,
    pub a_bytes: u64,
    /// From `b_peer` to `a_peer`.
    pub b_packets: u64,
    pub b_bytes: u64,
}

/// A ctnetlink connection that installs, reads and removes forwarding entries. Shared
/// by all bridges; each call is one request and its answer (the kernel handles a
/// netfilter netlink request inside `sendmsg`, so the answer is there on return and
/// nothing here ever waits).
#[derive(Debug)]
pub struct KernelForwarder {
    sock: Mutex<(OwnedFd, u32)>,
    installed: AtomicU64,
    removed: AtomicU64,
    refused: AtomicU64,
}

/// Totals since start, for metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ForwarderStats {
    /// Flows handed to the kernel.
    pub installed: u64,
    /// Flows taken back (or found expired).
    pub removed: u64,
    /// Flows the kernel would not take.
    pub refused: u64,
}

impl KernelForwarder {
    /// Turns tracking and NAT on in this network namespace (see the module docs) and
    /// opens the ctnetlink socket. Errors say what is missing; the caller then relays
    /// in userspace.
    ///
    /// `ports` is the switch's RTP port range: packets to it get their zone
    /// ([`zone_of`]), and its own sends from it are not tracked.
    pub fn enable(ports: std::ops::RangeInclusive<u16>) -> io::Result<KernelForwarder> {
        prepare_namespace(&ports)?;
        Self::open()
    }

    /// Opens the ctnetlink socket only, for a namespace already prepared.
    pub fn open() -> io::Result<KernelForwarder> {
        let fd = rustix::net::socket(
            AddressFamily::NETLINK,
            SocketType::RAW,
            Some(netlink::NETFILTER),
        )?;
        Ok(KernelForwarder {
            sock: Mutex::new((fd, 0)),
            installed: AtomicU64::new(0),
            removed: AtomicU64::new(0),
            refused: AtomicU64::new(0),
        })
    }

    /// Totals since start; `installed - removed` flows are in the kernel now.
    pub fn stats(&self) -> ForwarderStats {
        ForwarderStats {
            installed: self.installed.load(Ordering::Relaxed),
            removed: self.removed.load(Ordering::Relaxed),
            refused: self.refused.load(Ordering::Relaxed),
        }
    }

    /// Hands `flow` to the kernel. The plain entries the peers' first packets created
    /// would shadow the binding, so they go first (our own sends make none: see
    /// [`nft_ruleset`]).
    pub fn install(&self, flow: &Flow) -> io::Result<()> {
        let result = self.try_install(flow);
        let counter = if result.is_ok() {
            &self.installed
        } else {
            &self.refused
        };
        counter.fetch_add(1, Ordering::Relaxed);
        result
    }

    fn try_install(&self, flow: &Flow) -> io::Result<()> {
        for _ in 0..3 {
            self.delete(flow.a_peer, flow.a_local, flow.zone())?;
            self.delete(flow.b_peer, flow.b_local, flow.zone())?;
            // A packet that arrived since the delete made a plain entry again: retry.
            match self.request(|seq| create_msg(seq, flow, ENTRY_TIMEOUT)) {
                Err(e) if e.raw_os_error() == Some(EEXIST) => continue,
                other => return other.map(drop),
            }
        }
        Err(io::Error::from_raw_os_error(EEXIST))
    }

    /// Deletes the entry in `zone` with `src → dst` as either tuple; none there is not
    /// an error.
    fn delete(&self, src: SocketAddrV4, dst: SocketAddrV4, zone: u16) -> io::Result<()> {
        match self.request(|seq| delete_msg(seq, src, dst, zone)) {
            Err(e) if e.raw_os_error() != Some(ENOENT) => Err(e),
            _ => Ok(()),
        }
    }

    /// Takes `flow` back from the kernel; its packets reach our sockets again. An entry
    /// that already expired is not an error.
    pub fn remove(&self, flow: &Flow) -> io::Result<()> {
        self.removed.fetch_add(1, Ordering::Relaxed);
        self.delete(flow.a_peer, flow.a_local, flow.zone())
    }

    /// Notes that an installed flow's entry expired on its own (for [`Self::stats`]).
    pub fn note_expired(&self) {
        self.removed.fetch_add(1, Ordering::Relaxed);
    }

    /// The kernel's counters of `flow`; `None` once its entry has expired or was
    /// removed (its packets then reach our sockets again).
    pub fn counters(&self, flow: &Flow) -> io::Result<Option<FlowCounters>> {
        match self.request(|seq| get_msg(seq, flow.a_peer, flow.a_local, flow.zone())) {
            Ok(answer) => Ok(parse_counters(&answer)),
            Err(e) if e.raw_os_error() == Some(ENOENT) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Sends one request and returns its answer's payload (after the nfgenmsg header),
    /// empty for an ACK; a negative error in the answer becomes an `io::Error`.
    fn request(&self, build: impl FnOnce(u32) -> Vec<u8>) -> io::Result<Vec<u8>> {
        let mut guard = self.sock.lock().unwrap_or_else(|p| p.into_inner());
        let (fd, seq) = &mut *guard;
        *seq = seq.wrapping_add(1);
        let msg = build(*seq);
        rustix::net::sendto(
            &*fd,
            &msg,
            SendFlags::empty(),
            &netlink::SocketAddrNetlink::new(0, 0),
        )?;
        let mut buf = [0u8; 1024];
        // Answers to requests we stopped waiting for (none expected) are skipped.
        for _ in 0..8 {
            let (n, _) = rustix::net::recv(&*fd, &mut buf[..], RecvFlags::DONTWAIT)?;
            match parse_answer(buf.get(..n).unwrap_or_default(), *seq) {
                Some(answer) => return answer,
                None => continue,
            }
        }
        Err(io::Error::other("no ctnetlink answer to our request"))
    }
}

/// Creates the nftables table and turns on conntrack accounting.
fn prepare_namespace(ports: &std::ops::RangeInclusive<u16>) -> io::Result<()> {
    use std::io::Write;
    let mut child = std::process::Command::new("nft")
        .args(["-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| io::Error::new(e.kind(), format!("cannot run nft: {e}")))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(nft_ruleset(ports).as_bytes())?;
    }
    let out = child.wait_with_output()?;
    if !out.status.success() {
        let why = String::from_utf8_lossy(&out.stderr);
        return Err(io::Error::other(format!(
            "nft refused the table: {}",
            why.trim()
        )));
    }
    std::fs::write("/proc/sys/net/netfilter/nf_conntrack_acct", "1")
        .map_err(|e| io::Error::new(e.kind(), format!("nf_conntrack_acct: {e}")))?;
    if std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").is_ok_and(|v| v.trim() == "0") {
        tracing::warn!(
            "net.ipv4.ip_forward is 0: in-kernel forwarding works between local peers only; \
             set it to 1 for peers on other hosts"
        );
    }
    Ok(())
}

/// The table, replaced as a whole (one transaction, so concurrent switches in one
/// namespace agree): one `ct` rule makes the kernel track connections, and a NAT chain
/// on each hook lets NAT bindings apply to locally generated, forwarded and delivered
/// packets alike. Before tracking (priority raw), packets to an RTP port of any switch
/// here (the set `rtp_ports`, which a flush keeps, so each switch adds its range) get
/// their zone ([`zone_of`]), and our own sends from those ports are not tracked: their
/// entries would only shadow or duplicate the forwarding ones.
pub fn nft_ruleset(ports: &std::ops::RangeInclusive<u16>) -> String {
    let t = NFT_TABLE;
    let (min, max) = (ports.start(), ports.end());
    format!(
        "table ip {t} {{}}\n\
         flush table ip {t}\n\
         table ip {t} {{\n\
         \tset rtp_ports {{ type inet_service; flags interval; auto-merge; }}\n\
         \tchain zone_pre {{ type filter hook prerouting priority raw; policy accept; udp dport @rtp_ports ct zone set @th,24,6; }}\n\
         \tchain zone_out {{ type filter hook output priority raw; policy accept; udp sport @rtp_ports notrack; udp dport @rtp_ports ct zone set @th,24,6; }}\n\
         \tchain track {{ type filter hook prerouting priority 0; policy accept; ct status dnat accept; }}\n\
         \tchain track_out {{ type filter hook output priority 0; policy accept; ct status dnat accept; }}\n\
         \tchain nat_pre {{ type nat hook prerouting priority -100; policy accept; }}\n\
         \tchain nat_out {{ type nat hook output priority -100; policy accept; }}\n\
         \tchain nat_post {{ type nat hook postrouting priority 100; policy accept; }}\n\
         \tchain nat_in {{ type nat hook input priority 100; policy accept; }}\n\
         }}\n\
         add element ip {t} rtp_ports {{ {min}-{max} }}\n"
    )
}

/// Netlink message builder: header, nfgenmsg, then attributes.
struct Msg {
    buf: Vec<u8>,
    nests: Vec<usize>,
}

impl Msg {
    fn new(kind: u16, flags: u16, seq: u32) -> Msg {
        let mut buf = Vec::with_capacity(160);
        buf.extend_from_slice(&0u32.to_ne_bytes()); // length, set by `finish`
        buf.extend_from_slice(&((NFNL_SUBSYS_CTNETLINK << 8) | kind).to_ne_bytes());
        buf.extend_from_slice(&(NLM_F_REQUEST | flags).to_ne_bytes());
        buf.extend_from_slice(&seq.to_ne_bytes());
        buf.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel fills it in
        buf.extend_from_slice(&[AF_INET, 0, 0, 0]); // nfgenmsg: family, version, res_id
        Msg {
            buf,
            nests: Vec::new(),
        }
    }

    fn attr(&mut self, kind: u16, value: &[u8]) -> &mut Self {
        let len = 4 + value.len();
        self.buf.extend_from_slice(&(len as u16).to_ne_bytes());
        self.buf.extend_from_slice(&kind.to_ne_bytes());
        self.buf.extend_from_slice(value);
        self.buf.resize(self.buf.len().next_multiple_of(4), 0);
        self
    }

    fn open(&mut self, kind: u16) -> &mut Self {
        self.nests.push(self.buf.len());
        self.attr(kind | NLA_F_NESTED, &[])
    }

    fn close(&mut self) -> &mut Self {
        if let Some(at) = self.nests.pop() {
            let len = (self.buf.len() - at) as u16;
            self.buf[at..at + 2].copy_from_slice(&len.to_ne_bytes());
        }
        self
    }

    fn tuple(&mut self, kind: u16, src: SocketAddrV4, dst: SocketAddrV4) -> &mut Self {
        self.open(kind)
            .open(CTA_TUPLE_IP)
            .attr(CTA_IP_V4_SRC, &src.ip().octets())
            .attr(CTA_IP_V4_DST, &dst.ip().octets())
            .close()
            .open(CTA_TUPLE_PROTO)
            .attr(CTA_PROTO_NUM, &[IPPROTO_UDP])
            .attr(CTA_PROTO_SRC_PORT, &src.port().to_be_bytes())
            .attr(CTA_PROTO_DST_PORT, &dst.port().to_be_bytes())
            .close()
            .close()
    }

    fn nat(&mut self, kind: u16, to: SocketAddrV4) -> &mut Self {
        let ip = to.ip().octets();
        let port = to.port().to_be_bytes();
        self.open(kind)
            .attr(CTA_NAT_V4_MINIP, &ip)
            .attr(CTA_NAT_V4_MAXIP, &ip)
            .open(CTA_NAT_PROTO)
            .attr(CTA_PROTONAT_PORT_MIN, &port)
            .attr(CTA_PROTONAT_PORT_MAX, &port)
            .close()
            .close()
    }

    fn finish(&mut self) -> Vec<u8> {
        let len = self.buf.len() as u32;
        self.buf[0..4].copy_from_slice(&len.to_ne_bytes());
        std::mem::take(&mut self.buf)
    }
}

/// A new entry for `flow`: the original tuple is what side A's peer sends us, the reply
/// tuple its plain inverse; the kernel derives the translated reply from the NAT
/// bindings (destination to B's peer, source to our B port).
fn create_msg(seq: u32, flow: &Flow, timeout: Duration) -> Vec<u8> {
    let secs = u32::try_from(timeout.as_secs()).unwrap_or(u32::MAX);
    Msg::new(
        IPCTNL_MSG_CT_NEW,
        NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
        seq,
    )
    .tuple(CTA_TUPLE_ORIG, flow.a_peer, flow.a_local)
    .tuple(CTA_TUPLE_REPLY, flow.a_local, flow.a_peer)
    .nat(CTA_NAT_DST, flow.b_peer)
    .nat(CTA_NAT_SRC, flow.b_local)
    .attr(CTA_ZONE, &flow.zone().to_be_bytes())
    .attr(CTA_TIMEOUT, &secs.to_be_bytes())
    .finish()
}

/// Deletes the entry that has `src → dst` as either of its tuples.
fn delete_msg(seq: u32, src: SocketAddrV4, dst: SocketAddrV4, zone: u16) -> Vec<u8> {
    Msg::new(IPCTNL_MSG_CT_DELETE, NLM_F_ACK, seq)
        .tuple(CTA_TUPLE_ORIG, src, dst)
        .attr(CTA_ZONE, &zone.to_be_bytes())
        .finish()
}

fn get_msg(seq: u32, src: SocketAddrV4, dst: SocketAddrV4, zone: u16) -> Vec<u8> {
    Msg::new(IPCTNL_MSG_CT_GET, 0, seq)
        .tuple(CTA_TUPLE_ORIG, src, dst)
        .attr(CTA_ZONE, &zone.to_be_bytes())
        .finish()
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// The answer to request `seq` in datagram `msg`: `None` if it answers another request;
/// an ACK gives an empty payload, a data message its attributes.
fn parse_answer(msg: &[u8], seq: u32) -> Option<io::Result<Vec<u8>>> {
    let len = (u32_at(msg, 0)? as usize).min(msg.len());
    if u32_at(msg, 8)? != seq {
        return None;
    }
    let kind = u16_at(msg, 4)?;
    if kind == NLMSG_ERROR {
        let code = i32::from_ne_bytes(msg.get(16..20)?.try_into().ok()?);
        return Some(if code == 0 {
            Ok(Vec::new())
        } else {
            Err(io::Error::from_raw_os_error(-code))
        });
    }
    Some(Ok(msg.get(20..len)?.to_vec()))
}

/// Attributes in `b`, as (type without flags, value).
fn attrs(b: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    let mut at = 0;
    std::iter::from_fn(move || {
        let len = usize::from(u16_at(b, at)?);
        let kind = u16_at(b, at + 2)? & !NLA_F_NESTED;
        if len < 4 {
            return None;
        }
        let value = b.get(at + 4..at + len)?;
        at += len.next_multiple_of(4);
        Some((kind, value))
    })
}

fn parse_counters(payload: &[u8]) -> Option<FlowCounters> {
    let pair = |nested: &[u8]| {
        let mut out = (0u64, 0u64);
        for (kind, v) in attrs(nested) {
            let n = v.try_into().ok().map(u64::from_be_bytes).unwrap_or(0);
            match kind {
                CTA_COUNTERS_PACKETS => out.0 = n,
                CTA_COUNTERS_BYTES => out.1 = n,
                _ => {}
            }
        }
        out
    };
    // An entry without counters (accounting off) still forwards: it counts as zero.
    let mut c = FlowCounters::default();
    for (kind, v) in attrs(payload) {
        match kind {
            CTA_COUNTERS_ORIG => (c.a_packets, c.a_bytes) = pair(v),
            CTA_COUNTERS_REPLY => (c.b_packets, c.b_bytes) = pair(v),
            _ => {}
        }
    }
    Some(c)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn a(s: &str) -> SocketAddrV4 {
        s.parse()
            .unwrap_or_else(|_| SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0))
    }

    fn flow() -> Flow {
        Flow {
            a_peer: a("10.0.0.1:4000"),
            a_local: a("10.0.0.9:20000"),
            b_local: a("10.0.0.9:20002"),
            b_peer: a("10.0.0.2:5000"),
        }
    }

    /// Walks nested attributes by a path of types.
    fn find<'a>(payload: &'a [u8], path: &[u16]) -> Option<&'a [u8]> {
        let (first, rest) = path.split_first()?;
        let (_, v) = attrs(payload).find(|(k, _)| k == first)?;
        if rest.is_empty() {
            Some(v)
        } else {
            find(v, rest)
        }
    }

    #[test]
    fn a_zone_is_bits_two_to_seven_of_the_port() {
        assert_eq!(zone_of(20_000), 8);
        assert_eq!(zone_of(20_003), 8, "RTP and RTCP of a pair share it");
        assert_eq!(zone_of(20_004), 9);
        assert_eq!(zone_of(20_256), 8, "256 ports apart share it");
        assert_eq!(usize::from(zone_of(u16::MAX)), ZONES - 1, "the top zone");
        let ruleset = nft_ruleset(&(20_000..=29_999));
        // The rule's expression must be the same function: one byte at offset 3 of the
        // UDP header (the port's low byte), its top six bits.
        assert!(ruleset.contains("udp dport @rtp_ports ct zone set @th,24,6"));
        assert!(ruleset.contains("udp sport @rtp_ports notrack"));
        assert!(ruleset.contains("add element ip switchyard rtp_ports { 20000-29999 }"));
    }

    #[test]
    fn a_flow_needs_both_our_ports_in_one_zone() {
        let f = flow();
        let at = |port| SocketAddr::V4(SocketAddrV4::new(*f.a_local.ip(), port));
        let (pa, pb) = (SocketAddr::V4(f.a_peer), SocketAddr::V4(f.b_peer));
        assert!(Flow::new(pa, at(20_000), at(20_002), pb).is_some());
        assert!(Flow::new(pa, at(20_000), at(20_256), pb).is_some());
        assert_eq!(Flow::new(pa, at(20_000), at(20_004), pb), None);
    }

    #[test]
    fn create_binds_both_nat_directions_to_the_flow() {
        let msg = create_msg(7, &flow(), Duration::from_secs(60));
        assert_eq!(u32_at(&msg, 0), Some(msg.len() as u32));
        assert_eq!(u16_at(&msg, 4), Some((1 << 8) | IPCTNL_MSG_CT_NEW));
        assert_eq!(
            u16_at(&msg, 6),
            Some(NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL)
        );
        assert_eq!(u32_at(&msg, 8), Some(7));
        let p = &msg[20..];
        let ip = |path: &[u16]| find(p, path).map(|v| v.to_vec());
        let orig = [CTA_TUPLE_ORIG, CTA_TUPLE_IP];
        assert_eq!(
            ip(&[orig[0], orig[1], CTA_IP_V4_SRC]),
            Some(vec![10, 0, 0, 1])
        );
        assert_eq!(
            ip(&[orig[0], orig[1], CTA_IP_V4_DST]),
            Some(vec![10, 0, 0, 9])
        );
        let port = |path: &[u16]| {
            find(p, path)
                .and_then(|v| v.try_into().ok())
                .map(u16::from_be_bytes)
        };
        assert_eq!(
            port(&[CTA_TUPLE_ORIG, CTA_TUPLE_PROTO, CTA_PROTO_SRC_PORT]),
            Some(4000)
        );
        assert_eq!(
            port(&[CTA_TUPLE_ORIG, CTA_TUPLE_PROTO, CTA_PROTO_DST_PORT]),
            Some(20000)
        );
        assert_eq!(
            port(&[CTA_TUPLE_REPLY, CTA_TUPLE_PROTO, CTA_PROTO_SRC_PORT]),
            Some(20000)
        );
        assert_eq!(
            port(&[CTA_TUPLE_REPLY, CTA_TUPLE_PROTO, CTA_PROTO_DST_PORT]),
            Some(4000)
        );
        assert_eq!(
            ip(&[CTA_NAT_DST, CTA_NAT_V4_MINIP]),
            Some(vec![10, 0, 0, 2])
        );
        assert_eq!(
            ip(&[CTA_NAT_DST, CTA_NAT_V4_MAXIP]),
            Some(vec![10, 0, 0, 2])
        );
        assert_eq!(
            port(&[CTA_NAT_DST, CTA_NAT_PROTO, CTA_PROTONAT_PORT_MIN]),
            Some(5000)
        );
        assert_eq!(
            port(&[CTA_NAT_SRC, CTA_NAT_PROTO, CTA_PROTONAT_PORT_MAX]),
            Some(20002)
        );
        assert_eq!(
            ip(&[CTA_NAT_SRC, CTA_NAT_V4_MINIP]),
            Some(vec![10, 0, 0, 9])
        );
        assert_eq!(ip(&[CTA_TIMEOUT]), Some(60u32.to_be_bytes().to_vec()));
        // Ports 20000 and 20002: bits 2-7 are 8.
        assert_eq!(ip(&[CTA_ZONE]), Some(8u16.to_be_bytes().to_vec()));
        assert_eq!(
            find(p, &[CTA_TUPLE_ORIG, CTA_TUPLE_PROTO, CTA_PROTO_NUM]),
            Some(&[17u8][..])
        );
    }

    #[test]
    fn answers_are_matched_by_sequence_and_errors_carry_the_errno() {
        let mut ack = Vec::new();
        ack.extend_from_slice(&36u32.to_ne_bytes());
        ack.extend_from_slice(&NLMSG_ERROR.to_ne_bytes());
        ack.extend_from_slice(&0u16.to_ne_bytes());
        ack.extend_from_slice(&5u32.to_ne_bytes());
        ack.extend_from_slice(&0u32.to_ne_bytes());
        ack.extend_from_slice(&(-17i32).to_ne_bytes());
        ack.extend_from_slice(&[0; 16]);
        assert!(parse_answer(&ack, 4).is_none(), "another request's answer");
        let err = parse_answer(&ack, 5).and_then(Result::err);
        assert_eq!(err.and_then(|e| e.raw_os_error()), Some(EEXIST));
        ack[16..20].copy_from_slice(&0i32.to_ne_bytes());
        assert!(matches!(parse_answer(&ack, 5), Some(Ok(v)) if v.is_empty()));
        assert!(parse_answer(&ack[..10], 5).is_none(), "truncated");
    }

    #[test]
    fn counters_are_read_per_direction() {
        let mut m = Msg::new(IPCTNL_MSG_CT_NEW, 0, 1);
        m.open(CTA_COUNTERS_ORIG)
            .attr(CTA_COUNTERS_PACKETS, &50u64.to_be_bytes())
            .attr(CTA_COUNTERS_BYTES, &10_000u64.to_be_bytes())
            .close()
            .open(CTA_COUNTERS_REPLY)
            .attr(CTA_COUNTERS_PACKETS, &49u64.to_be_bytes())
            .attr(CTA_COUNTERS_BYTES, &9_800u64.to_be_bytes())
            .close();
        let msg = m.finish();
        let c = parse_counters(&msg[20..]);
        assert_eq!(
            c,
            Some(FlowCounters {
                a_packets: 50,
                a_bytes: 10_000,
                b_packets: 49,
                b_bytes: 9_800
            })
        );
        // Garbage never panics.
        assert_eq!(
            parse_counters(&[0xff, 0xff, 1]),
            Some(FlowCounters::default())
        );
    }

    #[test]
    fn only_ipv4_flows_on_specific_local_addresses_are_offloaded() {
        let v4a: SocketAddr = "10.0.0.1:1"
            .parse()
            .unwrap_or_else(|_| SocketAddr::from(([0; 4], 0)));
        let v6: SocketAddr = "[2001:db8::1]:1".parse().unwrap_or(v4a);
        let mapped: SocketAddr = "[::ffff:10.0.0.3]:7".parse().unwrap_or(v4a);
        assert!(Flow::new(v4a, v4a, v4a, v6).is_none());
        let f = Flow::new(mapped, v4a, v4a, v4a);
        assert_eq!(f.map(|f| f.a_peer), Some(a("10.0.0.3:7")));
        let any: SocketAddr = "0.0.0.0:20000".parse().unwrap_or(v4a);
        assert!(Flow::new(v4a, any, v4a, v4a).is_none(), "a wildcard bind");
    }
}
