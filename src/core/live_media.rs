//! A transit call's media counters on its record: per leg in `metadata.media` and summed
//! in the call's RTP fields, written while the call is live (on the media check tick, only
//! when a counter moved) and once more from the final counters when it ends.

use media::net::bridge::{Bridge, BridgeCounters, SideStats};
use media::relay::Side;

use super::task::set_media_stats;
use crate::model::CallRecord;

/// Puts both legs' counters on `r`; returns the packets and bytes received on both.
pub(crate) fn apply(
    r: &mut CallRecord,
    [a, b]: &[BridgeCounters; 2],
    [sa, sb]: &[SideStats; 2],
) -> (u64, u64) {
    let packets = a.received_packets + b.received_packets;
    let bytes = a.received_bytes + b.received_bytes;
    // Loss and jitter as the worse of the two legs: what a listener would suffer.
    set_media_stats(
        r,
        packets,
        bytes,
        sa.lost + sb.lost,
        sa.jitter_ms.max(sb.jitter_ms),
    );
    let leg = |c: &BridgeCounters, st: &SideStats, sent: u64| {
        serde_json::json!({
            "packets_received": c.received_packets,
            "packets_sent": sent,
            "kernel_forwarded": c.kernel_forwarded,
            "dropped": c.dropped_total(),
            "lost": st.lost,
            "jitter_ms": (st.jitter_ms * 100.0).round() / 100.0,
            "rtt_ms": st.rtt.map(|d| d.as_secs_f64() * 1000.0),
        })
    };
    r.metadata["media"] = serde_json::json!({
        "caller": leg(a, sa, b.sent_packets),
        "callee": leg(b, sb, a.sent_packets),
    });
    (packets, bytes)
}

/// The live counters of `bridge` onto `r` if they moved since `*published` (packets
/// received and sent on both legs, as last written); true when `r` changed and is worth
/// a write.
pub(crate) fn refresh(r: &mut CallRecord, bridge: &Bridge, published: &mut u64) -> bool {
    let counters = [bridge.counters(Side::A), bridge.counters(Side::B)];
    let moved: u64 = counters
        .iter()
        .map(|c| c.received_packets + c.sent_packets + c.kernel_forwarded)
        .sum();
    if moved == *published {
        return false;
    }
    *published = moved;
    apply(
        r,
        &counters,
        &[bridge.stats(Side::A), bridge.stats(Side::B)],
    );
    true
}

/// [`refresh`], and the call row written (no event) when it changed, so the API shows the
/// counters while the call is up. Only answered calls: before answer there is no media
/// worth a write.
pub(crate) async fn publish(
    shared: &super::Shared,
    record: &mut std::sync::Arc<CallRecord>,
    bridge: Option<&Bridge>,
    published: &mut u64,
) {
    let Some(bridge) = bridge else {
        return;
    };
    if record.status != crate::model::CallStatus::InProgress
        || !refresh(std::sync::Arc::make_mut(record), bridge, published)
    {
        return;
    }
    if let Err(e) = shared.store.update_call(record, None).await {
        shared.metrics.store_error();
        tracing::warn!(error = %e, "cannot write live media counters");
    }
}
