//! ITU-T G.711 µ-law and A-law companding, using the classic bit algorithm (the
//! Sun Microsystems reference `g711.c`, public domain).
//!
//! In: 16-bit linear PCM samples or 8-bit code words. Out: the other form. One code
//! word per sample, so buffers convert element for element with no allocation.
//!
//! Every call's audio passes through here several times per packet, so the conversions
//! are table lookups: decoding from two 256-entry tables built at compile time, encoding
//! from tables built once on first use (µ-law by the whole 16-bit sample, 64 KiB; A-law
//! by its 13 significant bits, 8 KiB). The bit algorithm stays as the reference the
//! tables are built from (and tested against, for every input).

use std::sync::LazyLock;

/// µ-law bias added before finding the segment (0x84 = 132).
const ULAW_BIAS: i32 = 0x84;
/// Largest magnitude µ-law can represent before the bias is added.
const ULAW_CLIP: i32 = 32635;

/// Encodes one linear sample as µ-law.
pub fn linear_to_ulaw(sample: i16) -> u8 {
    ULAW_ENCODE[usize::from(sample as u16)]
}

/// Decodes one µ-law code word.
pub fn ulaw_to_linear(code: u8) -> i16 {
    ULAW_DECODE[usize::from(code)]
}

/// Encodes one linear sample as A-law.
pub fn linear_to_alaw(sample: i16) -> u8 {
    ALAW_ENCODE[usize::from((sample as u16) >> 3)]
}

/// Decodes one A-law code word.
pub fn alaw_to_linear(code: u8) -> i16 {
    ALAW_DECODE[usize::from(code)]
}

static ULAW_DECODE: [i16; 256] = {
    let mut t = [0i16; 256];
    let mut code = 0;
    while code < 256 {
        t[code] = ulaw_to_linear_ref(code as u8);
        code += 1;
    }
    t
};

static ALAW_DECODE: [i16; 256] = {
    let mut t = [0i16; 256];
    let mut code = 0;
    while code < 256 {
        t[code] = alaw_to_linear_ref(code as u8);
        code += 1;
    }
    t
};

/// µ-law code of every sample, indexed by the sample's bits.
static ULAW_ENCODE: LazyLock<Box<[u8]>> = LazyLock::new(|| {
    (0..=u16::MAX)
        .map(|bits| linear_to_ulaw_ref(bits as i16))
        .collect()
});

/// A-law code of every sample, indexed by the sample's top 13 bits (A-law ignores the
/// low 3).
static ALAW_ENCODE: LazyLock<Box<[u8]>> = LazyLock::new(|| {
    (0..8192u16)
        .map(|top| linear_to_alaw_ref((top << 3) as i16))
        .collect()
});

/// Encodes one linear sample as µ-law, by the bit algorithm.
const fn linear_to_ulaw_ref(sample: i16) -> u8 {
    let mut s = sample as i32;
    let sign: u8 = if s < 0 {
        s = -s;
        0x80
    } else {
        0
    };
    if s > ULAW_CLIP {
        s = ULAW_CLIP;
    }
    s += ULAW_BIAS;
    // Segment = position of the highest set bit among bits 7..14.
    let top = ((s >> 7) & 0xff) as u8;
    let exponent = if top == 0 {
        0
    } else {
        7 - top.leading_zeros() as u8
    };
    let mantissa = ((s >> (exponent + 3)) & 0x0f) as u8;
    !(sign | (exponent << 4) | mantissa)
}

/// Decodes one µ-law code word, by the bit algorithm.
const fn ulaw_to_linear_ref(code: u8) -> i16 {
    let u = !code;
    let exponent = (u >> 4) & 0x07;
    let mantissa = (u & 0x0f) as i32;
    let magnitude = (((mantissa << 3) + ULAW_BIAS) << exponent) - ULAW_BIAS;
    // |magnitude| ≤ 32124, always in range.
    let v = if u & 0x80 != 0 { -magnitude } else { magnitude };
    v as i16
}

/// Upper bounds of the A-law segments on the 13-bit scale.
const ALAW_SEG_END: [i32; 8] = [0x1f, 0x3f, 0x7f, 0xff, 0x1ff, 0x3ff, 0x7ff, 0xfff];

/// Encodes one linear sample as A-law, by the bit algorithm.
fn linear_to_alaw_ref(sample: i16) -> u8 {
    // A-law works on 13 bits.
    let mut v = i32::from(sample) >> 3;
    let mask: u8 = if v >= 0 {
        0xd5
    } else {
        v = -v - 1;
        0x55
    };
    let Some(seg) = ALAW_SEG_END.iter().position(|&end| v <= end) else {
        return 0x7f ^ mask;
    };
    let seg = seg as u8;
    let shift = if seg < 2 { 1 } else { seg };
    let quant = ((v >> shift) & 0x0f) as u8;
    ((seg << 4) | quant) ^ mask
}

/// Decodes one A-law code word, by the bit algorithm.
const fn alaw_to_linear_ref(code: u8) -> i16 {
    let a = code ^ 0x55;
    let mut t = ((a & 0x0f) as i32) << 4;
    let seg = (a >> 4) & 0x07;
    match seg {
        0 => t += 8,
        1 => t += 0x108,
        _ => t = (t + 0x108) << (seg - 1),
    }
    // |t| ≤ 32256, always in range.
    let v = if a & 0x80 != 0 { t } else { -t };
    v as i16
}

/// Encodes `src` into `dst` as µ-law, up to the shorter of the two; returns the count.
pub fn encode_ulaw(src: &[i16], dst: &mut [u8]) -> usize {
    let n = src.len().min(dst.len());
    let table: &[u8] = &ULAW_ENCODE;
    for (d, s) in dst.iter_mut().zip(src) {
        *d = table.get(usize::from(*s as u16)).copied().unwrap_or(0xff);
    }
    n
}

/// Decodes µ-law `src` into `dst`, up to the shorter of the two; returns the count.
pub fn decode_ulaw(src: &[u8], dst: &mut [i16]) -> usize {
    let n = src.len().min(dst.len());
    for (d, s) in dst.iter_mut().zip(src) {
        *d = ulaw_to_linear(*s);
    }
    n
}

/// Encodes `src` into `dst` as A-law, up to the shorter of the two; returns the count.
pub fn encode_alaw(src: &[i16], dst: &mut [u8]) -> usize {
    let n = src.len().min(dst.len());
    let table: &[u8] = &ALAW_ENCODE;
    for (d, s) in dst.iter_mut().zip(src) {
        *d = table
            .get(usize::from((*s as u16) >> 3))
            .copied()
            .unwrap_or(0xd5);
    }
    n
}

/// Decodes A-law `src` into `dst`, up to the shorter of the two; returns the count.
pub fn decode_alaw(src: &[u8], dst: &mut [i16]) -> usize {
    let n = src.len().min(dst.len());
    for (d, s) in dst.iter_mut().zip(src) {
        *d = alaw_to_linear(*s);
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tables_are_the_bit_algorithm_for_every_input() {
        for x in i16::MIN..=i16::MAX {
            assert_eq!(linear_to_ulaw(x), linear_to_ulaw_ref(x), "ulaw {x}");
            assert_eq!(linear_to_alaw(x), linear_to_alaw_ref(x), "alaw {x}");
        }
        let pcm: Vec<i16> = (i16::MIN..=i16::MAX).collect();
        let mut codes = vec![0u8; pcm.len()];
        encode_ulaw(&pcm, &mut codes);
        assert!(
            pcm.iter()
                .zip(&codes)
                .all(|(&x, &c)| c == linear_to_ulaw_ref(x))
        );
        encode_alaw(&pcm, &mut codes);
        assert!(
            pcm.iter()
                .zip(&codes)
                .all(|(&x, &c)| c == linear_to_alaw_ref(x))
        );
        for code in 0..=255u8 {
            assert_eq!(ulaw_to_linear(code), ulaw_to_linear_ref(code));
            assert_eq!(alaw_to_linear(code), alaw_to_linear_ref(code));
        }
    }

    #[test]
    fn known_values() {
        assert_eq!(linear_to_ulaw(0), 0xff);
        assert_eq!(ulaw_to_linear(0xff), 0);
        assert_eq!(ulaw_to_linear(0x7f), 0);
        assert_eq!(linear_to_ulaw(i16::MAX), 0x80);
        assert_eq!(linear_to_ulaw(i16::MIN), 0x00);
        assert_eq!(ulaw_to_linear(0x80), 32124);
        assert_eq!(ulaw_to_linear(0x00), -32124);
        assert_eq!(linear_to_alaw(0), 0xd5);
        assert_eq!(alaw_to_linear(0xd5), 8);
        assert_eq!(alaw_to_linear(0x55), -8);
        assert_eq!(linear_to_alaw(i16::MAX), 0xaa);
        assert_eq!(linear_to_alaw(i16::MIN), 0x2a);
        assert_eq!(alaw_to_linear(0xaa), 32256);
        assert_eq!(alaw_to_linear(0x2a), -32256);
    }

    #[test]
    fn every_code_word_survives_decode_encode() {
        for code in 0..=255u8 {
            // 0x7f is µ-law's negative zero; it re-encodes as positive zero.
            if code != 0x7f {
                assert_eq!(linear_to_ulaw(ulaw_to_linear(code)), code, "ulaw {code:#x}");
            }
            assert_eq!(linear_to_alaw(alaw_to_linear(code)), code, "alaw {code:#x}");
        }
    }

    /// Companding error grows with amplitude: about 1/32 of the value (half a step of
    /// 1/16), plus a small floor near zero, plus clipping at the top of the µ-law range.
    #[test]
    fn round_trip_error_is_bounded_over_whole_range() {
        let mut worst_u = 0i32;
        let mut worst_a = 0i32;
        for x in i16::MIN..=i16::MAX {
            let xi = i32::from(x);
            let mag = xi.abs();
            let eu = (i32::from(ulaw_to_linear(linear_to_ulaw(x))) - xi).abs();
            let ea = (i32::from(alaw_to_linear(linear_to_alaw(x))) - xi).abs();
            let clip_u = (mag - 32124).max(0);
            assert!(eu <= mag / 32 + 5 + clip_u, "ulaw {x}: error {eu}");
            assert!(ea <= mag / 32 + 16, "alaw {x}: error {ea}");
            worst_u = worst_u.max(eu - clip_u);
            worst_a = worst_a.max(ea);
        }
        // Largest step is 1024 (µ) / 1024 (A): half of it is the worst error.
        assert!(worst_u <= 512, "{worst_u}");
        assert!(worst_a <= 512, "{worst_a}");
        // And both are monotonic: a louder input never decodes quieter.
        let mut prev_u = i16::MIN;
        let mut prev_a = i16::MIN;
        for x in i16::MIN..=i16::MAX {
            let u = ulaw_to_linear(linear_to_ulaw(x));
            let a = alaw_to_linear(linear_to_alaw(x));
            assert!(u >= prev_u && a >= prev_a, "not monotonic at {x}");
            prev_u = u;
            prev_a = a;
        }
    }

    #[test]
    fn slice_helpers() {
        let pcm = [0i16, 1000, -1000, 30000];
        let mut codes = [0u8; 3];
        assert_eq!(encode_ulaw(&pcm, &mut codes), 3);
        assert_eq!(codes[0], 0xff);
        let mut back = [0i16; 4];
        assert_eq!(decode_ulaw(&codes, &mut back), 3);
        assert!((i32::from(back[1]) - 1000).abs() < 40);
        assert_eq!(encode_alaw(&pcm, &mut codes), 3);
        assert_eq!(codes[0], 0xd5);
        assert_eq!(decode_alaw(&codes, &mut back), 3);
        assert!((i32::from(back[2]) + 1000).abs() < 40);
    }
}
