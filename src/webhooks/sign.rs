//! Standard Webhooks signatures (https://www.standardwebhooks.com, "Signature scheme"):
//! `v1,` + base64(HMAC-SHA256(key = base64-decoded secret after "whsec_", "{id}.{timestamp}.{body}")).

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac as _};
use rand::RngCore;
use sha2::Sha256;

const PREFIX: &str = "whsec_";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SignError {
    #[error("webhook secret is not \"whsec_\" followed by base64")]
    BadSecret,
}

/// The `webhook-signature` header value for one message.
pub fn sign(secret: &str, msg_id: &str, timestamp: i64, body: &[u8]) -> Result<String, SignError> {
    let encoded = secret.strip_prefix(PREFIX).unwrap_or(secret);
    let key = STANDARD.decode(encoded).map_err(|_| SignError::BadSecret)?;
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).map_err(|_| SignError::BadSecret)?;
    mac.update(msg_id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    Ok(format!(
        "v1,{}",
        STANDARD.encode(mac.finalize().into_bytes())
    ))
}

/// A fresh secret: "whsec_" + base64 of 32 random bytes (use a CSPRNG outside tests).
pub fn generate_secret(rng: &mut impl RngCore) -> String {
    let mut key = [0u8; 32];
    rng.fill_bytes(&mut key);
    format!("{PREFIX}{}", STANDARD.encode(key))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng as _;

    // The example from the Standard Webhooks reference libraries' test suites.
    #[test]
    fn matches_the_reference_vector() {
        let sig = sign(
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1_614_265_330,
            br#"{"test": 2432232314}"#,
        )
        .unwrap();
        assert_eq!(sig, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }

    #[test]
    fn body_timestamp_and_id_all_change_the_signature() {
        let secret = generate_secret(&mut rand::rngs::StdRng::seed_from_u64(7));
        let base = sign(&secret, "evt_1", 10, b"{}").unwrap();
        assert_ne!(base, sign(&secret, "evt_2", 10, b"{}").unwrap());
        assert_ne!(base, sign(&secret, "evt_1", 11, b"{}").unwrap());
        assert_ne!(base, sign(&secret, "evt_1", 10, b"{ }").unwrap());
    }

    #[test]
    fn generated_secrets_are_prefixed_32_byte_keys_and_differ() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let a = generate_secret(&mut rng);
        let b = generate_secret(&mut rng);
        assert_ne!(a, b);
        let key = STANDARD.decode(a.strip_prefix(PREFIX).unwrap()).unwrap();
        assert_eq!(key.len(), 32);
    }

    #[test]
    fn rejects_non_base64_secret() {
        assert_eq!(sign("whsec_!!!", "m", 1, b""), Err(SignError::BadSecret));
    }
}
