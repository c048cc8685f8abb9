//! Constant tables of ITU-T G.722 (09/2012) clause 6 (computational details).
//!
//! Every table is indexed exactly as the Recommendation indexes it, so each block in
//! `adpcm.rs` reads like its description. Values are the fixed-point integers of the
//! Recommendation (Q15 multipliers, decision levels scaled by 2^3 relative to Q15).

/// QMF coefficients h0..h23 (Table 11 / clause 3.1), scaled by 2^13. Symmetric.
pub(crate) const QMF_COEFFS: [i32; 24] = [
    3, -11, -11, 53, 12, -156, 32, 362, -210, -805, 951, 3876, 3876, 951, -805, -210, 362, 32,
    -156, 12, 53, -11, -11, 3,
];

/// Lower sub-band 6-bit quantiser decision levels (QUANTL): interval mil (1..=30) is
/// `Q6[mil-1] <= |EL| < Q6[mil]` after scaling each level by `DETL >> 12`; interval 30
/// is open above (its entry is unused).
pub(crate) const Q6: [i32; 31] = [
    0, 35, 72, 110, 150, 190, 233, 276, 323, 370, 422, 473, 530, 587, 650, 714, 786, 858, 940,
    1023, 1121, 1219, 1339, 1458, 1612, 1765, 1980, 2195, 2557, 2919, 0,
];

/// QUANTL output code for a negative `EL` falling in interval mil (index 0 unused).
pub(crate) const ILN: [u8; 31] = [
    0, 63, 62, 31, 30, 29, 28, 27, 26, 25, 24, 23, 22, 21, 20, 19, 18, 17, 16, 15, 14, 13, 12, 11,
    10, 9, 8, 7, 6, 5, 4,
];

/// QUANTL output code for a non-negative `EL` falling in interval mil (index 0 unused).
pub(crate) const ILP: [u8; 31] = [
    0, 61, 60, 59, 58, 57, 56, 55, 54, 53, 52, 51, 50, 49, 48, 47, 46, 45, 44, 43, 42, 41, 40, 39,
    38, 37, 36, 35, 34, 33, 32,
];

/// INVQAL: 4-bit inverse quantiser output (Q15 of DETL) by the 4 MSBs of IL.
pub(crate) const QM4: [i32; 16] = [
    0, -20456, -12896, -8968, -6288, -4240, -2584, -1200, 20456, 12896, 8968, 6288, 4240, 2584,
    1200, 0,
];

/// INVQBL: 6-bit inverse quantiser output (Q15 of DETL) by the full 6-bit IL.
/// Codes 0..=3 are never produced by the 64 kbit/s encoder; the decoder maps them to
/// the smallest negative level as the Recommendation does.
pub(crate) const QM6: [i32; 64] = [
    -136, -136, -136, -136, -24808, -21904, -19008, -16704, -14984, -13512, -12280, -11192, -10232,
    -9360, -8576, -7856, -7192, -6576, -6000, -5456, -4944, -4464, -4008, -3576, -3168, -2776,
    -2400, -2032, -1688, -1360, -1040, -728, 24808, 21904, 19008, 16704, 14984, 13512, 12280,
    11192, 10232, 9360, 8576, 7856, 7192, 6576, 6000, 5456, 4944, 4464, 4008, 3576, 3168, 2776,
    2400, 2032, 1688, 1360, 1040, 728, 432, 136, -432, -136,
];

/// LOGSCL: magnitude index of a 4-bit code (RIL) into [`WL`].
pub(crate) const RIL_MAG: [usize; 16] = [0, 7, 6, 5, 4, 3, 2, 1, 7, 6, 5, 4, 3, 2, 1, 0];

/// LOGSCL: log scale factor multipliers WL by magnitude.
pub(crate) const WL: [i32; 8] = [-60, -30, 58, 172, 334, 538, 1198, 3042];

/// SCALEL/SCALEH: ILB(i) = 2048 * 2^(i/32), the antilog table for the scale factor.
pub(crate) const ILB: [i32; 32] = [
    2048, 2093, 2139, 2186, 2233, 2282, 2332, 2383, 2435, 2489, 2543, 2599, 2656, 2714, 2774, 2834,
    2896, 2960, 3025, 3091, 3158, 3228, 3298, 3371, 3444, 3520, 3597, 3676, 3756, 3838, 3922, 4008,
];

/// QUANTH: the single decision level of the 2-bit quantiser (scaled like [`Q6`]).
pub(crate) const Q2: i32 = 564;

/// QUANTH output code for a negative `EH` by interval mih = 1, 2 (index 0 unused).
pub(crate) const IHN: [u8; 3] = [0, 1, 0];

/// QUANTH output code for a non-negative `EH` by interval mih = 1, 2 (index 0 unused).
pub(crate) const IHP: [u8; 3] = [0, 3, 2];

/// INVQAH: 2-bit inverse quantiser output (Q15 of DETH) by IH.
pub(crate) const QM2: [i32; 4] = [-7408, -1616, 7408, 1616];

/// LOGSCH: magnitude index of IH into [`WH`].
pub(crate) const IH_MAG: [usize; 4] = [2, 1, 2, 1];

/// LOGSCH: log scale factor multipliers WH by magnitude.
pub(crate) const WH: [i32; 3] = [0, -214, 798];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ilb_is_the_antilog_it_claims() {
        for (i, &v) in ILB.iter().enumerate() {
            let exact = 2048.0 * 2f64.powf(i as f64 / 32.0);
            assert!(
                (f64::from(v) - exact).abs() <= 1.0,
                "ILB[{i}] = {v}, want {exact}"
            );
        }
    }

    #[test]
    fn qmf_has_unity_dc_gain_and_is_symmetric() {
        assert_eq!(QMF_COEFFS.iter().sum::<i32>(), 8192);
        for i in 0..12 {
            assert_eq!(QMF_COEFFS[i], QMF_COEFFS[23 - i]);
        }
    }

    #[test]
    fn six_bit_reconstruction_levels_lie_inside_their_intervals() {
        // Interval mil spans Q6[mil-1]..Q6[mil] (the last one is open); in QM6 units the
        // levels are Q6 << 3.
        for mil in 1..=30 {
            let lo = Q6[mil - 1] << 3;
            let hi = if mil == 30 { i32::MAX } else { Q6[mil] << 3 };
            let pos = QM6[usize::from(ILP[mil])];
            let neg = QM6[usize::from(ILN[mil])];
            assert!(lo <= pos && pos < hi, "mil {mil}: {pos} not in [{lo},{hi})");
            assert_eq!(neg, -pos, "mil {mil}: negative level mirrors positive");
        }
    }

    #[test]
    fn four_bit_levels_match_the_six_bit_codes_they_truncate() {
        // The 4-bit code is the 6-bit code without its 2 LSBs: both must agree in sign.
        for mil in 1..=30 {
            let p = QM4[usize::from(ILP[mil] >> 2)];
            let n = QM4[usize::from(ILN[mil] >> 2)];
            assert!(p >= 0 && n <= 0, "mil {mil}: {p} {n}");
            assert_eq!(p, -n);
        }
    }
}
