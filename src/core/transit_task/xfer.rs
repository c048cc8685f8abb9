//! Blind transfer of a transit call asked for by API (`POST …/transfer`, optional `leg`).
//!
//! The transferred party (`leg`: the caller by default) stays connected and ends up
//! talking to the target; the other party is released. Where that party's leg takes a
//! REFER (its Allow lists REFER, or it sent no Allow) it gets one, with an E.164 target as
//! a SIP URI on its trunk; on a 202 and a final NOTIFY 200 its carrier has taken the call
//! over and both legs are hung up (`transferred`). A refused REFER (or an Allow without
//! REFER) makes the switch dial the target itself through the dialplan's trunk and put it
//! on the bridge in the other party's place, as for a REFER from a far end
//! ([`TransitTask::transfer_to`]). Progress goes out as `call.transfer` events.

use media::relay::Side;

use super::TransitTask;
use crate::core::task::record_event;
use crate::core::transfer::{TransferLeg, allows_refer, e164_of, refer_uri};
use crate::core::transit::TransitInput;
use crate::core::trunk::Trunk;

/// A REFER of ours in progress on the transferred party's leg.
#[derive(Debug)]
struct ApiRefer {
    /// The transferred party.
    side: Side,
    leg: sip::ua::LegRef,
    /// As the API gave it (dialled ourselves if the REFER is refused).
    target: String,
}

#[derive(Debug)]
pub(super) struct XferState {
    /// Whether the caller's leg takes a REFER, from its INVITE's Allow (`None`: unknown).
    a_allows_refer: Option<bool>,
    refer: Option<ApiRefer>,
}

impl XferState {
    pub(super) fn new(a_allow: Option<String>) -> Self {
        XferState {
            a_allows_refer: allows_refer(a_allow.as_deref()),
            refer: None,
        }
    }
}

fn leg_name(side: Side) -> &'static str {
    match side {
        Side::A => TransferLeg::Caller.as_str(),
        Side::B => TransferLeg::Callee.as_str(),
    }
}

impl TransitTask {
    /// Whether a REFER of ours is still in progress (a far end's REFER must wait).
    pub(super) fn xfer_pending(&self) -> bool {
        self.xfer.refer.is_some()
    }

    /// `TaskInput::Transfer` on a transit call.
    pub(super) async fn api_transfer(
        &mut self,
        target: String,
        leg: Option<TransferLeg>,
    ) -> Result<(), &'static str> {
        if self.record.status != crate::model::CallStatus::InProgress {
            return Err("the call is not answered");
        }
        if self.transfer.is_some() || self.xfer.refer.is_some() {
            return Err("a transfer of this call is already in progress");
        }
        let side = match leg.unwrap_or_default() {
            TransferLeg::Caller => Side::A,
            TransferLeg::Callee => Side::B,
        };
        let Some(leg) = (match side {
            Side::A => Some(self.a_leg),
            Side::B => self.b_leg,
        }) else {
            return Err("the call is not answered");
        };
        // The callee's Allow is not kept: a REFER is worth a try, and a refusal falls back.
        let allows = match side {
            Side::A => self.xfer.a_allows_refer,
            Side::B => None,
        };
        if allows == Some(false) {
            tracing::info!(
                leg = leg_name(side),
                "transfer: the leg takes no REFER; dialling the target"
            );
            return self.dial_for(side, &target).await;
        }
        let uri = match self.leg_trunk(side) {
            Some(trunk) => refer_uri(&target, &trunk),
            None => target.clone(),
        };
        tracing::info!(leg = leg_name(side), refer_to = %uri, "transfer: REFER sent");
        self.send(sip::ua::UaCommand::Refer {
            leg,
            refer_to: format!("<{uri}>"),
        });
        self.xfer.refer = Some(ApiRefer { side, leg, target });
        Ok(())
    }

    /// The final response to our REFER: 2xx waits for the NOTIFYs; anything else (405,
    /// 501, 603, a timeout) falls back to dialling the target ourselves.
    pub(super) async fn on_refer_result(&mut self, leg: sip::ua::LegRef, code: u16) {
        let Some(r) = self.xfer.refer.as_ref().filter(|r| r.leg == leg) else {
            return;
        };
        let side = r.side;
        if (200..300).contains(&code) {
            self.transfer_event("accepted", code, side, "refer").await;
            return;
        }
        let Some(r) = self.xfer.refer.take() else {
            return;
        };
        tracing::info!(
            code,
            leg = leg_name(side),
            "transfer: REFER refused; dialling the target"
        );
        self.transfer_event("refer_refused", code, side, "refer")
            .await;
        if let Err(code) = self.dial_target(side, &r.target).await {
            self.transfer_event("failed", code, side, "dial").await;
        }
    }

    /// Progress of our REFER from the transferred party's side (RFC 3515 NOTIFY sipfrag).
    pub(super) async fn on_refer_notify(
        &mut self,
        leg: sip::ua::LegRef,
        status_code: u16,
        terminated: bool,
    ) {
        let Some(side) = self
            .xfer
            .refer
            .as_ref()
            .filter(|r| r.leg == leg)
            .map(|r| r.side)
        else {
            return;
        };
        match status_code {
            100..=199 => {
                self.transfer_event("trying", status_code, side, "refer")
                    .await
            }
            200..=299 if terminated => {
                self.xfer.refer = None;
                self.transfer_event("succeeded", status_code, side, "refer")
                    .await;
                std::sync::Arc::make_mut(&mut self.record).metadata["transferred"] =
                    serde_json::json!(true);
                // The party's carrier carries it on: both our legs end.
                self.machine
                    .handle(std::time::Instant::now(), TransitInput::Transferred);
            }
            200..=299 => {}
            _ => {
                if terminated {
                    self.xfer.refer = None;
                }
                tracing::warn!(status_code, "transfer by REFER failed; the call goes on");
                self.transfer_event("failed", status_code, side, "refer")
                    .await;
            }
        }
    }

    /// As [`dial_target`](Self::dial_target), for the API's answer.
    async fn dial_for(&mut self, side: Side, target: &str) -> Result<(), &'static str> {
        self.dial_target(side, target)
            .await
            .map_err(|_| "the transfer target cannot be reached from this call")
    }

    /// The switch calls `target` itself, to replace the party opposite `side` (the one
    /// transferred). Errs with a SIP code when the target cannot be routed (603) or its
    /// trunk is unavailable (503).
    async fn dial_target(&mut self, side: Side, target: &str) -> Result<(), u16> {
        // The REFER path's routing reads a URI.
        let uri = match e164_of(target) {
            Some(number) => format!("tel:{number}"),
            None => target.to_owned(),
        };
        self.transfer_to(side.other(), None, &uri).await
    }

    /// The trunk `side`'s far end is on: the source trunk for the caller, the trunk the
    /// call went out on for the callee.
    fn leg_trunk(&self, side: Side) -> Option<Trunk> {
        let name = match side {
            Side::A => self.record.metadata["source_trunk"].as_str(),
            Side::B => self.record.trunk.as_deref(),
        }?;
        self.shared
            .inbound
            .trunks()
            .iter()
            .find(|t| t.config.name == name)
            .cloned()
    }

    /// A `call.transfer` event: `state`, the SIP code behind it, the party transferred
    /// and how (`refer` to its far end, or `dial`ed by the switch).
    pub(super) async fn transfer_event(
        &self,
        state: &str,
        sip_code: u16,
        side: Side,
        method: &str,
    ) {
        let data = serde_json::json!({
            "transfer_state": state,
            "sip_code": sip_code,
            "leg": leg_name(side),
            "method": method,
        });
        record_event(&self.shared, &self.record, "call.transfer", data).await;
    }
}
