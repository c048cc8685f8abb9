//! Property tests for the message layer: no input makes `parse`, `error_response` or
//! the stream framer panic, and well-formed messages survive a serialise → parse
//! round trip unchanged.

// Helpers outside #[test] fns unwrap too: a panic there is a test failure.
#![allow(clippy::unwrap_used)]

use bytes::Bytes;
use proptest::prelude::*;
use sip::framing::StreamFramer;
use sip::msg::{Method, NameAddr, Request, SipMessage, error_response, parse};

const TOKEN: &str = "[A-Za-z0-9.!%*_+`'~-]{1,12}";
const HOST: &str = "[a-z][a-z0-9-]{0,8}(\\.[a-z][a-z0-9-]{0,8}){0,2}";

/// Every message of the RFC 4475 corpus, as seeds for mutation.
fn corpus() -> Vec<Vec<u8>> {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../pcap-fixtures/sip/rfc4475");
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "dat"))
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|p| std::fs::read(p).unwrap())
        .collect()
}

fn method() -> impl Strategy<Value = Method> {
    prop_oneof![
        Just(Method::Invite),
        Just(Method::Ack),
        Just(Method::Bye),
        Just(Method::Cancel),
        Just(Method::Options),
        Just(Method::Register),
        Just(Method::Update),
        "[A-Z]{3,10}".prop_map(|s| Method::from_token(&s)),
    ]
}

fn name_addr() -> impl Strategy<Value = String> {
    (
        proptest::option::of("[A-Za-z0-9 ,\"\\\\]{0,12}"),
        TOKEN,
        HOST,
        proptest::option::of(TOKEN),
    )
        .prop_map(|(display, user, host, tag)| {
            let mut n = NameAddr::new(format!("sip:{user}@{host}"));
            n.display = display;
            if let Some(t) = tag {
                n.params.push(("tag".into(), Some(t)));
            }
            n.to_string()
        })
}

prop_compose! {
    fn request()(
        method in method(),
        user in TOKEN,
        host in HOST,
        port in proptest::option::of(1u16..),
        branch in "[A-Za-z0-9]{1,16}",
        vias in 1usize..4,
        from in name_addr(),
        to in name_addr(),
        call_id in "[A-Za-z0-9.@-]{1,24}",
        seq in any::<u32>(),
        max_forwards in proptest::option::of(0u32..256),
        extra in proptest::collection::vec((TOKEN, "[ -~]{0,20}"), 0..4),
        body in proptest::collection::vec(any::<u8>(), 0..64),
    ) -> Request {
        let uri = match port {
            Some(p) => format!("sip:{user}@{host}:{p}"),
            None => format!("sip:{user}@{host}"),
        };
        let mut r = Request::new(method.clone(), uri);
        for i in 0..vias {
            r.headers.push("Via", format!("SIP/2.0/UDP {host}:5060;branch=z9hG4bK{branch}{i}"));
        }
        r.headers.push("From", from);
        r.headers.push("To", to);
        r.headers.push("Call-ID", call_id);
        r.headers.push("CSeq", format!("{seq} {method}"));
        if let Some(mf) = max_forwards {
            r.headers.push("Max-Forwards", mf.to_string());
        }
        for (name, value) in extra {
            // X- keeps generated names clear of the headers the parser checks.
            r.headers.push(format!("X-{name}"), value.trim().to_owned());
        }
        if !body.is_empty() {
            r.headers.push("Content-Type", "application/sdp");
        }
        r.body = Bytes::from(body);
        r
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        if let Err(e) = parse(&bytes) {
            let _ = error_response(&bytes, &e);
        }
        let mut framer = StreamFramer::new(1024);
        for chunk in bytes.chunks(7) {
            framer.push(chunk);
            while let Some(Ok(_)) = framer.next_message() {}
        }
    }

    #[test]
    fn mutated_corpus_never_panics_and_reserialises(
        seed in any::<prop::sample::Index>(),
        cut in any::<prop::sample::Index>(),
        edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..8),
    ) {
        let corpus = corpus();
        let mut bytes = seed.get(&corpus).clone();
        for (at, b) in edits {
            let i = at.index(bytes.len());
            bytes[i] = b;
        }
        bytes.truncate(cut.index(bytes.len() + 1));
        match parse(&bytes) {
            Err(e) => {
                if let Some(resp) = error_response(&bytes, &e) {
                    prop_assert_eq!(resp.code, e.status());
                }
            }
            Ok(msg) => {
                // Whatever parses, serialises to something that parses back the same.
                let wire = msg.to_bytes();
                let again = parse(&wire).unwrap();
                prop_assert_eq!(again.to_bytes(), wire);
            }
        }
    }

    #[test]
    fn generated_requests_round_trip(req in request()) {
        let wire = req.to_bytes();
        let parsed = parse(&wire).unwrap();
        let mut expected = req.clone();
        expected.headers.push("Content-Length", req.body.len().to_string());
        prop_assert_eq!(parsed, SipMessage::Request(expected));
    }

    #[test]
    fn cr_and_lf_in_a_value_cannot_start_a_header(
        req in request(),
        before in "[ -~]{0,20}",
        after in "[A-Za-z-]{1,10}: [ -~]{0,20}",
        breaks in "[\r\n]{1,3}",
    ) {
        // A value from an API caller that tries to smuggle in a header of its own.
        let mut req = req;
        let value = format!("{before}{breaks}{after}");
        req.headers.push("X-Caller", value.clone());
        let parsed = parse(&req.to_bytes()).unwrap();
        let flat = value.replace(['\r', '\n'], " ");
        let got = parsed.headers().get("X-Caller").unwrap();
        prop_assert_eq!(got, flat.trim_matches([' ', '\t']));
        prop_assert_eq!(parsed.headers().0.len(), req.headers.0.len() + 1);
    }

    #[test]
    fn framer_reassembles_any_split(req in request(), split in proptest::collection::vec(1usize..40, 1..20)) {
        let wire = req.to_bytes();
        let mut stream = wire.clone();
        stream.extend_from_slice(b"\r\n\r\n");
        stream.extend_from_slice(&wire);
        let mut framer = StreamFramer::new(64 * 1024);
        let mut out = Vec::new();
        let mut rest = &stream[..];
        for n in split.iter().cycle() {
            if rest.is_empty() {
                break;
            }
            let (chunk, tail) = rest.split_at((*n).min(rest.len()));
            framer.push(chunk);
            rest = tail;
            while let Some(m) = framer.next_message() {
                out.push(m.unwrap());
            }
        }
        prop_assert_eq!(out, vec![wire.clone(), wire]);
    }
}

/// Via-, name-addr- and URI-like strings: pieces that are well-formed, nearly so, or
/// plainly broken, so both verdicts come up often.
fn addr_like() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        Just("SIP/2.0/UDP ".to_owned()),
        Just("SIP / 2.0 / tcp ".to_owned()),
        Just("sip:".to_owned()),
        Just("tel:+1555".to_owned()),
        Just("sips:u:pw@".to_owned()),
        Just("<".to_owned()),
        Just(">".to_owned()),
        Just("\"Bob \\\"B\\\"\" ".to_owned()),
        Just(";branch=z9hG4bK1".to_owned()),
        Just(";rport".to_owned()),
        Just(";received=10.0.0.1".to_owned()),
        Just(";x=\"a;b\"".to_owned()),
        Just(";tag=".to_owned()),
        Just("[2001:db8::1]".to_owned()),
        Just(":5060".to_owned()),
        Just("?h=v".to_owned()),
        Just(";;".to_owned()),
        Just(" ".to_owned()),
        Just("@".to_owned()),
        HOST.prop_map(|h| h.to_owned()),
        TOKEN.prop_map(|t| t.to_owned()),
    ];
    proptest::collection::vec(piece, 1..8).prop_map(|v| v.concat())
}

proptest! {
    /// The in-place checks the parser and the UA use give the verdicts, and read the
    /// values, that the full parses give.
    #[test]
    fn in_place_checks_agree_with_parses(s in addr_like()) {
        use sip::msg::{SipUri, Via};
        let via = Via::parse(&s);
        prop_assert_eq!(Via::check(&s).is_ok(), via.is_ok());
        let peek = Via::peek(&s);
        prop_assert_eq!(peek.is_some(), via.is_ok());
        if let (Some(p), Ok(v)) = (peek, &via) {
            prop_assert_eq!(p.host, v.host.as_str());
            prop_assert_eq!(p.port, v.port);
            prop_assert_eq!(p.branch, v.branch());
            prop_assert_eq!(p.rport, v.param("rport").is_some());
        }
        prop_assert_eq!(NameAddr::check(&s).is_ok(), NameAddr::parse(&s).is_ok());
        let uri = SipUri::parse(&s);
        prop_assert_eq!(SipUri::check(&s).is_ok(), uri.is_ok());
        if let (Ok(has_headers), Ok(u)) = (SipUri::check(&s), &uri) {
            prop_assert_eq!(has_headers, !u.headers.is_empty());
        }
    }
}
