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
}

impl Metrics {
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

    pub fn store_error(&self) {
        self.store_errors.fetch_add(1, Ordering::Relaxed);
    }

    /// Render with the live-call gauge and the SIP stack's counters.
    pub fn render(&self, live_calls: usize, sip: Option<&sip::ua::UaStats>) -> String {
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
        if let Some(s) = sip {
            let rows = [
                ("sip_messages_in_total", s.messages_in),
                ("sip_messages_out_total", s.messages_out),
                ("sip_parse_errors_total", s.parse_errors),
                ("sip_retransmissions_total", s.retransmissions),
                ("sip_strays_dropped_total", s.strays_dropped),
                ("sip_requests_rejected_total", s.rejected),
            ];
            for (name, v) in rows {
                let _ = writeln!(out, "# TYPE switchyard_{name} counter");
                let _ = writeln!(out, "switchyard_{name} {v}");
            }
            let _ = writeln!(out, "# TYPE switchyard_sip_transactions gauge");
            let _ = writeln!(out, "switchyard_sip_transactions {}", s.transactions);
        }
        out
    }
}
