//! Tokens for browser realtime sessions: `POST /api/v1/agents/{id}/realtime-sessions`
//! issues one; the WebSocket endpoint redeems it with [`redeem_realtime_token`].
//!
//! A token is `base64url(payload) "." base64url(HMAC-SHA256(key, payload))`, the payload a
//! compact JSON object: agent id, tenant, a random id (`jti`) and the expiry in epoch
//! milliseconds. It is good for [`TOKEN_TTL_SECONDS`] and once: redeeming records the jti
//! in the store (a primary key, so a second redeem fails on every node and after a
//! restart); expired records are deleted as new ones are written.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use rand::RngCore as _;
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use crate::config::Config;
use crate::store::{Store, StoreError};

/// How long a token can be redeemed after it was issued.
pub const TOKEN_TTL_SECONDS: i64 = 60;

type HmacSha256 = Hmac<Sha256>;

#[derive(Debug, Serialize, Deserialize)]
struct Payload {
    /// Agent id.
    a: String,
    /// Tenant.
    t: String,
    /// Token id (single use).
    j: String,
    /// Expiry, epoch milliseconds.
    e: i64,
}

/// What a valid token grants: a session with `agent_id` of `tenant`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RedeemedToken {
    pub agent_id: String,
    pub tenant: String,
    pub jti: String,
    pub expires_at: DateTime<Utc>,
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TokenError {
    #[error("realtime sessions are not configured (no [agents] realtime_signing_key)")]
    NotConfigured,
    #[error("not a realtime session token")]
    Malformed,
    #[error("the token's signature does not verify")]
    BadSignature,
    #[error("the token has expired")]
    Expired,
    #[error("the token is for another agent")]
    WrongAgent,
    #[error("the token has been used already")]
    Reused,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The signing key: `[agents] realtime_signing_key` (or `SWITCHYARD_REALTIME_SIGNING_KEY`,
/// folded into the config when it is loaded).
pub fn signing_key(config: &Config) -> Option<&[u8]> {
    config
        .agents
        .realtime_signing_key
        .as_deref()
        .filter(|k| !k.is_empty())
        .map(str::as_bytes)
}

fn mac(key: &[u8]) -> HmacSha256 {
    // HMAC takes a key of any length; the error exists for fixed-size MACs only.
    match HmacSha256::new_from_slice(key) {
        Ok(m) => m,
        Err(_) => unreachable!("HMAC accepts keys of any length"),
    }
}

/// A new token for `agent_id` of `tenant`, valid until the returned instant.
pub fn issue(
    key: &[u8],
    agent_id: &str,
    tenant: &str,
    now: DateTime<Utc>,
) -> (String, DateTime<Utc>) {
    let mut jti = [0u8; 16];
    rand::rng().fill_bytes(&mut jti);
    let expires = now + chrono::Duration::seconds(TOKEN_TTL_SECONDS);
    let expires = DateTime::from_timestamp_millis(expires.timestamp_millis()).unwrap_or(expires);
    let payload = Payload {
        a: agent_id.to_owned(),
        t: tenant.to_owned(),
        j: URL_SAFE_NO_PAD.encode(jti),
        e: expires.timestamp_millis(),
    };
    let body = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&payload).unwrap_or_default());
    let mut m = mac(key);
    m.update(body.as_bytes());
    let sig = URL_SAFE_NO_PAD.encode(m.finalize().into_bytes());
    (format!("{body}.{sig}"), expires)
}

/// Checks a token without using it up: signature (constant-time), expiry at `now`, agent.
pub fn verify(
    key: &[u8],
    agent_id: &str,
    token: &str,
    now: DateTime<Utc>,
) -> Result<RedeemedToken, TokenError> {
    let (body, sig) = token.split_once('.').ok_or(TokenError::Malformed)?;
    let sig = URL_SAFE_NO_PAD
        .decode(sig)
        .map_err(|_| TokenError::Malformed)?;
    let mut m = mac(key);
    m.update(body.as_bytes());
    m.verify_slice(&sig).map_err(|_| TokenError::BadSignature)?;
    let raw = URL_SAFE_NO_PAD
        .decode(body)
        .map_err(|_| TokenError::Malformed)?;
    let payload: Payload = serde_json::from_slice(&raw).map_err(|_| TokenError::Malformed)?;
    let expires_at = DateTime::from_timestamp_millis(payload.e).ok_or(TokenError::Malformed)?;
    if expires_at <= now {
        return Err(TokenError::Expired);
    }
    if payload.a != agent_id {
        return Err(TokenError::WrongAgent);
    }
    Ok(RedeemedToken {
        agent_id: payload.a,
        tenant: payload.t,
        jti: payload.j,
        expires_at,
    })
}

/// [`redeem_realtime_token`] at a given instant (tests pass their own clock).
pub async fn redeem_at(
    store: &dyn Store,
    key: &[u8],
    agent_id: &str,
    token: &str,
    now: DateTime<Utc>,
) -> Result<RedeemedToken, TokenError> {
    let redeemed = verify(key, agent_id, token, now)?;
    if store
        .consume_realtime_token(&redeemed.jti, agent_id, redeemed.expires_at, now)
        .await?
    {
        Ok(redeemed)
    } else {
        Err(TokenError::Reused)
    }
}

/// Verifies a token for a session with `agent_id` (signature, expiry, agent) and uses it
/// up, so it opens one session only, across nodes and restarts. The caller still checks
/// that the agent exists and is active.
pub async fn redeem_realtime_token(
    store: &dyn Store,
    config: &Config,
    agent_id: &str,
    token: &str,
) -> Result<RedeemedToken, TokenError> {
    let key = signing_key(config).ok_or(TokenError::NotConfigured)?;
    redeem_at(store, key, agent_id, token, Utc::now()).await
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &[u8] = b"0123456789abcdef0123456789abcdef";

    fn at(ms: i64) -> DateTime<Utc> {
        DateTime::from_timestamp_millis(ms).unwrap_or_default()
    }

    #[test]
    fn verify_checks_signature_expiry_and_agent() {
        let now = at(1_800_000_000_000);
        let (token, expires) = issue(KEY, "agt_1", "acme", now);
        assert_eq!(expires, now + chrono::Duration::seconds(60));
        let ok = verify(KEY, "agt_1", &token, now);
        assert!(
            matches!(&ok, Ok(r) if r.tenant == "acme" && r.agent_id == "agt_1"),
            "{ok:?}"
        );
        assert!(matches!(
            verify(KEY, "agt_1", &token, expires),
            Err(TokenError::Expired)
        ));
        assert!(matches!(
            verify(KEY, "agt_2", &token, now),
            Err(TokenError::WrongAgent)
        ));
        assert!(matches!(
            verify(b"another key", "agt_1", &token, now),
            Err(TokenError::BadSignature)
        ));
        // The payload changed (another agent), the signature kept: refused.
        let (body, sig) = token.split_once('.').unwrap_or_default();
        let raw = URL_SAFE_NO_PAD.decode(body).unwrap_or_default();
        let forged = String::from_utf8_lossy(&raw).replace("agt_1", "agt_2");
        let forged = format!("{}.{sig}", URL_SAFE_NO_PAD.encode(forged));
        assert!(matches!(
            verify(KEY, "agt_2", &forged, now),
            Err(TokenError::BadSignature)
        ));
        for garbage in ["", "abc", "a.b.c", "..", "eyJ.!!!"] {
            assert!(verify(KEY, "agt_1", garbage, now).is_err(), "{garbage:?}");
        }
    }
}
