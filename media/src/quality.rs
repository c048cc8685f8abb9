//! Listening-quality estimate from the ITU-T G.107 E-model (06/2015): §7 (transmission
//! rating R) and Annex B (R → MOS).
//!
//! Only the parameters a relay can measure vary: codec impairment `Ie`, packet loss
//! `Ppl` with its robustness `Bpl` (random loss, `BurstR` = 1), and the one-way delay
//! `Ta`. Everything else takes the G.107 defaults (Table 3), which give R = 93.2.

/// R with every parameter at its G.107 default (Ro − Is with no delay or loss).
const R_DEFAULT: f64 = 93.2;

/// Estimated MOS-CQE (1.0 ..= 4.5) for a call leg.
///
/// `codec_ie`: equipment impairment factor of the codec (0 for G.711, G.113 App. I);
/// `one_way_delay_ms`: mouth-to-ear delay `Ta`; `loss_percent`: random packet loss
/// `Ppl` in percent; `bpl`: packet-loss robustness of the codec (4.3 for G.711 with
/// PLC, 25.1 for G.711 with PLC per G.113). Negative or NaN inputs count as 0.
pub fn mos(codec_ie: f64, one_way_delay_ms: f64, loss_percent: f64, bpl: f64) -> f64 {
    let ie = non_negative(codec_ie);
    let ppl = non_negative(loss_percent).min(100.0);
    let bpl = if bpl.is_finite() && bpl > 0.0 {
        bpl
    } else {
        1.0
    };
    // G.107 eq. 7-29 with BurstR = 1 (random loss).
    let ie_eff = ie + (95.0 - ie) * ppl / (ppl + bpl);
    let r = R_DEFAULT - delay_impairment(non_negative(one_way_delay_ms)) - ie_eff;
    r_to_mos(r)
}

/// `Idd`, the absolute-delay impairment (G.107 eq. 7-27/7-28). Talker/listener echo
/// (`Idte`, `Idle`) stay at their default-echo-loss values, already inside R = 93.2.
pub fn delay_impairment(ta_ms: f64) -> f64 {
    if ta_ms <= 100.0 {
        return 0.0;
    }
    let x = (ta_ms / 100.0).log10() / 2f64.log10();
    25.0 * ((1.0 + x.powi(6)).powf(1.0 / 6.0) - 3.0 * (1.0 + (x / 3.0).powi(6)).powf(1.0 / 6.0)
        + 2.0)
}

/// G.107 Annex B (eq. B-4): MOS-CQE from the rating R.
pub fn r_to_mos(r: f64) -> f64 {
    let m = if r.is_nan() || r <= 0.0 {
        1.0
    } else if r >= 100.0 {
        4.5
    } else {
        1.0 + 0.035 * r + r * (r - 60.0) * (100.0 - r) * 7.0e-6
    };
    m.clamp(1.0, 4.5)
}

fn non_negative(v: f64) -> f64 {
    if v.is_finite() && v > 0.0 { v } else { 0.0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_rating_gives_4_41() {
        let m = mos(0.0, 0.0, 0.0, 4.3);
        assert!((m - 4.409).abs() < 0.005, "{m}");
        assert!((r_to_mos(93.2) - 4.41).abs() < 0.01);
    }

    #[test]
    fn annex_b_anchor_points() {
        assert_eq!(r_to_mos(-5.0), 1.0);
        assert_eq!(r_to_mos(120.0), 4.5);
        // R = 50 is "nearly all users dissatisfied": MOS 2.58 (G.107 Fig. B.1).
        assert!((r_to_mos(50.0) - 2.575).abs() < 0.01);
        assert!((r_to_mos(80.0) - 4.024).abs() < 0.01);
    }

    #[test]
    fn loss_lowers_mos() {
        // 1 % random loss on G.711 with Bpl 4.3: Ie,eff = 95/5.3 = 17.92, R = 75.28.
        let m = mos(0.0, 0.0, 1.0, 4.3);
        assert!((m - r_to_mos(93.2 - 95.0 / 5.3)).abs() < 1e-9);
        assert!((3.7..3.9).contains(&m), "{m}");
        // More robust PLC (bigger Bpl) suffers less from the same loss.
        assert!(mos(0.0, 0.0, 1.0, 25.1) > m);
        // Codec impairment alone (G.729a, Ie 11).
        assert!(mos(11.0, 0.0, 0.0, 19.0) < mos(0.0, 0.0, 0.0, 4.3));
    }

    #[test]
    fn delay_impairment_points() {
        assert_eq!(delay_impairment(100.0), 0.0);
        // Ta = 200 ms → X = 1 → Idd = 25·(2^(1/6) − 3·(1 + 1/729)^(1/6) + 2).
        let expect =
            25.0 * (2f64.powf(1.0 / 6.0) - 3.0 * (1.0 + 1.0 / 729.0f64).powf(1.0 / 6.0) + 2.0);
        assert!((delay_impairment(200.0) - expect).abs() < 1e-9);
        assert!(mos(0.0, 400.0, 0.0, 4.3) < mos(0.0, 150.0, 0.0, 4.3));
    }

    #[test]
    fn monotonic_in_loss_and_delay_and_clamped() {
        let mut prev = f64::INFINITY;
        for i in 0..=200 {
            let m = mos(0.0, 0.0, f64::from(i) * 0.5, 4.3);
            assert!(m <= prev + 1e-12, "loss {i}");
            assert!((1.0..=4.5).contains(&m));
            prev = m;
        }
        let mut prev = f64::INFINITY;
        for d in 0..=100 {
            let m = mos(0.0, f64::from(d) * 10.0, 2.0, 4.3);
            assert!(m <= prev + 1e-12, "delay {d}");
            assert!((1.0..=4.5).contains(&m));
            prev = m;
        }
        assert_eq!(mos(0.0, 5000.0, 100.0, 4.3), 1.0);
        assert!(mos(f64::NAN, -3.0, -1.0, 0.0) > 4.4);
    }
}
