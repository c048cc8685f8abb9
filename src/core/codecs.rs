//! Per-trunk codec preference (`codecs = ["PCMU", "PCMA", "G722", "opus"]` on
//! `[[trunks]]`): names from the configuration to SDP codecs, and the offers and answers
//! built from a trunk's list.
//!
//! The list orders our offers (an outbound API call, leg B of a transit call) and picks
//! the codec of our answer to an inbound caller (the caller's source trunk's list: the
//! first codec of it that the offer lists, see [`media::sdp::answer_offer`]).

use media::sdp::{Codec, OfferParams};

/// What a trunk without `codecs` allows: G.711 first (every carrier has it, and a
/// G.711 call passes through unchanged), then G.722 and Opus for callers that have
/// nothing else.
pub const DEFAULT_CODECS: [&str; 4] = ["PCMU", "PCMA", "G722", "opus"];

impl super::trunk::Trunk {
    /// This trunk's codecs in order of preference.
    pub fn codecs(&self) -> Vec<Codec> {
        from_names(&self.config.codecs)
    }
}

/// The codec a configuration name stands for (the SDP encoding name, any case).
pub fn parse_name(name: &str) -> Option<Codec> {
    Codec::ALL
        .into_iter()
        .find(|c| c.name().eq_ignore_ascii_case(name.trim()))
}

/// The codecs of a validated list, in its order (unknown names and repeats, which
/// validation refuses, are skipped).
pub fn from_names(names: &[String]) -> Vec<Codec> {
    let mut out = Vec::with_capacity(names.len());
    for c in names.iter().filter_map(|n| parse_name(n)) {
        if !out.contains(&c) {
            out.push(c);
        }
    }
    out
}

/// Problems with a `codecs` list, as (index in the list or `None` for the list itself,
/// message).
pub fn problems(names: &[String]) -> Vec<(Option<usize>, String)> {
    let mut out = Vec::new();
    if names.is_empty() {
        out.push((None, "must list at least one codec".to_owned()));
    }
    let mut seen = Vec::new();
    for (i, n) in names.iter().enumerate() {
        match parse_name(n) {
            None => out.push((
                Some(i),
                format!(
                    "unknown codec {n:?} (known: {})",
                    Codec::ALL.map(Codec::name).join(", ")
                ),
            )),
            Some(c) if seen.contains(&c) => out.push((Some(i), format!("{n:?} listed twice"))),
            Some(c) => seen.push(c),
        }
    }
    out
}

/// `base` (address, port, DTMF, ptime) offering or answering with `codecs`.
pub fn with_codecs(base: OfferParams, codecs: &[Codec]) -> OfferParams {
    OfferParams {
        codecs: codecs.to_vec(),
        ..base
    }
}

/// `list` with `codec` moved first when the list has it, else `list` as it is. For leg B
/// of a transit call: B's trunk's list with the caller's codec first (the same codec on
/// both legs is relayed without transcoding; a trunk without it gets its own list and
/// the bridge transcodes). For a session's later answers: its current codec first, so a
/// re-offer listing it again does not change codec.
pub fn preferring(list: &[Codec], codec: Codec) -> Vec<Codec> {
    let mut out = list.to_vec();
    if out.contains(&codec) {
        out.retain(|c| *c != codec);
        out.insert(0, codec);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: &[&str]) -> Vec<String> {
        n.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn names_parse_in_any_case_and_keep_their_order() {
        assert_eq!(
            from_names(&names(&["opus", "g722", "pcma", "PCMU"])),
            [Codec::Opus, Codec::G722, Codec::Pcma, Codec::Pcmu]
        );
        assert_eq!(from_names(&names(&DEFAULT_CODECS)), Codec::ALL);
        assert!(problems(&names(&DEFAULT_CODECS)).is_empty());
    }

    #[test]
    fn bad_lists_are_explained() {
        let p = problems(&names(&["PCMU", "G729", "pcmu"]));
        assert_eq!(p.len(), 2, "{p:?}");
        assert_eq!(p[0].0, Some(1));
        assert!(p[0].1.contains("unknown codec \"G729\""), "{p:?}");
        assert!(p[0].1.contains("PCMU, PCMA, G722, opus"), "{p:?}");
        assert_eq!(p[1], (Some(2), "\"pcmu\" listed twice".to_owned()));
        assert_eq!(
            problems(&[]),
            [(None, "must list at least one codec".to_owned())]
        );
    }

    #[test]
    fn leg_b_gets_the_callers_codec_first_if_its_trunk_allows_it() {
        let all = Codec::ALL;
        assert_eq!(
            preferring(&all, Codec::Opus),
            [Codec::Opus, Codec::Pcmu, Codec::Pcma, Codec::G722]
        );
        let g711 = [Codec::Pcma, Codec::Pcmu];
        assert_eq!(preferring(&g711, Codec::G722), g711);
        assert_eq!(preferring(&g711, Codec::Pcmu), [Codec::Pcmu, Codec::Pcma]);
    }
}
