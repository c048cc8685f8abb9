//! The sans-IO SIP user agent (RFC 3261 §8 UAC/UAS cores on top of §17
//! transactions and §12 dialogs), in quinn's style: feed datagrams, commands and
//! timeouts with `now`; drain transmits and events; ask for the next deadline.
//!
//! Transactions live in a `HashMap` keyed by [`TxnKey`] (branch, method kind,
//! side); their deadlines in a lazy-deletion min-heap, so `poll_timeout` is O(1)
//! and each timer costs O(log n). Dialogs are filed by (Call-ID, local tag).
//! The client side (INVITE/CANCEL/BYE) is in `uac.rs`, the server side in `uas.rs`.
//! Extensions each have a file: reliable 18x and PRACK (`prack.rs`, RFC 3262),
//! re-INVITE/UPDATE offers (`reoffer.rs`), session timers (`session.rs`, RFC 4028),
//! REFER/NOTIFY (`refer.rs`, RFC 3515), REGISTER and OPTIONS probes (`register.rs`),
//! MESSAGE both ways (`message.rs`, RFC 3428).
//! Their deadlines (not transaction timers) are in `timers.rs`.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::auth::Credentials;
use crate::dialog::{Dialog, DialogId};
use crate::msg::{self, Header, Method, Request, Response, SipMessage};
use crate::txn::{
    ClientInvite, ClientNonInvite, ServerInvite, ServerNonInvite, TxnConfig, TxnKey, TxnOutput,
};

mod message;
mod prack;
mod refer;
mod register;
mod reoffer;
mod session;
mod timers;
mod uac;
mod uas;

pub use message::{MAX_PENDING_MESSAGES, MESSAGE_ANSWER_TIMEOUT};
pub use register::RegistrationState;
use timers::{Timers, UaTimer};

/// Picked by the caller for outgoing legs; for incoming legs the UA allocates
/// `1 << 63 | counter`.
pub type LegRef = u64;

/// Bit set on every [`LegRef`] the UA allocates for incoming INVITEs.
pub const INCOMING_LEG_BIT: LegRef = 1 << 63;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Transport {
    Udp,
    Tcp,
}

impl Transport {
    /// The Via transport token.
    pub fn via_token(self) -> &'static str {
        match self {
            Transport::Udp => "UDP",
            Transport::Tcp => "TCP",
        }
    }
    fn uri_param(self) -> &'static str {
        match self {
            Transport::Udp => "udp",
            Transport::Tcp => "tcp",
        }
    }
    fn reliable(self) -> bool {
        self == Transport::Tcp
    }
}

/// One received UDP datagram or one framed TCP message.
#[derive(Clone, Debug)]
pub struct Datagram {
    pub src: SocketAddr,
    /// The local address it arrived on.
    pub dst: SocketAddr,
    pub transport: Transport,
    pub bytes: Vec<u8>,
}

/// Bytes to send. For TCP, `dst` names the connection (the peer address).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transmit {
    pub dst: SocketAddr,
    pub transport: Transport,
    pub bytes: Vec<u8>,
}

/// An opaque message body (SDP, never parsed here).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Body {
    pub content_type: String,
    pub bytes: Bytes,
}

/// The local IP the host routes toward a peer: how a switch bound to 0.0.0.0 finds the
/// address to advertise to each destination. Injected by the driver (a route lookup);
/// tests give a plain function, so the user agent itself stays free of I/O.
#[derive(Clone)]
pub struct LocalIps(std::sync::Arc<dyn Fn(IpAddr) -> IpAddr + Send + Sync>);

impl LocalIps {
    pub fn new(lookup: impl Fn(IpAddr) -> IpAddr + Send + Sync + 'static) -> Self {
        LocalIps(std::sync::Arc::new(lookup))
    }

    pub fn toward(&self, peer: IpAddr) -> IpAddr {
        (self.0)(peer)
    }
}

impl std::fmt::Debug for LocalIps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LocalIps(..)")
    }
}

#[derive(Clone, Debug)]
pub struct UaConfig {
    /// Via sent-by and Contact host:port. An unspecified IP with `local_ips` set means
    /// "per destination": each message carries the address routed toward its peer.
    pub public_addr: SocketAddr,
    pub local_ips: Option<LocalIps>,
    pub user_agent: String,
    pub t1: Duration,
    pub t2: Duration,
    pub t4: Duration,
    /// RFC 4028 session interval we ask for (UAC) or impose (UAS); None: no session
    /// timer unless the peer asks for one.
    pub session_expires: Option<Duration>,
    /// The smallest session interval we accept (a smaller one gets 422).
    pub min_se: Duration,
}

impl Default for UaConfig {
    fn default() -> Self {
        UaConfig {
            public_addr: SocketAddr::from(([127, 0, 0, 1], 5060)),
            local_ips: None,
            user_agent: "Switchyard".to_string(),
            t1: Duration::from_millis(500),
            t2: Duration::from_secs(4),
            t4: Duration::from_secs(5),
            session_expires: Some(Duration::from_secs(1800)),
            min_se: Duration::from_secs(90),
        }
    }
}

/// Where an outgoing INVITE goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    pub request_uri: String,
    pub addr: SocketAddr,
    pub transport: Transport,
}

// Invite is big, but a command is moved a handful of times per call.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug)]
pub enum UaCommand {
    Invite {
        leg: LegRef,
        target: Target,
        from_uri: String,
        from_display: Option<String>,
        to_uri: String,
        body: Option<Body>,
        credentials: Option<Credentials>,
        extra_headers: Vec<Header>,
        /// The Call-ID to use; one is generated when None. Lets the caller log and store it
        /// before the INVITE leaves.
        call_id: Option<String>,
    },
    /// End a dialog this process did not create (a `DialogSnapshot` kept by a previous run)
    /// with a BYE; reported as `Terminated { by_remote: false }` on `leg`.
    ByeRestored {
        leg: LegRef,
        snapshot: Box<DialogSnapshot>,
    },
    /// Before a final response; without a provisional yet, the CANCEL waits for one (§9.1).
    Cancel { leg: LegRef },
    /// On a confirmed dialog (on an unanswered leg it acts as Cancel / Reject 480).
    Bye { leg: LegRef },
    /// 200 to an incoming INVITE. Held back until the PRACK when a reliable 18x with
    /// SDP is still unacknowledged (RFC 3262 §3).
    Answer { leg: LegRef, body: Option<Body> },
    Reject {
        leg: LegRef,
        code: u16,
        reason: String,
        /// Extra response headers (`WWW-Authenticate` for a challenge, `Retry-After` …).
        headers: Vec<Header>,
    },
    /// As `Reject`, but sent once and forgotten: no retransmissions, no transaction (a
    /// retransmitted INVITE is a new request). For sources nobody vouches for.
    RejectStateless {
        leg: LegRef,
        code: u16,
        reason: String,
        headers: Vec<Header>,
    },
    /// Forget an incoming INVITE without answering (a banned source).
    Discard { leg: LegRef },
    /// An 18x on an incoming leg (early media SDP in `body`). Sent reliably (RFC 3262)
    /// when the INVITE requires 100rel, or supports it and the 18x has a body.
    Progress {
        leg: LegRef,
        code: u16,
        reason: String,
        body: Option<Body>,
    },
    /// Accept the peer's re-offer (`UaEvent::Reoffer`) with our answer.
    AnswerReoffer {
        leg: LegRef,
        id: u64,
        body: Option<Body>,
    },
    /// Refuse the peer's re-offer (e.g. 488); the dialog stays up as it was.
    RejectReoffer {
        leg: LegRef,
        id: u64,
        code: u16,
        reason: String,
    },
    /// A re-INVITE in a confirmed dialog (a new offer, or None to ask for one);
    /// answered by `UaEvent::ReinviteResult`.
    Reinvite { leg: LegRef, body: Option<Body> },
    /// Answer the peer's REFER (`UaEvent::Refer`): 202 accepts it (the UA then sends
    /// the first NOTIFY, `100 Trying`, itself), 4xx/603 refuses it.
    ReferResponse { leg: LegRef, id: u64, code: u16 },
    /// Progress of an accepted REFER: a NOTIFY with `SIP/2.0 <status_code> <reason>`.
    Notify {
        leg: LegRef,
        status_code: u16,
        reason: String,
        terminated: bool,
    },
    /// Send a REFER in the dialog; answered by `UaEvent::ReferResult`.
    Refer { leg: LegRef, refer_to: String },
    /// Register `aor` with the registrar at `target` and keep the binding refreshed
    /// (replaces a registration with the same `reg`). Reported by `Registration`.
    Register {
        reg: u64,
        target: Target,
        aor: String,
        contact_user: String,
        credentials: Option<Credentials>,
        expires: u32,
    },
    /// Remove the binding (REGISTER expires=0) and forget the registration.
    Unregister { reg: u64 },
    /// An out-of-dialog OPTIONS probe; answered by `UaEvent::Pong`.
    Ping { probe: u64, target: Target },
    /// An out-of-dialog MESSAGE (RFC 3428) with `body` of `content_type`; answered by
    /// `UaEvent::MessageResult`. The From header is `<from_uri>;tag=…` and nothing more
    /// (no display name, no Contact). A 401/407 is answered once with `credentials`.
    /// `extra_headers` are added as given (a `Max-Forwards` among them replaces ours).
    Message {
        msg: u64,
        target: Target,
        from_uri: String,
        to_uri: String,
        content_type: String,
        body: Bytes,
        credentials: Option<Credentials>,
        extra_headers: Vec<Header>,
    },
    /// The final answer (200..=699; 200/202 accept, 4xx refuse) to `UaEvent::MessageIn`.
    MessageResponse { msg: u64, code: u16, reason: String },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UaEvent {
    /// 1xx other than 100.
    Progress {
        leg: LegRef,
        code: u16,
        reason: String,
        body: Option<Body>,
    },
    /// 2xx received; the ACK is already sent.
    Answered { leg: LegRef, body: Option<Body> },
    /// Final non-2xx, Timer B (408) or transport error (503).
    Failed {
        leg: LegRef,
        code: u16,
        reason: String,
        warning: Option<String>,
    },
    /// The dialog ended: remote BYE/CANCEL (`by_remote`) or our BYE completed/timed out.
    /// On an incoming leg also: our 2xx never ACKed (408), or no PRACK for a reliable
    /// 18x within 64*T1 (504, the INVITE was rejected with it).
    Terminated {
        leg: LegRef,
        by_remote: bool,
        code: Option<u16>,
    },
    /// Our CANCEL took effect (487, or a 200 that raced it and was ACKed + BYEd).
    Cancelled { leg: LegRef },
    /// Sent just before `Answered` on a UAC leg: what it takes to end this dialog later,
    /// even from another process (the switch stores it so a BYE can follow a crash).
    DialogEstablished {
        leg: LegRef,
        snapshot: Box<DialogSnapshot>,
    },
    /// A new incoming INVITE; answer with `Answer`/`Reject`.
    Incoming {
        leg: LegRef,
        from: String,
        to: String,
        request_uri: String,
        body: Option<Body>,
        source: SocketAddr,
        transport: Transport,
        /// The INVITE as received (top Via stamped with received/rport).
        request: Box<Request>,
        /// The To tag our responses carry: with `request`, what names the dialog once we
        /// answer (see [`DialogSnapshot::incoming`]).
        local_tag: String,
    },
    /// The peer sent a new offer in the dialog (re-INVITE or UPDATE); reply with
    /// `AnswerReoffer` or `RejectReoffer` quoting `id`. Session refreshes (no body,
    /// or the peer's previous body again) are answered by the UA and not reported.
    Reoffer {
        leg: LegRef,
        id: u64,
        method: Method,
        body: Option<Body>,
    },
    /// The final response to our `Reinvite` (2xx already ACKed; 408 on timeout;
    /// 491 on glare, when the TU may retry later).
    ReinviteResult {
        leg: LegRef,
        code: u16,
        body: Option<Body>,
    },
    /// RFC 4028: no session refresh in time; a BYE is on its way and `Terminated`
    /// follows.
    SessionExpired { leg: LegRef },
    /// The peer asks us to transfer (RFC 3515); reply with `ReferResponse`.
    Refer {
        leg: LegRef,
        id: u64,
        refer_to: String,
        referred_by: Option<String>,
    },
    /// Final response to our `Refer` (408 on timeout).
    ReferResult { leg: LegRef, code: u16 },
    /// A NOTIFY about our REFER (already answered 200).
    ReferNotify {
        leg: LegRef,
        status_code: u16,
        terminated: bool,
    },
    /// A registration changed state.
    Registration { reg: u64, state: RegistrationState },
    /// The final response code to our `Ping`; None on timeout or transport error.
    Pong { probe: u64, code: Option<u16> },
    /// The final response to our `Message` (after one digest retry, if challenged);
    /// 408 on timeout (Timer F), 503 on a transport error.
    MessageResult { msg: u64, code: u16, reason: String },
    /// A MESSAGE from the peer (RFC 3428), out of dialog or in one of our dialogs (the
    /// To tag of `request` tells). Answer with `MessageResponse` quoting `msg` (an id
    /// the UA picks, with [`INCOMING_LEG_BIT`] set) within [`MESSAGE_ANSWER_TIMEOUT`],
    /// or the UA answers 408 itself. Retransmissions are absorbed, never reported.
    MessageIn {
        msg: u64,
        from: String,
        to: String,
        request_uri: String,
        source: SocketAddr,
        transport: Transport,
        /// The MESSAGE as received (top Via stamped with received/rport).
        request: Box<Request>,
        body: Option<Body>,
    },
}

impl UaEvent {
    /// The call leg the event is about; `None` for registrations, probes and messages.
    pub fn leg(&self) -> Option<LegRef> {
        match self {
            Self::Progress { leg, .. }
            | Self::Answered { leg, .. }
            | Self::Failed { leg, .. }
            | Self::Terminated { leg, .. }
            | Self::Cancelled { leg }
            | Self::DialogEstablished { leg, .. }
            | Self::Incoming { leg, .. }
            | Self::Reoffer { leg, .. }
            | Self::ReinviteResult { leg, .. }
            | Self::SessionExpired { leg }
            | Self::Refer { leg, .. }
            | Self::ReferResult { leg, .. }
            | Self::ReferNotify { leg, .. } => Some(*leg),
            _ => None,
        }
    }
}

/// What another process needs to send a BYE in a confirmed UAC dialog (RFC 3261
/// §12.2.1.1): the dialog itself and where its requests go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DialogSnapshot {
    pub dialog: crate::dialog::Dialog,
    pub peer: SocketAddr,
    pub transport: Transport,
}

impl DialogSnapshot {
    /// The dialog our 2xx to an incoming INVITE creates (RFC 3261 §12.1.1), from the
    /// INVITE and our To tag as `UaEvent::Incoming` reported them: what a later process
    /// needs to end it with a BYE. `peer` is where the INVITE came from (requests go to
    /// the route set or remote target first, when they name an address).
    pub fn incoming(
        invite: &Request,
        local_tag: &str,
        peer: SocketAddr,
        transport: Transport,
    ) -> Option<Self> {
        let mut dialog = Dialog::uas(invite, local_tag)?;
        dialog.state = crate::dialog::DialogState::Confirmed;
        Some(Self {
            dialog,
            peer,
            transport,
        })
    }
}

/// Counters since start, plus current table sizes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UaStats {
    pub messages_in: u64,
    pub messages_out: u64,
    pub parse_errors: u64,
    /// Retransmissions sent (requests, responses, ACKs).
    pub retransmissions: u64,
    /// Responses (and ACKs) matching no transaction or dialog.
    pub strays_dropped: u64,
    /// New requests refused by validation (400/405/420/481/483 …).
    pub rejected: u64,
    /// Datagrams/frames dropped by the per-source limit (counted by the `net` driver).
    pub rate_limited: u64,
    /// TCP connections refused at accept: over the total or per-source cap (`net`).
    pub tcp_refused: u64,
    /// TCP connections closed for sending nothing whole in time (idle, slowloris).
    pub tcp_timed_out: u64,
    /// Failed `accept` calls (out of descriptors, …), each followed by a backoff.
    pub tcp_accept_errors: u64,
    /// TCP connections open now.
    pub tcp_connections: u64,
    pub transactions: u64,
    pub legs: u64,
    /// MESSAGEs held now: ours in flight, and incoming ones waiting for the TU.
    pub messages: u64,
}

/// Methods we accept (RFC 3261 §8.2.1).
pub(crate) const SUPPORTED_METHODS: [Method; 11] = [
    Method::Invite,
    Method::Ack,
    Method::Bye,
    Method::Cancel,
    Method::Options,
    Method::Update,
    Method::Prack,
    Method::Refer,
    Method::Notify,
    Method::Info,
    Method::Message,
];
pub(crate) const ALLOW: &str =
    "INVITE, ACK, BYE, CANCEL, OPTIONS, UPDATE, PRACK, REFER, NOTIFY, INFO, MESSAGE";
/// Extensions we accept in `Require` and list in `Supported`.
pub(crate) const EXTENSIONS: [&str; 2] = ["100rel", "timer"];
pub(crate) const SUPPORTED: &str = "100rel, timer";

/// What the TU does with a transaction's outputs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Purpose {
    Invite,
    Cancel,
    Bye,
    /// Our re-INVITE or UPDATE in a dialog.
    Reoffer,
    /// Our REFER.
    Refer,
    /// A REGISTER for this registration (no leg).
    Register(u64),
    /// An OPTIONS probe (no leg).
    Ping(u64),
    /// Our MESSAGE (no leg).
    Message(u64),
    /// Server transactions other than INVITE, and anything we ignore.
    Other,
}

// Named after the RFC's four machines.
#[allow(clippy::enum_variant_names)]
#[derive(Debug)]
enum Machine {
    ClientInvite(ClientInvite),
    ClientNonInvite(ClientNonInvite),
    ServerInvite(ServerInvite),
    ServerNonInvite(ServerNonInvite),
}

impl Machine {
    fn next_timeout(&self) -> Option<Instant> {
        match self {
            Machine::ClientInvite(m) => m.next_timeout(),
            Machine::ClientNonInvite(m) => m.next_timeout(),
            Machine::ServerInvite(m) => m.next_timeout(),
            Machine::ServerNonInvite(m) => m.next_timeout(),
        }
    }
    fn on_timeout(&mut self, now: Instant, out: &mut Vec<TxnOutput>) {
        match self {
            Machine::ClientInvite(m) => m.on_timeout(now, out),
            Machine::ClientNonInvite(m) => m.on_timeout(now, out),
            Machine::ServerInvite(m) => m.on_timeout(now, out),
            Machine::ServerNonInvite(m) => m.on_timeout(now, out),
        }
    }
}

#[derive(Debug)]
struct TxnEntry {
    key: TxnKey,
    machine: Machine,
    leg: Option<LegRef>,
    purpose: Purpose,
    dst: SocketAddr,
    transport: Transport,
    /// The deadline currently in the heap for this entry (others are stale).
    scheduled: Option<Instant>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum LegState {
    /// UAC: INVITE sent, no final yet. UAS: INVITE received, not answered.
    Calling,
    /// 2xx sent/received, dialog confirmed.
    Confirmed,
    /// Our BYE is in flight.
    Terminating,
}

#[derive(Debug)]
struct Leg {
    uac: bool,
    state: LegState,
    peer: SocketAddr,
    transport: Transport,
    call_id: String,
    local_tag: String,
    /// UAC: the last INVITE sent. UAS: the INVITE received (Via with received/rport).
    invite: Request,
    invite_txn: Option<u64>,
    credentials: Option<Credentials>,
    auth_tried: bool,
    got_provisional: bool,
    cancel_requested: bool,
    cancel_sent: bool,
    dialog: Option<Dialog>,
    /// UAC: the ACK for the 2xx, resent for each 2xx retransmission.
    ack: Option<(SocketAddr, Vec<u8>)>,
    /// UAS: our answer body, reused for session refresh re-INVITEs.
    local_body: Option<Body>,
    /// Do not report the end of the BYE (the leg was already reported Cancelled).
    silent_bye: bool,
    /// State of the extensions (100rel, re-offers, session timers, REFER).
    ext: LegExt,
}

impl LegExt {
    /// Transactions that only end by a response from the TU or the peer.
    fn pending_txns(&self) -> impl Iterator<Item = u64> + '_ {
        self.reoffer_in
            .iter()
            .map(|r| r.txn)
            .chain(self.refer_in.iter().map(|r| r.txn))
            .chain(self.reoffer_out.iter().filter_map(|r| r.txn))
    }
}

/// Per-leg state of the features layered on the RFC 3261 core.
#[derive(Debug, Default)]
struct LegExt {
    /// UAS: reliable provisional responses (RFC 3262).
    rel: prack::UasRel,
    /// UAC: early dialogs created by reliable 18x, for PRACK (RFC 3262 §4).
    early: Vec<prack::EarlyDialog>,
    /// The last body the peer sent (offer or answer): a re-offer equal to it is
    /// only a session refresh.
    remote_body: Option<Body>,
    /// The peer's re-offer waiting for the TU.
    reoffer_in: Option<reoffer::InReoffer>,
    /// Our re-INVITE/UPDATE in flight.
    reoffer_out: Option<reoffer::OutReoffer>,
    /// RFC 4028 state once the dialog has a session timer.
    session: Option<session::Session>,
    /// The peer's Allow lists UPDATE (refresh with UPDATE, not re-INVITE).
    peer_allows_update: bool,
    /// UAC: our INVITE was already retried after a 422.
    se_retried: bool,
    /// REFERs from the peer waiting for the TU.
    refer_in: Vec<refer::InRefer>,
}

/// Peer IPs whose advertised address is remembered before the cache starts over.
const SENT_BY_CACHE_MAX: usize = 4096;

#[derive(Debug)]
pub struct UserAgent {
    cfg: UaConfig,
    /// `cfg.public_addr` as text, for the Via and Contact of every message we build.
    public_addr_text: String,
    /// `cfg.public_addr`'s IP as text, for Call-IDs.
    public_host_text: String,
    /// Per-destination mode: `host:port` text advertised toward each peer IP.
    sent_by_cache: HashMap<IpAddr, String>,
    rng: StdRng,
    // Boxed: a transaction outlives its call by up to 32 s (Timers D, J, M), so under
    // load this map holds 100k+ entries, and growing it moved every entry (512 bytes
    // inline) into fresh pages — 4 % of the CPU per call during a ramp.
    txns: HashMap<u64, Box<TxnEntry>>,
    txn_index: HashMap<TxnKey, u64>,
    next_txn: u64,
    timers: BinaryHeap<Reverse<(Instant, u64)>>,
    // Boxed for the same reason: a leg is 1 KB inline.
    legs: HashMap<LegRef, Box<Leg>>,
    dialogs: HashMap<DialogId, LegRef>,
    next_incoming: u64,
    transmits: VecDeque<Transmit>,
    events: VecDeque<UaEvent>,
    stats: UaStats,
    /// Reused output buffer for the machines.
    scratch: Vec<TxnOutput>,
    /// UA-level timers (100rel, session timers, registrations).
    ua_timers: Timers,
    /// Ids for `UaEvent::Reoffer`.
    next_reoffer: u64,
    /// Outbound registrations by `reg`.
    regs: HashMap<u64, register::Registration>,
    /// MESSAGEs in flight and incoming ones waiting for the TU.
    messages: message::Messages,
}

impl UserAgent {
    pub fn new(config: UaConfig, seed: u64) -> Self {
        UserAgent {
            public_addr_text: config.public_addr.to_string(),
            public_host_text: config.public_addr.ip().to_string(),
            sent_by_cache: HashMap::new(),
            cfg: config,
            rng: StdRng::seed_from_u64(seed),
            txns: HashMap::new(),
            txn_index: HashMap::new(),
            next_txn: 0,
            timers: BinaryHeap::new(),
            legs: HashMap::new(),
            dialogs: HashMap::new(),
            next_incoming: 0,
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            stats: UaStats::default(),
            scratch: Vec::new(),
            ua_timers: Timers::default(),
            next_reoffer: 0,
            regs: HashMap::new(),
            messages: message::Messages::default(),
        }
    }

    pub fn config(&self) -> &UaConfig {
        &self.cfg
    }

    pub fn stats(&self) -> UaStats {
        UaStats {
            transactions: self.txns.len() as u64,
            legs: self.legs.len() as u64,
            messages: self.messages_held() as u64,
            ..self.stats
        }
    }

    pub fn call_id(&self, leg: LegRef) -> Option<&str> {
        self.legs.get(&leg).map(|l| l.call_id.as_str())
    }

    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    pub fn poll_event(&mut self) -> Option<UaEvent> {
        self.events.pop_front()
    }

    /// Earliest deadline. May be early (a stale heap entry): calling
    /// `handle_timeout` then is harmless.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let txn = self.timers.peek().map(|Reverse((at, _))| *at);
        match (txn, self.ua_timers.next()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some(Reverse((at, id))) = self.timers.peek().copied() {
            if at > now {
                break;
            }
            self.timers.pop();
            let Some(entry) = self.txns.get_mut(&id) else {
                continue;
            };
            if entry.scheduled != Some(at) {
                continue;
            }
            entry.scheduled = None;
            let mut out = std::mem::take(&mut self.scratch);
            entry.machine.on_timeout(now, &mut out);
            self.run_outputs(id, &mut out, now);
            self.scratch = out;
            self.schedule(id);
        }
        while let Some(t) = self.ua_timers.pop_expired(now) {
            self.on_ua_timer(now, t);
        }
    }

    fn on_ua_timer(&mut self, now: Instant, t: UaTimer) {
        match t {
            UaTimer::Rel1xx(leg) => self.rel1xx_retransmit(now, leg),
            UaTimer::Rel1xxGiveUp(leg) => self.rel1xx_give_up(now, leg),
            UaTimer::SessionRefresh(leg) => self.session_refresh_due(now, leg),
            UaTimer::SessionExpiry(leg) => self.session_expired(now, leg),
            UaTimer::Register(reg) => self.send_register(now, reg),
            UaTimer::Trying(leg) => self.trying_due(now, leg),
            UaTimer::MessageAnswer(msg) => self.message_answer_due(now, msg),
        }
    }

    pub fn handle_command(&mut self, now: Instant, cmd: UaCommand) {
        match cmd {
            UaCommand::Invite {
                leg,
                target,
                from_uri,
                from_display,
                to_uri,
                body,
                credentials,
                extra_headers,
                call_id,
            } => self.invite(
                now,
                leg,
                uac::InviteArgs {
                    target,
                    from_uri,
                    from_display,
                    to_uri,
                    body,
                    credentials,
                    extra_headers,
                    call_id,
                },
            ),
            UaCommand::Cancel { leg } => self.cancel(now, leg),
            UaCommand::ByeRestored { leg, snapshot } => self.bye_restored(now, leg, *snapshot),
            UaCommand::Bye { leg } => self.bye(now, leg),
            UaCommand::Answer { leg, body } => self.answer(now, leg, body),
            UaCommand::Reject {
                leg,
                code,
                reason,
                headers,
            } => self.reject(now, leg, code, &reason, headers),
            UaCommand::RejectStateless {
                leg,
                code,
                reason,
                headers,
            } => self.reject_stateless(leg, code, &reason, headers),
            UaCommand::Discard { leg } => self.discard(leg),
            UaCommand::Progress {
                leg,
                code,
                reason,
                body,
            } => self.progress(now, leg, code, &reason, body),
            UaCommand::AnswerReoffer { leg, id, body } => self.answer_reoffer(now, leg, id, body),
            UaCommand::RejectReoffer {
                leg,
                id,
                code,
                reason,
            } => self.reject_reoffer(now, leg, id, code, &reason),
            UaCommand::Reinvite { leg, body } => {
                self.send_reoffer(now, leg, Method::Invite, body, false);
            }
            UaCommand::ReferResponse { leg, id, code } => self.refer_response(now, leg, id, code),
            UaCommand::Notify {
                leg,
                status_code,
                reason,
                terminated,
            } => self.notify(now, leg, status_code, &reason, terminated),
            UaCommand::Refer { leg, refer_to } => self.send_refer(now, leg, &refer_to),
            UaCommand::Register {
                reg,
                target,
                aor,
                contact_user,
                credentials,
                expires,
            } => self.register(now, reg, target, aor, contact_user, credentials, expires),
            UaCommand::Unregister { reg } => self.unregister(now, reg),
            UaCommand::Ping { probe, target } => self.ping(now, probe, target),
            UaCommand::Message {
                msg,
                target,
                from_uri,
                to_uri,
                content_type,
                body,
                credentials,
                extra_headers,
            } => self.send_message(
                now,
                msg,
                message::MessageArgs {
                    target,
                    from_uri,
                    to_uri,
                    content_type,
                    body,
                    credentials,
                    extra_headers,
                },
            ),
            UaCommand::MessageResponse { msg, code, reason } => {
                self.message_response(now, msg, code, &reason);
            }
        }
    }

    pub fn handle_datagram(&mut self, now: Instant, d: Datagram) {
        self.stats.messages_in += 1;
        match msg::parse(&d.bytes) {
            Err(err) => {
                self.stats.parse_errors += 1;
                tracing::warn!(src = %d.src, error = %err, "unparseable SIP message");
                if let Some(resp) = msg::error_response(&d.bytes, &err) {
                    self.send(d.src, d.transport, resp.to_bytes(), false);
                }
            }
            Ok(SipMessage::Request(req)) => {
                tracing::debug!(
                    method = req.method.as_str(),
                    call_id = req.headers.call_id().unwrap_or(""),
                    src = %d.src,
                    "request in"
                );
                self.on_request(now, req, &d);
            }
            Ok(SipMessage::Response(resp)) => {
                tracing::debug!(
                    code = resp.code,
                    call_id = resp.headers.call_id().unwrap_or(""),
                    src = %d.src,
                    "response in"
                );
                self.on_response(now, resp);
            }
        }
    }

    /// The transport could not reach `dst` (TCP connect failed or the connection
    /// broke): every client transaction towards it ends now (§8.1.3.1: 503 for
    /// an INVITE, the BYE counts as done).
    pub fn handle_transport_error(&mut self, now: Instant, dst: SocketAddr, transport: Transport) {
        let dead: Vec<u64> = self
            .txns
            .iter()
            .filter(|(_, e)| !e.key.server && e.dst == dst && e.transport == transport)
            .map(|(id, _)| *id)
            .collect();
        for id in dead {
            let Some(e) = self.txns.get(&id) else {
                continue;
            };
            let (leg, purpose) = (e.leg, e.purpose);
            self.remove_txn(id);
            let Some(leg) = leg else {
                self.unowned_done(now, purpose, 503, None);
                continue;
            };
            match purpose {
                Purpose::Invite
                    if self
                        .legs
                        .get(&leg)
                        .is_some_and(|l| l.state == LegState::Calling) =>
                {
                    self.events.push_back(UaEvent::Failed {
                        leg,
                        code: 503,
                        reason: "Service Unavailable".to_string(),
                        warning: None,
                    });
                    self.remove_leg(leg);
                }
                Purpose::Bye => self.uac_timeout(leg, Purpose::Bye),
                Purpose::Reoffer => self.reoffer_done(now, leg, 503, None),
                Purpose::Refer => self
                    .events
                    .push_back(UaEvent::ReferResult { leg, code: 503 }),
                _ => {}
            }
        }
    }

    // ---- plumbing shared by uac.rs and uas.rs ----

    fn send(&mut self, dst: SocketAddr, transport: Transport, bytes: Vec<u8>, retrans: bool) {
        self.stats.messages_out += 1;
        if retrans {
            self.stats.retransmissions += 1;
        }
        self.transmits.push_back(Transmit {
            dst,
            transport,
            bytes,
        });
    }

    /// `len` (at most 16) lowercase hex digits of a random u64, most significant first.
    fn random_hex(&mut self, len: usize) -> String {
        let v: u64 = self.rng.random();
        let mut s = String::with_capacity(16);
        push_hex(&mut s, v, len);
        s
    }

    /// Our `host:port` as `peer` must see it: the public address, or in per-destination
    /// mode the local address routed toward `peer` (looked up once per peer IP).
    fn sent_by(&mut self, peer: IpAddr) -> &str {
        let Some(lookup) = self
            .cfg
            .local_ips
            .as_ref()
            .filter(|_| self.per_destination())
        else {
            return &self.public_addr_text;
        };
        if self.sent_by_cache.len() >= SENT_BY_CACHE_MAX && !self.sent_by_cache.contains_key(&peer)
        {
            // Routes change rarely and peers are few; a bounded cache beats an LRU here.
            self.sent_by_cache.clear();
        }
        let port = self.cfg.public_addr.port();
        self.sent_by_cache
            .entry(peer)
            .or_insert_with(|| SocketAddr::new(lookup.toward(peer), port).to_string())
    }

    /// True when no single address is advertised (listening on 0.0.0.0, no public_addr).
    fn per_destination(&self) -> bool {
        self.cfg.public_addr.ip().is_unspecified() && self.cfg.local_ips.is_some()
    }

    /// Our IP as text for a Call-ID toward `peer`.
    fn call_id_host(&mut self, peer: IpAddr) -> String {
        if !self.per_destination() {
            return self.public_host_text.clone();
        }
        let sent_by = self.sent_by(peer);
        match sent_by.rsplit_once(':') {
            Some((host, _)) => host.to_owned(),
            None => sent_by.to_owned(),
        }
    }

    /// A Via for a request we originate toward `peer`, with a fresh RFC 3261 branch.
    fn new_via(&mut self, transport: Transport, peer: IpAddr) -> String {
        let v: u64 = self.rng.random();
        let token = transport.via_token();
        let sent_by = self.sent_by(peer);
        let mut via = String::with_capacity(sent_by.len() + token.len() + 48);
        via.push_str("SIP/2.0/");
        via.push_str(token);
        via.push(' ');
        via.push_str(sent_by);
        via.push_str(";branch=z9hG4bK");
        push_hex(&mut via, v, 16);
        via.push_str(";rport");
        via
    }

    /// Our Contact toward `peer`.
    fn contact(&mut self, transport: Transport, peer: IpAddr) -> String {
        let param = transport.uri_param();
        let sent_by = self.sent_by(peer);
        let mut contact = String::with_capacity(sent_by.len() + param.len() + 32);
        contact.push_str("<sip:switchyard@");
        contact.push_str(sent_by);
        contact.push_str(";transport=");
        contact.push_str(param);
        contact.push('>');
        contact
    }

    fn txn_config(&self, transport: Transport) -> TxnConfig {
        TxnConfig {
            t1: self.cfg.t1,
            t2: self.cfg.t2,
            t4: self.cfg.t4,
            reliable: transport.reliable(),
        }
    }

    /// Files a new transaction and schedules its first deadline.
    #[allow(clippy::too_many_arguments)]
    fn insert_txn(
        &mut self,
        key: TxnKey,
        machine: Machine,
        leg: Option<LegRef>,
        purpose: Purpose,
        dst: SocketAddr,
        transport: Transport,
    ) -> u64 {
        let id = self.next_txn;
        self.next_txn += 1;
        // A key collision (a peer reusing a branch) replaces the old machine.
        if let Some(old) = self.txn_index.insert(key.clone(), id) {
            self.txns.remove(&old);
        }
        self.txns.insert(
            id,
            Box::new(TxnEntry {
                key,
                machine,
                leg,
                purpose,
                dst,
                transport,
                scheduled: None,
            }),
        );
        self.schedule(id);
        id
    }

    fn remove_txn(&mut self, id: u64) {
        if let Some(e) = self.txns.remove(&id)
            && self.txn_index.get(&e.key) == Some(&id)
        {
            self.txn_index.remove(&e.key);
        }
    }

    /// Pushes the entry's next deadline if it changed (old heap entries go stale).
    fn schedule(&mut self, id: u64) {
        let Some(e) = self.txns.get_mut(&id) else {
            return;
        };
        let next = e.machine.next_timeout();
        if next != e.scheduled {
            e.scheduled = next;
            if let Some(at) = next {
                self.timers.push(Reverse((at, id)));
            }
        }
    }

    /// Acts on what a machine asked for: sends, TU callbacks, removal.
    fn run_outputs(&mut self, id: u64, out: &mut Vec<TxnOutput>, now: Instant) {
        let Some(e) = self.txns.get(&id) else {
            out.clear();
            return;
        };
        let (dst, transport, leg, purpose) = (e.dst, e.transport, e.leg, e.purpose);
        let server = e.key.server;
        for o in out.drain(..) {
            match o {
                TxnOutput::Transmit {
                    bytes,
                    retransmission,
                } => self.send(dst, transport, bytes, retransmission),
                TxnOutput::Response(resp) => {
                    if let Some(leg) = leg {
                        self.tu_response(now, leg, purpose, resp);
                    } else if resp.code >= 200 {
                        self.unowned_done(now, purpose, resp.code, Some(&resp));
                    }
                }
                TxnOutput::Timeout => {
                    if leg.is_none() && !server {
                        self.unowned_done(now, purpose, 408, None);
                    }
                    if let Some(leg) = leg {
                        if server {
                            self.uas_timeout(now, leg, purpose);
                        } else if purpose == Purpose::Reoffer {
                            self.reoffer_done(now, leg, 408, None);
                        } else if purpose == Purpose::Refer {
                            self.events
                                .push_back(UaEvent::ReferResult { leg, code: 408 });
                        } else {
                            self.uac_timeout(leg, purpose);
                        }
                    }
                }
                TxnOutput::Terminated => self.remove_txn(id),
            }
        }
    }

    fn remove_leg(&mut self, leg: LegRef) {
        self.ua_timers.cancel_leg(leg);
        if let Some(l) = self.legs.remove(&leg) {
            // Requests waiting for the TU, and our re-INVITE once it had a 1xx, have
            // no timers left: drop them (a retransmission then finds no dialog: 481).
            for txn in l.ext.pending_txns() {
                self.remove_txn(txn);
            }
            let id = DialogId {
                call_id: l.call_id,
                local_tag: l.local_tag,
            };
            if self.dialogs.get(&id) == Some(&leg) {
                self.dialogs.remove(&id);
            }
        }
    }

    /// Sends a response built by the TU through a server transaction (creating a
    /// non-INVITE one for requests that have none yet).
    fn respond_via_txn(&mut self, id: u64, resp: &Response, now: Instant) {
        let Some(e) = self.txns.get_mut(&id) else {
            return;
        };
        let mut out = std::mem::take(&mut self.scratch);
        match &mut e.machine {
            Machine::ServerInvite(m) => m.send_response(resp, now, &mut out),
            Machine::ServerNonInvite(m) => m.send_response(resp, now, &mut out),
            _ => {}
        }
        self.run_outputs(id, &mut out, now);
        self.scratch = out;
        self.schedule(id);
    }

    /// A response to `req` with a To tag added when missing (§8.2.6.2).
    fn make_response(&mut self, req: &Request, code: u16, reason: &str) -> Response {
        let mut resp = Response::for_request(req, code, reason);
        if code > 100
            && let Some(to) = req.headers.get("To")
            && req.headers.to().is_some_and(|t| t.tag().is_none())
        {
            let tag = self.random_hex(10);
            resp.headers.set("To", crate::msg::with_tag(to, &tag));
        }
        resp
    }
}

/// Appends the `len` (at most 16) most significant hex digits of `v`, as `{v:016x}`
/// truncated to `len` would.
fn push_hex(out: &mut String, v: u64, len: usize) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for i in 0..len.min(16) {
        let nibble = (v >> (60 - 4 * i)) & 0xf;
        out.push(char::from(DIGITS[nibble as usize]));
    }
}

/// True when a comma-separated header (`Require`, `Supported`, `Allow` …) lists `token`.
fn has_token(headers: &msg::Headers, name: &str, token: &str) -> bool {
    headers
        .get_all(name)
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// The `Body` of a message, if it has one.
fn body_of(headers: &msg::Headers, bytes: &Bytes) -> Option<Body> {
    if bytes.is_empty() {
        return None;
    }
    Some(Body {
        content_type: headers
            .get("Content-Type")
            .unwrap_or("application/octet-stream")
            .to_string(),
        bytes: bytes.clone(),
    })
}

#[cfg(test)]
mod hex_tests {
    use super::push_hex;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn push_hex_is_the_padded_format_truncated(v in any::<u64>(), len in 0usize..20) {
            let mut s = String::new();
            push_hex(&mut s, v, len);
            let mut want = format!("{v:016x}");
            want.truncate(len.min(16));
            prop_assert_eq!(s, want);
        }
    }
}
