//! ITU-T G.722 (09/2012) clauses 3.1 and 4.4: the 24-tap quadrature mirror filters.
//!
//! Transmit: two 16 kHz samples in, one lower and one higher 8 kHz sub-band sample out.
//! Receive: one sample of each sub-band in, two 16 kHz samples out. Both are fixed
//! delay lines of 24 samples; no allocation.

use super::adpcm::sat16;
use super::tables::QMF_COEFFS;

/// Transmit QMF: splits 16 kHz PCM into the two sub-bands.
#[derive(Debug, Clone)]
pub(crate) struct Analysis {
    /// x_in(j), x_in(j-1), ... x_in(j-23), newest first.
    x: [i32; 24],
}

impl Analysis {
    pub(crate) const fn new() -> Self {
        Self { x: [0; 24] }
    }

    /// Takes x_in(j-1) then x_in(j) (time order) and returns (XL, XH).
    ///
    /// The Recommendation's input is 14-bit and its sub-band signals 15-bit (the
    /// ADPCM limits them to -16384..=16383). With 16-bit input and coefficients in
    /// units of 2^-13, `>> 14` puts XL at half the input level: the same 15-bit range.
    pub(crate) fn split(&mut self, older: i16, newer: i16) -> (i32, i32) {
        self.x.copy_within(0..22, 2);
        self.x[1] = i32::from(older);
        self.x[0] = i32::from(newer);
        let mut xa = 0i32;
        let mut xb = 0i32;
        for (pair, h) in self.x.chunks_exact(2).zip(QMF_COEFFS.chunks_exact(2)) {
            xa += h[0] * pair[0];
            xb += h[1] * pair[1];
        }
        // |x| <= 32768 and sum |h| = 12964, so the sums stay far inside i32.
        (sat16((xa + xb) >> 14), sat16((xa - xb) >> 14))
    }
}

/// Receive QMF: recombines the two sub-bands into 16 kHz PCM.
#[derive(Debug, Clone)]
pub(crate) struct Synthesis {
    /// x_d(i) = RL - RH, newest first.
    xd: [i32; 12],
    /// x_s(i) = RL + RH, newest first.
    xs: [i32; 12],
}

impl Synthesis {
    pub(crate) const fn new() -> Self {
        Self {
            xd: [0; 12],
            xs: [0; 12],
        }
    }

    /// Takes RL and RH and returns x_out(j) then x_out(j+1) (time order).
    pub(crate) fn merge(&mut self, rl: i32, rh: i32) -> (i16, i16) {
        self.xd.copy_within(0..11, 1);
        self.xs.copy_within(0..11, 1);
        self.xd[0] = rl - rh;
        self.xs[0] = rl + rh;
        let mut even = 0i32;
        let mut odd = 0i32;
        for ((h, &d), &s) in QMF_COEFFS
            .chunks_exact(2)
            .zip(self.xd.iter())
            .zip(self.xs.iter())
        {
            even += h[0] * d;
            odd += h[1] * s;
        }
        // x_out = 2 * sum(h * x) with h in units of 2^-13 gives `>> 12`; one bit less
        // undoes the halving in `Analysis::split` and restores the 16-bit scale.
        (clamp_i16(even >> 11), clamp_i16(odd >> 11))
    }
}

fn clamp_i16(x: i32) -> i16 {
    // Lossless after the clamp.
    sat16(x) as i16
}
