//! ITU-T G.722 (09/2012) clause 6: the sub-band ADPCM blocks in fixed point.
//!
//! Lower sub-band: QUANTL (6-bit), INVQAL (4-bit, feedback), INVQBL (6-bit, decoder
//! output), LOGSCL/SCALEL. Higher sub-band: QUANTH, INVQAH, LOGSCH/SCALEH. Both bands
//! share block 4 (RECONS, PARREC, UPPOL2, UPPOL1, UPZERO, DELAYA, FILTEP, FILTEZ,
//! PREDIC), implemented once in [`Band::update_predictor`].
//!
//! All arithmetic is on `i32` with the Recommendation's 16-bit limits applied where it
//! applies them, so no input can overflow.

use super::tables::{IH_MAG, IHN, IHP, ILB, ILN, ILP, Q2, Q6, QM2, QM4, QM6, RIL_MAG, WH, WL};

/// Two's-complement 16-bit saturation, the "limit" of the Recommendation's blocks.
#[inline]
pub(crate) fn sat16(x: i32) -> i32 {
    x.clamp(i32::from(i16::MIN), i32::from(i16::MAX))
}

/// Reconstructed sub-band signals are limited to 15 bits before the receive QMF.
#[inline]
fn limit15(x: i32) -> i32 {
    x.clamp(-16384, 16383)
}

/// State of one sub-band ADPCM coder (identical in encoder and decoder).
#[derive(Debug, Clone)]
pub(crate) struct Band {
    /// Signal estimate SL/SH for the current sample.
    s: i32,
    /// Zero-section (sixth-order) part of the estimate, SZL/SZH.
    sz: i32,
    /// Pole coefficients AL1, AL2.
    a: [i32; 2],
    /// Zero coefficients BL1..BL6.
    b: [i32; 6],
    /// Quantised difference history DLT1..DLT6 (newest first).
    d: [i32; 6],
    /// Reconstructed signal history RLT1, RLT2.
    r: [i32; 2],
    /// Partially reconstructed signal history PLT1, PLT2.
    p: [i32; 2],
    /// Log scale factor NBL/NBH.
    nb: i32,
    /// Scale factor DETL/DETH for the current sample.
    det: i32,
}

impl Band {
    /// Reset state for the lower band (DETL = 32).
    pub(crate) const fn new_low() -> Self {
        Self::with_det(32)
    }

    /// Reset state for the higher band (DETH = 8).
    pub(crate) const fn new_high() -> Self {
        Self::with_det(8)
    }

    const fn with_det(det: i32) -> Self {
        Self {
            s: 0,
            sz: 0,
            a: [0; 2],
            b: [0; 6],
            d: [0; 6],
            r: [0; 2],
            p: [0; 2],
            nb: 0,
            det,
        }
    }

    /// Block 4: update the adaptive predictor with the quantised difference `d` and
    /// compute the estimate for the next sample.
    fn update_predictor(&mut self, d: i32) {
        // RECONS and PARREC.
        let r = sat16(self.s + d);
        let p = sat16(d + self.sz);

        // Sign bits as the Recommendation takes them (x >> 15): zero is positive.
        let sg0 = p < 0;
        let sg1 = self.p[0] < 0;
        let sg2 = self.p[1] < 0;

        // UPPOL2.
        let wd1 = sat16(self.a[0] << 2);
        let wd2 = if sg0 == sg1 { sat16(-wd1) } else { wd1 };
        let wd3 = (wd2 >> 7) + if sg0 == sg2 { 128 } else { -128 };
        let apl2 = (wd3 + ((self.a[1] * 32512) >> 15)).clamp(-12288, 12288);

        // UPPOL1.
        let wd1 = if sg0 == sg1 { 192 } else { -192 };
        let apl1_raw = sat16(wd1 + ((self.a[0] * 32640) >> 15));
        let lim = 15360 - apl2;
        let apl1 = apl1_raw.clamp(-lim, lim);

        // UPZERO (uses the old DLT1..DLT6 and BL1..BL6).
        let step = if d == 0 { 0 } else { 128 };
        let dsg = d < 0;
        for (b, &di) in self.b.iter_mut().zip(self.d.iter()) {
            let wd2 = if dsg == (di < 0) { step } else { -step };
            *b = sat16(wd2 + ((*b * 32640) >> 15));
        }

        // DELAYA.
        self.d.copy_within(0..5, 1);
        self.d[0] = d;
        self.r = [r, self.r[0]];
        self.p = [p, self.p[0]];
        self.a = [apl1, apl2];

        // FILTEZ.
        let mut sz = 0;
        for (&b, &di) in self.b.iter().zip(self.d.iter()) {
            sz = sat16(sz + ((b * sat16(di + di)) >> 15));
        }
        // FILTEP.
        let sp1 = (self.a[0] * sat16(self.r[0] + self.r[0])) >> 15;
        let sp2 = (self.a[1] * sat16(self.r[1] + self.r[1])) >> 15;
        let sp = sat16(sp1 + sp2);
        // PREDIC.
        self.sz = sz;
        self.s = sat16(sp + sz);
    }

    /// SCALEL (`shift_base` 8) / SCALEH (`shift_base` 10): DET from NB.
    fn scale(nb: i32, shift_base: i32) -> i32 {
        // nb is within 0..=22528, so both indices are in range.
        let frac = ILB[((nb >> 6) & 31) as usize];
        let shift = shift_base - (nb >> 11);
        let dep = if shift < 0 {
            frac << -shift
        } else {
            frac >> shift
        };
        dep << 2
    }

    /// Lower sub-band encoder step: returns the 6-bit code IL for sub-band sample `xl`.
    pub(crate) fn encode_low(&mut self, xl: i32) -> u8 {
        // SUBTL and QUANTL.
        let el = sat16(xl - self.s);
        let wd = if el < 0 { -(el + 1) } else { el };
        // Interval mil is the first whose upper decision level exceeds |EL| (30 if
        // none does). The scaled levels never decrease, so a binary search finds it.
        let det = self.det;
        let mil = 1 + Q6[1..30].partition_point(|&q| (q * det) >> 12 <= wd);
        let il = if el < 0 { ILN[mil] } else { ILP[mil] };
        self.adapt_low(il);
        il
    }

    /// Lower sub-band decoder step: returns the reconstructed sub-band sample RL.
    pub(crate) fn decode_low(&mut self, il: u8) -> i32 {
        let il = il & 0x3f;
        // INVQBL with the scale factor of this sample, then RECONS for the output.
        let dl = (self.det * QM6[usize::from(il)]) >> 15;
        let rl = limit15(self.s + dl);
        self.adapt_low(il);
        rl
    }

    /// INVQAL, LOGSCL, SCALEL and block 4: shared by encoder and decoder.
    fn adapt_low(&mut self, il: u8) {
        let ril = usize::from(il >> 2);
        let dlt = (self.det * QM4[ril]) >> 15;
        let nbpl = ((self.nb * 32512) >> 15) + WL[RIL_MAG[ril]];
        self.nb = nbpl.clamp(0, 18432);
        self.det = Self::scale(self.nb, 8);
        self.update_predictor(dlt);
    }

    /// Higher sub-band encoder step: returns the 2-bit code IH for sub-band sample `xh`.
    pub(crate) fn encode_high(&mut self, xh: i32) -> u8 {
        // SUBTH and QUANTH.
        let eh = sat16(xh - self.s);
        let wd = if eh < 0 { -(eh + 1) } else { eh };
        let mih = if wd >= (Q2 * self.det) >> 12 { 2 } else { 1 };
        let ih = if eh < 0 { IHN[mih] } else { IHP[mih] };
        self.adapt_high(ih);
        ih
    }

    /// Higher sub-band decoder step: returns the reconstructed sub-band sample RH.
    pub(crate) fn decode_high(&mut self, ih: u8) -> i32 {
        let ih = ih & 0x03;
        let dh = (self.det * QM2[usize::from(ih)]) >> 15;
        let rh = limit15(self.s + dh);
        self.adapt_high(ih);
        rh
    }

    /// INVQAH, LOGSCH, SCALEH and block 4.
    fn adapt_high(&mut self, ih: u8) {
        let ih = usize::from(ih);
        let dh = (self.det * QM2[ih]) >> 15;
        let nbph = ((self.nb * 32512) >> 15) + WH[IH_MAG[ih]];
        self.nb = nbph.clamp(0, 22528);
        self.det = Self::scale(self.nb, 10);
        self.update_predictor(dh);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scale_factor_bounds_match_the_recommendation() {
        assert_eq!(Band::scale(0, 8), 32, "DETL minimum");
        assert_eq!(Band::scale(18432, 8), 16384, "DETL maximum");
        assert_eq!(Band::scale(0, 10), 8, "DETH minimum");
        assert_eq!(Band::scale(22528, 10), 16384, "DETH maximum");
    }

    #[test]
    fn zero_input_gives_the_idle_codes() {
        // At DETL = 32 the first three decision levels round to 0, so |EL| = 0 is in
        // interval 4 (code 58); the upper band's level 564 * 8 >> 12 = 1 gives code 3.
        // (Later the +1 steps those codes feed back make the predictors wander a
        // little: idle-channel noise, a few units at most.)
        let mut low = Band::new_low();
        let mut high = Band::new_high();
        for _ in 0..40 {
            assert_eq!(low.encode_low(0), 58);
            assert_eq!(high.encode_high(0), 3);
        }
    }

    #[test]
    fn encoder_and_decoder_bands_track_each_other() {
        let mut enc = Band::new_low();
        let mut dec = Band::new_low();
        for n in 0..2000 {
            let x = ((f64::from(n) * 0.3).sin() * 6000.0) as i32;
            let il = enc.encode_low(x);
            let _ = dec.decode_low(il);
            assert_eq!(enc.s, dec.s);
            assert_eq!(enc.det, dec.det);
        }
    }

    #[test]
    fn lower_band_follows_a_slow_signal() {
        let mut enc = Band::new_low();
        let mut dec = Band::new_low();
        let mut err = 0.0;
        let mut sig = 0.0;
        for n in 0..4000 {
            let x = ((f64::from(n) * 0.05).sin() * 8000.0) as i32;
            let y = dec.decode_low(enc.encode_low(x));
            if n > 500 {
                err += f64::from(x - y).powi(2);
                sig += f64::from(x).powi(2);
            }
        }
        let snr = 10.0 * (sig / err).log10();
        assert!(snr > 25.0, "lower band SNR {snr:.1} dB");
    }
}
