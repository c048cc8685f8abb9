//! Counters the core keeps for `/metrics` (Prometheus text format). Plain atomics: the
//! numbers are few and written once per status change, never per packet.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::model::CallStatus;

const STATUSES: [CallStatus; 8] = [
    CallStatus::Initiating,
    CallStatus::Ringing,
    CallStatus::InProgress,
    CallStatus::Completed,
    CallStatus::Busy,
    CallStatus::NoAnswer,
    CallStatus::Cancelled,
    CallStatus::Failed,
];

#[derive(Debug, Default)]
pub struct Metrics {
    calls_started: AtomicU64,
    /// Status transitions, indexed like `STATUSES`.
    transitions: [AtomicU64; 8],
    rtp_packets_received: AtomicU64,
    rtp_bytes_received: AtomicU64,
    store_errors: AtomicU64,
    /// Inbound INVITEs by outcome, indexed like `InboundOutcome`.
    inbound: [AtomicU64; 5],
    trunk_skipped: AtomicU64,
    media_refused: AtomicU64,
    /// Agent streams: started, and ended by how (`STREAM_ENDS`).
    streams_started: AtomicU64,
    streams_ended: [AtomicU64; 3],
    stream_reconnects: AtomicU64,
    /// Call frames and messages a slow server (or a full queue) made the switch drop.
    stream_frames_dropped: AtomicU64,
    stream_playout_dropped_ms: AtomicU64,
}

/// How a stream ended, for `switchyard_streams_ended_total{reason}`.
const STREAM_ENDS: [&str; 3] = ["server_closed", "stopped", "failed"];

/// True at most once per wall-clock second per `last` (log throttling under overload).
pub fn once_per_second(last: &AtomicU64) -> bool {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    last.swap(now, Ordering::Relaxed) != now
}

/// What became of an inbound INVITE, for `switchyard_inbound_invites_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InboundOutcome {
    Accepted,
    Challenged,
    Forbidden,
    Rejected,
    Failed,
}

impl InboundOutcome {
    const ALL: [InboundOutcome; 5] = [
        InboundOutcome::Accepted,
        InboundOutcome::Challenged,
        InboundOutcome::Forbidden,
        InboundOutcome::Rejected,
        InboundOutcome::Failed,
    ];
    fn as_str(self) -> &'static str {
        match self {
            InboundOutcome::Accepted => "accepted",
            InboundOutcome::Challenged => "challenged",
            InboundOutcome::Forbidden => "forbidden",
            InboundOutcome::Rejected => "rejected",
            InboundOutcome::Failed => "failed",
        }
    }
}

impl Metrics {
    pub fn stream_started(&self) {
        self.streams_started.fetch_add(1, Ordering::Relaxed);
    }

    /// A stream's end (`reason` one of `STREAM_ENDS`) and its final counters.
    pub fn stream_ended(&self, reason: &str, stats: &crate::streams::StreamStats) {
        if let Some(i) = STREAM_ENDS.iter().position(|r| *r == reason) {
            self.streams_ended[i].fetch_add(1, Ordering::Relaxed);
        }
        self.stream_reconnects
            .fetch_add(stats.reconnects, Ordering::Relaxed);
        self.stream_frames_dropped.fetch_add(
            stats.input_dropped + stats.media_dropped + stats.control_dropped,
            Ordering::Relaxed,
        );
        self.stream_playout_dropped_ms
            .fetch_add(stats.playout_dropped_ms, Ordering::Relaxed);
    }

    pub fn call_started(&self) {
        self.calls_started.fetch_add(1, Ordering::Relaxed);
    }

    pub fn status(&self, status: CallStatus) {
        if let Some(i) = STATUSES.iter().position(|s| *s == status) {
            self.transitions[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn rtp(&self, packets: u64, bytes: u64) {
        self.rtp_packets_received
            .fetch_add(packets, Ordering::Relaxed);
        self.rtp_bytes_received.fetch_add(bytes, Ordering::Relaxed);
    }

    pub fn inbound(&self, outcome: InboundOutcome) {
        if let Some(i) = InboundOutcome::ALL.iter().position(|o| *o == outcome) {
            self.inbound[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A call refused because no media bridge could be opened (ports or descriptors).
    pub fn media_refused(&self) {
        self.media_refused.fetch_add(1, Ordering::Relaxed);
    }

    pub fn trunk_skipped(&self) {
        self.trunk_skipped.fetch_add(1, Ordering::Relaxed);
    }

    pub fn store_error(&self) {
        self.store_errors.fetch_add(1, Ordering::Relaxed);
    }

    /// Render with the live-call gauge, the SIP stack's counters and the in-kernel
    /// forwarder's (when it is on).
    pub fn render(
        &self,
        live_calls: usize,
        sip: Option<&sip::ua::UaStats>,
        trunks: &[super::trunk::Trunk],
        kernel: Option<media::net::kernel::ForwarderStats>,
    ) -> String {
        let mut out = String::with_capacity(2048);
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let _ = writeln!(out, "# TYPE switchyard_calls_active gauge");
        let _ = writeln!(out, "switchyard_calls_active {live_calls}");
        let _ = writeln!(out, "# TYPE switchyard_calls_started_total counter");
        let _ = writeln!(
            out,
            "switchyard_calls_started_total {}",
            load(&self.calls_started)
        );
        let _ = writeln!(out, "# TYPE switchyard_call_status_total counter");
        for (i, s) in STATUSES.iter().enumerate() {
            let _ = writeln!(
                out,
                "switchyard_call_status_total{{status=\"{}\"}} {}",
                s.as_str(),
                load(&self.transitions[i])
            );
        }
        let started = load(&self.streams_started);
        let ended: u64 = self.streams_ended.iter().map(load).sum();
        let _ = writeln!(out, "# TYPE switchyard_streams_active gauge");
        let _ = writeln!(
            out,
            "switchyard_streams_active {}",
            started.saturating_sub(ended)
        );
        let _ = writeln!(out, "# TYPE switchyard_streams_started_total counter");
        let _ = writeln!(out, "switchyard_streams_started_total {started}");
        let _ = writeln!(out, "# TYPE switchyard_streams_ended_total counter");
        for (i, r) in STREAM_ENDS.iter().enumerate() {
            let _ = writeln!(
                out,
                "switchyard_streams_ended_total{{reason=\"{r}\"}} {}",
                load(&self.streams_ended[i])
            );
        }
        let _ = writeln!(out, "# TYPE switchyard_stream_reconnects_total counter");
        let _ = writeln!(
            out,
            "switchyard_stream_reconnects_total {}",
            load(&self.stream_reconnects)
        );
        let _ = writeln!(out, "# TYPE switchyard_stream_frames_dropped_total counter");
        let _ = writeln!(
            out,
            "switchyard_stream_frames_dropped_total {}",
            load(&self.stream_frames_dropped)
        );
        let _ = writeln!(
            out,
            "# TYPE switchyard_stream_playout_dropped_ms_total counter"
        );
        let _ = writeln!(
            out,
            "switchyard_stream_playout_dropped_ms_total {}",
            load(&self.stream_playout_dropped_ms)
        );
        let _ = writeln!(out, "# TYPE switchyard_rtp_packets_received_total counter");
        let _ = writeln!(
            out,
            "switchyard_rtp_packets_received_total {}",
            load(&self.rtp_packets_received)
        );
        let _ = writeln!(out, "# TYPE switchyard_rtp_bytes_received_total counter");
        let _ = writeln!(
            out,
            "switchyard_rtp_bytes_received_total {}",
            load(&self.rtp_bytes_received)
        );
        let _ = writeln!(out, "# TYPE switchyard_store_errors_total counter");
        let _ = writeln!(
            out,
            "switchyard_store_errors_total {}",
            load(&self.store_errors)
        );
        let _ = writeln!(out, "# TYPE switchyard_inbound_invites_total counter");
        for (i, o) in InboundOutcome::ALL.iter().enumerate() {
            let _ = writeln!(
                out,
                "switchyard_inbound_invites_total{{outcome=\"{}\"}} {}",
                o.as_str(),
                load(&self.inbound[i])
            );
        }
        let _ = writeln!(out, "# TYPE switchyard_trunk_skipped_total counter");
        let _ = writeln!(
            out,
            "switchyard_trunk_skipped_total {}",
            load(&self.trunk_skipped)
        );
        let _ = writeln!(out, "# TYPE switchyard_media_refused_total counter");
        let _ = writeln!(
            out,
            "switchyard_media_refused_total {}",
            load(&self.media_refused)
        );
        if let Some(k) = kernel {
            let _ = writeln!(out, "# TYPE switchyard_rtp_kernel_calls gauge");
            let _ = writeln!(
                out,
                "switchyard_rtp_kernel_calls {}",
                k.installed.saturating_sub(k.removed)
            );
            let _ = writeln!(out, "# TYPE switchyard_rtp_kernel_handovers_total counter");
            let _ = writeln!(
                out,
                "switchyard_rtp_kernel_handovers_total{{outcome=\"forwarded\"}} {}",
                k.installed
            );
            let _ = writeln!(
                out,
                "switchyard_rtp_kernel_handovers_total{{outcome=\"refused\"}} {}",
                k.refused
            );
        }
        let _ = writeln!(out, "# TYPE switchyard_trunk_up gauge");
        for t in trunks {
            let _ = writeln!(
                out,
                "switchyard_trunk_up{{trunk=\"{}\"}} {}",
                t.config.name,
                u8::from(t.is_up())
            );
        }
        let _ = writeln!(out, "# TYPE switchyard_trunk_active_calls gauge");
        for t in trunks {
            let _ = writeln!(
                out,
                "switchyard_trunk_active_calls{{trunk=\"{}\"}} {}",
                t.config.name,
                t.active_calls()
            );
        }
        let _ = writeln!(out, "# TYPE switchyard_trunk_registered gauge");
        for t in trunks.iter().filter(|t| t.config.register) {
            let _ = writeln!(
                out,
                "switchyard_trunk_registered{{trunk=\"{}\"}} {}",
                t.config.name,
                u8::from(t.registration().state == "registered")
            );
        }
        if let Some(s) = sip {
            let rows = [
                ("sip_messages_in_total", s.messages_in),
                ("sip_messages_out_total", s.messages_out),
                ("sip_parse_errors_total", s.parse_errors),
                ("sip_retransmissions_total", s.retransmissions),
                ("sip_strays_dropped_total", s.strays_dropped),
                ("sip_requests_rejected_total", s.rejected),
                ("sip_rate_limited_total", s.rate_limited),
                ("sip_tcp_refused_total", s.tcp_refused),
                ("sip_tcp_timed_out_total", s.tcp_timed_out),
                ("sip_tcp_accept_errors_total", s.tcp_accept_errors),
            ];
            for (name, v) in rows {
                let _ = writeln!(out, "# TYPE switchyard_{name} counter");
                let _ = writeln!(out, "switchyard_{name} {v}");
            }
            let _ = writeln!(out, "# TYPE switchyard_sip_transactions gauge");
            let _ = writeln!(out, "switchyard_sip_transactions {}", s.transactions);
            let _ = writeln!(out, "# TYPE switchyard_sip_tcp_connections gauge");
            let _ = writeln!(out, "switchyard_sip_tcp_connections {}", s.tcp_connections);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn once_per_second_lets_one_through_then_holds() {
        let last = AtomicU64::new(0);
        assert!(once_per_second(&last));
        // Same second (a clock tick between the two calls is the only way this can flake,
        // and then the first assertion of a retry holds).
        let second = once_per_second(&last);
        let third = once_per_second(&last);
        assert!(!(second && third), "at most one more within a second");
    }
}
