//! The server side of digest auth (`sip::digest_server`) answered by our own client
//! side (`sip::auth::authorization`).

#![allow(clippy::unwrap_used)] // tests may unwrap (helpers included)

use std::time::Duration;

use proptest::prelude::*;
use rand::SeedableRng;
use rand::rngs::StdRng;
use sip::auth::{Credentials, DigestChallenge, authorization};
use sip::digest_server::{AuthOutcome, Challenger, MAX_TRACKED_NONCES};
use sip::msg::Method;

const SECRET: [u8; 32] = [0x42; 32];
const REALM: &str = "trunk.example.com";
const URI: &str = "sip:+15551234567@switchyard.example.com";
const TTL: u64 = 300;
const T0: u64 = 1_700_000_000;

fn challenger() -> Challenger {
    Challenger::new(SECRET, REALM.into(), Duration::from_secs(TTL))
}

fn lookup(user: &str) -> Option<String> {
    (user == "alice").then(|| "s3cret".to_owned())
}

fn creds(password: &str) -> Credentials {
    Credentials {
        username: "alice".into(),
        password: password.into(),
    }
}

fn answer(challenge: &str, password: &str, uri: &str, nc: u32) -> String {
    let ch = DigestChallenge::parse(challenge).unwrap();
    authorization(&ch, &creds(password), &Method::Invite, uri, "c0ffee", nc)
}

fn check(c: &mut Challenger, now: u64, auth: &str) -> AuthOutcome {
    c.check(now, auth, &Method::Invite, URI, lookup)
}

fn ok() -> AuthOutcome {
    AuthOutcome::Ok {
        username: "alice".into(),
    }
}

#[test]
fn challenge_shape() {
    let mut c = challenger();
    let mut rng = StdRng::seed_from_u64(1);
    let h = c.challenge(T0, &mut rng, false);
    let ch = DigestChallenge::parse(&h).unwrap();
    assert_eq!(ch.realm, REALM);
    assert_eq!(ch.algorithm.as_deref(), Some("MD5"));
    assert_eq!(ch.qop, vec!["auth"]);
    assert!(!ch.stale && ch.opaque.is_none());
    assert_eq!(ch.nonce.len(), 43);
    assert!(
        h.starts_with("Digest realm=\"trunk.example.com\", nonce=\""),
        "{h}"
    );

    let h2 = c.challenge(T0, &mut rng, true);
    let ch2 = DigestChallenge::parse(&h2).unwrap();
    assert!(ch2.stale);
    assert_ne!(ch.nonce, ch2.nonce, "random part differs within one second");
}

#[test]
fn correct_answer_is_ok() {
    let mut c = challenger();
    let mut rng = StdRng::seed_from_u64(2);
    let h = c.challenge(T0, &mut rng, false);
    assert_eq!(check(&mut c, T0 + 1, &answer(&h, "s3cret", URI, 1)), ok());
    // Right at the end of the lifetime it is still fresh.
    let h = c.challenge(T0, &mut rng, false);
    assert_eq!(check(&mut c, T0 + TTL, &answer(&h, "s3cret", URI, 1)), ok());
}

#[test]
fn wrong_password_and_unknown_user() {
    let mut c = challenger();
    let mut rng = StdRng::seed_from_u64(3);
    let h = c.challenge(T0, &mut rng, false);
    assert_eq!(
        check(&mut c, T0, &answer(&h, "guess", URI, 1)),
        AuthOutcome::Invalid("wrong response")
    );
    let ch = DigestChallenge::parse(&h).unwrap();
    let bob = Credentials {
        username: "bob".into(),
        password: "s3cret".into(),
    };
    let a = authorization(&ch, &bob, &Method::Invite, URI, "c", 1);
    assert_eq!(check(&mut c, T0, &a), AuthOutcome::Invalid("unknown user"));
    // A failed attempt does not burn the nonce for the real user.
    assert_eq!(check(&mut c, T0, &answer(&h, "s3cret", URI, 1)), ok());
}

#[test]
fn method_is_covered_by_the_response() {
    let mut c = challenger();
    let mut rng = StdRng::seed_from_u64(4);
    let h = c.challenge(T0, &mut rng, false);
    let a = answer(&h, "s3cret", URI, 1);
    assert_eq!(
        c.check(T0, &a, &Method::Register, URI, lookup),
        AuthOutcome::Invalid("wrong response")
    );
}

#[test]
fn tampered_nonce_is_invalid() {
    let mut c = challenger();
    let mut rng = StdRng::seed_from_u64(5);
    let h = c.challenge(T0, &mut rng, false);
    let mut ch = DigestChallenge::parse(&h).unwrap();
    let good = ch.nonce.clone();
    // Flip each position in turn: timestamp, random part and MAC are all covered.
    for i in 0..good.len() {
        let mut bytes = good.clone().into_bytes();
        bytes[i] = if bytes[i] == b'A' { b'B' } else { b'A' };
        ch.nonce = String::from_utf8(bytes).unwrap();
        // The client answers the tampered nonce correctly: only the MAC can catch it.
        let a = authorization(&ch, &creds("s3cret"), &Method::Invite, URI, "c", 1);
        assert_eq!(
            check(&mut c, T0, &a),
            AuthOutcome::Invalid("bad nonce"),
            "{i}"
        );
    }
    for bad in ["", "short", "!!!!", &format!("{good}A")] {
        ch.nonce = bad.to_owned();
        let a = authorization(&ch, &creds("s3cret"), &Method::Invite, URI, "c", 1);
        assert_eq!(check(&mut c, T0, &a), AuthOutcome::Invalid("bad nonce"));
    }
}

#[test]
fn nonce_from_another_secret_is_invalid() {
    let mut other = Challenger::new([0x43; 32], REALM.into(), Duration::from_secs(TTL));
    let mut c = challenger();
    let mut rng = StdRng::seed_from_u64(6);
    let h = other.challenge(T0, &mut rng, false);
    assert_eq!(check(&mut other, T0, &answer(&h, "s3cret", URI, 1)), ok());
    assert_eq!(
        check(&mut c, T0, &answer(&h, "s3cret", URI, 1)),
        AuthOutcome::Invalid("bad nonce")
    );
}

#[test]
fn wrong_realm_is_invalid() {
    let mut c = challenger();
    let mut rng = StdRng::seed_from_u64(7);
    // Another realm with the same secret: the header's realm is wrong.
    let mut other = Challenger::new(SECRET, "other.example.com".into(), Duration::from_secs(60));
    let h = other.challenge(T0, &mut rng, false);
    assert_eq!(
        check(&mut c, T0, &answer(&h, "s3cret", URI, 1)),
        AuthOutcome::Invalid("wrong realm")
    );
    // Its nonce relabelled with our realm: the MAC covers the realm.
    let mut ch = DigestChallenge::parse(&h).unwrap();
    ch.realm = REALM.into();
    let a = authorization(&ch, &creds("s3cret"), &Method::Invite, URI, "c", 1);
    assert_eq!(check(&mut c, T0, &a), AuthOutcome::Invalid("bad nonce"));
}

#[test]
fn uri_mismatch_is_invalid() {
    let mut c = challenger();
    let mut rng = StdRng::seed_from_u64(8);
    let h = c.challenge(T0, &mut rng, false);
    let a = answer(&h, "s3cret", "sip:bob@elsewhere.example.net", 1);
    assert_eq!(check(&mut c, T0, &a), AuthOutcome::Invalid("uri mismatch"));
}

/// SIPp (and some carriers' UAs) digest the remote target `sip:host:port` rather than the
/// Request-URI: the same host:port without the user part is accepted.
#[test]
fn uri_with_the_same_host_but_no_user_is_accepted() {
    let mut c = challenger();
    let mut rng = StdRng::seed_from_u64(8);
    let h = c.challenge(T0, &mut rng, false);
    let host_only = format!("sip:{}", URI.rsplit_once('@').map_or(URI, |(_, h)| h));
    let a = answer(&h, "s3cret", &host_only, 1);
    assert_eq!(check(&mut c, T0, &a), ok());
}

#[test]
fn expired_nonce_is_stale_only_when_otherwise_correct() {
    let mut c = challenger();
    let mut rng = StdRng::seed_from_u64(9);
    let h = c.challenge(T0, &mut rng, false);
    let later = T0 + TTL + 1;
    assert_eq!(
        check(&mut c, later, &answer(&h, "s3cret", URI, 1)),
        AuthOutcome::Stale
    );
    // A wrong password on an expired nonce must not learn "stale".
    assert_eq!(
        check(&mut c, later, &answer(&h, "nope", URI, 1)),
        AuthOutcome::Invalid("wrong response")
    );
    // A nonce that was in use expires too.
    let h = c.challenge(T0, &mut rng, false);
    assert_eq!(check(&mut c, T0, &answer(&h, "s3cret", URI, 1)), ok());
    assert_eq!(
        check(&mut c, later, &answer(&h, "s3cret", URI, 2)),
        AuthOutcome::Stale
    );
    // The re-challenge the caller then sends works.
    let h = c.challenge(later, &mut rng, true);
    assert!(DigestChallenge::parse(&h).unwrap().stale);
    assert_eq!(check(&mut c, later, &answer(&h, "s3cret", URI, 1)), ok());
}

#[test]
fn replay_protection_with_qop() {
    let mut c = challenger();
    let mut rng = StdRng::seed_from_u64(10);
    let h = c.challenge(T0, &mut rng, false);
    let first = answer(&h, "s3cret", URI, 1);
    assert_eq!(check(&mut c, T0, &first), ok());
    assert_eq!(check(&mut c, T0, &first), AuthOutcome::Replay);
    assert_eq!(check(&mut c, T0, &answer(&h, "s3cret", URI, 2)), ok());
    assert_eq!(check(&mut c, T0, &answer(&h, "s3cret", URI, 5)), ok());
    // Lower than the highest seen, even if never used itself.
    assert_eq!(
        check(&mut c, T0, &answer(&h, "s3cret", URI, 3)),
        AuthOutcome::Replay
    );
    assert_eq!(check(&mut c, T0, &answer(&h, "s3cret", URI, 6)), ok());
    assert_eq!(c.tracked_nonces(), 1);
}

#[test]
fn without_qop_a_nonce_is_single_use() {
    let mut c = challenger();
    let mut rng = StdRng::seed_from_u64(11);
    let h = c.challenge(T0, &mut rng, false);
    let mut ch = DigestChallenge::parse(&h).unwrap();
    ch.qop.clear();
    let a = authorization(&ch, &creds("s3cret"), &Method::Invite, URI, "c", 1);
    assert!(!a.contains("qop"));
    assert_eq!(check(&mut c, T0, &a), ok());
    assert_eq!(check(&mut c, T0, &a), AuthOutcome::Replay);
    // Nor can the same nonce then be used with qop.
    assert_eq!(
        check(&mut c, T0, &answer(&h, "s3cret", URI, 1)),
        AuthOutcome::Replay
    );
}

#[test]
fn unsupported_algorithm_and_qop() {
    let mut c = challenger();
    let mut rng = StdRng::seed_from_u64(12);
    let h = c.challenge(T0, &mut rng, false);
    let mut ch = DigestChallenge::parse(&h).unwrap();
    ch.algorithm = Some("SHA-256".into());
    let a = authorization(&ch, &creds("s3cret"), &Method::Invite, URI, "c", 1);
    assert_eq!(
        check(&mut c, T0, &a),
        AuthOutcome::Invalid("unsupported algorithm")
    );
    let a = answer(&h, "s3cret", URI, 1).replace("qop=auth", "qop=auth-int");
    assert_eq!(
        check(&mut c, T0, &a),
        AuthOutcome::Invalid("unsupported qop")
    );
    let a = answer(&h, "s3cret", URI, 1).replace("nc=00000001", "nc=1");
    assert_eq!(
        check(&mut c, T0, &a),
        AuthOutcome::Invalid("bad or missing nc")
    );
    assert_eq!(
        check(&mut c, T0, "Basic YWxpY2U6czNjcmV0"),
        AuthOutcome::Invalid("malformed Authorization")
    );
    // None of these consumed the nonce.
    assert_eq!(check(&mut c, T0, &answer(&h, "s3cret", URI, 1)), ok());
}

#[test]
fn opaque_is_sent_and_required() {
    let mut c = challenger().with_opaque("trunk-7".into());
    let mut rng = StdRng::seed_from_u64(13);
    let h = c.challenge(T0, &mut rng, false);
    let mut ch = DigestChallenge::parse(&h).unwrap();
    assert_eq!(ch.opaque.as_deref(), Some("trunk-7"));
    ch.opaque = Some("trunk-8".into());
    let a = authorization(&ch, &creds("s3cret"), &Method::Invite, URI, "c", 1);
    assert_eq!(
        check(&mut c, T0, &a),
        AuthOutcome::Invalid("opaque mismatch")
    );
    assert_eq!(check(&mut c, T0, &answer(&h, "s3cret", URI, 1)), ok());
}

#[test]
fn flood_keeps_the_replay_map_bounded_without_reopening_replays() {
    let mut c = challenger();
    let mut rng = StdRng::seed_from_u64(14);
    let first = answer(&c.challenge(T0, &mut rng, false), "s3cret", URI, 1);
    assert_eq!(check(&mut c, T0, &first), ok());
    for i in 0..50_000u64 {
        // Time moves slowly, so nearly all nonces are still fresh when evicted.
        let now = T0 + i / 1_000;
        let h = c.challenge(now, &mut rng, false);
        assert_eq!(check(&mut c, now, &answer(&h, "s3cret", URI, 1)), ok());
        assert!(c.tracked_nonces() <= MAX_TRACKED_NONCES);
    }
    assert_eq!(c.tracked_nonces(), MAX_TRACKED_NONCES);
    let now = T0 + 49;
    // The first nonce is fresh but forgotten: it must not be accepted again.
    assert_eq!(check(&mut c, now, &first), AuthOutcome::Stale);
    // A brand-new nonce still works.
    let h = c.challenge(now + 1, &mut rng, false);
    assert_eq!(check(&mut c, now + 1, &answer(&h, "s3cret", URI, 1)), ok());
    // Once everything has expired, the next check drops it all.
    let much_later = now + TTL + 10;
    let h = c.challenge(much_later, &mut rng, false);
    assert_eq!(
        check(&mut c, much_later, &answer(&h, "s3cret", URI, 1)),
        ok()
    );
    assert_eq!(c.tracked_nonces(), 1);
}

proptest! {
    #[test]
    fn check_never_panics_on_arbitrary_headers(s in "\\PC{0,200}") {
        let mut c = challenger();
        let out = c.check(T0, &s, &Method::Invite, URI, lookup);
        prop_assert!(!matches!(out, AuthOutcome::Ok { .. }), "{:?}", out);
    }

    #[test]
    fn check_never_panics_on_digest_like_headers(
        params in proptest::collection::vec(
            ("(username|realm|nonce|uri|response|qop|nc|cnonce|algorithm|opaque)",
             "[ -~]{0,50}", any::<bool>()),
            0..12,
        ),
    ) {
        let mut header = String::from("Digest ");
        for (k, v, quoted) in &params {
            if *quoted {
                header.push_str(&format!("{k}=\"{v}\", "));
            } else {
                header.push_str(&format!("{k}={v}, "));
            }
        }
        let mut c = challenger();
        let out = c.check(T0, &header, &Method::Invite, URI, lookup);
        prop_assert!(!matches!(out, AuthOutcome::Ok { .. }), "{:?}", out);
    }
}
