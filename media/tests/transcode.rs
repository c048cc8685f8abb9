//! Transcoding and resampling checked by ear-substitute: a pure tone goes in as the source
//! codec's payloads, and what comes out must still be that tone (Goertzel power at the tone
//! at least 20 dB above ±200 Hz neighbours) at the same level (within 1.5 dB), once the
//! codec and resampler delay has passed.

#![allow(clippy::unwrap_used)] // tests may unwrap (helpers included)

use media::codec::{self, AudioCodec, CodecError};
use media::resample::Resampler;
use media::transcode::Transcoder;

const PTIME: u32 = 20;
/// One second of 20 ms frames.
const FRAMES: usize = 50;
/// Frames skipped before measuring: covers every codec's and resampler's delay.
const SKIP_FRAMES: usize = 10;
/// -12 dBFS peak.
const AMPLITUDE: f64 = 32_767.0 * 0.251_188_643; // 10^(-12/20)

fn tone(freq: f64, rate: u32, samples: usize) -> Vec<i16> {
    (0..samples)
        .map(|n| {
            let t = n as f64 / f64::from(rate);
            (AMPLITUDE * (2.0 * std::f64::consts::PI * freq * t).sin()).round() as i16
        })
        .collect()
}

/// Goertzel power at `freq` over a Hann-windowed block.
fn goertzel(pcm: &[i16], rate: u32, freq: f64) -> f64 {
    let n = pcm.len() as f64;
    let coeff = 2.0 * (2.0 * std::f64::consts::PI * freq / f64::from(rate)).cos();
    let (mut s1, mut s2) = (0.0f64, 0.0f64);
    for (i, &x) in pcm.iter().enumerate() {
        let w = 0.5 - 0.5 * (2.0 * std::f64::consts::PI * i as f64 / n).cos();
        let s0 = f64::from(x) * w + coeff * s1 - s2;
        s2 = s1;
        s1 = s0;
    }
    s1 * s1 + s2 * s2 - coeff * s1 * s2
}

fn rms_db(pcm: &[i16]) -> f64 {
    let sum: f64 = pcm.iter().map(|&x| f64::from(x).powi(2)).sum();
    10.0 * (sum / pcm.len() as f64).log10()
}

/// Asserts `pcm` (already past the delay) is the tone at the source level.
fn assert_tone(label: &str, pcm: &[i16], rate: u32, freq: f64) {
    assert!(pcm.len() >= rate as usize / 2, "{label}: too little audio");
    let at = goertzel(pcm, rate, freq);
    for neighbour in [freq - 200.0, freq + 200.0] {
        let other = goertzel(pcm, rate, neighbour);
        let margin = 10.0 * (at / other.max(1e-9)).log10();
        assert!(
            margin >= 20.0,
            "{label}: tone only {margin:.1} dB above {neighbour} Hz"
        );
    }
    let expected = 20.0 * (AMPLITUDE / std::f64::consts::SQRT_2).log10();
    let got = rms_db(pcm);
    assert!(
        (got - expected).abs() <= 1.5,
        "{label}: level {got:.2} dB, expected {expected:.2} dB"
    );
}

/// Encodes one second of tone as `codec` payloads, one per 20 ms frame.
fn source_payloads(codec: AudioCodec, freq: f64) -> Vec<Vec<u8>> {
    let frame = codec.frame_samples(PTIME);
    let pcm = tone(freq, codec.sample_rate(), frame * FRAMES);
    let mut enc = codec::encoder(codec).unwrap();
    pcm.chunks_exact(frame)
        .map(|chunk| {
            let mut buf = vec![0u8; codec.max_payload_bytes(PTIME)];
            let n = enc.encode(chunk, &mut buf).unwrap();
            buf.truncate(n);
            buf
        })
        .collect()
}

fn transcode_all(payloads: &[Vec<u8>], from: AudioCodec, to: AudioCodec) -> Vec<Vec<u8>> {
    let mut tc = Transcoder::new(from, to, PTIME).unwrap();
    let mut buf = vec![0u8; tc.max_output_bytes()];
    payloads
        .iter()
        .map(|p| {
            let n = tc.process(p, &mut buf).unwrap();
            assert!(n > 0);
            buf[..n].to_vec()
        })
        .collect()
}

/// Decodes payloads and drops the delay frames.
fn decode_tail(payloads: &[Vec<u8>], codec: AudioCodec) -> Vec<i16> {
    let mut dec = codec::decoder(codec).unwrap();
    let mut pcm = Vec::new();
    let mut frame = Vec::new();
    for p in payloads {
        dec.decode(p, &mut frame).unwrap();
        assert_eq!(frame.len(), codec.frame_samples(PTIME));
        pcm.extend_from_slice(&frame);
    }
    pcm.split_off(codec.frame_samples(PTIME) * SKIP_FRAMES)
}

fn check_chain(chain: &[AudioCodec], freq: f64) {
    let label = format!("{chain:?} @ {freq} Hz");
    let mut payloads = source_payloads(chain[0], freq);
    for pair in chain.windows(2) {
        payloads = transcode_all(&payloads, pair[0], pair[1]);
    }
    let last = chain[chain.len() - 1];
    let pcm = decode_tail(&payloads, last);
    assert_tone(&label, &pcm, last.sample_rate(), freq);
}

const OPUS: AudioCodec = AudioCodec::Opus { channels: 2 };

#[test]
fn pcmu_to_pcma_keeps_tone() {
    check_chain(&[AudioCodec::Pcmu, AudioCodec::Pcma], 1000.0);
}

#[test]
fn pcma_to_pcmu_keeps_tone() {
    check_chain(&[AudioCodec::Pcma, AudioCodec::Pcmu], 1000.0);
}

#[test]
fn pcmu_via_opus_and_back_keeps_tone() {
    check_chain(&[AudioCodec::Pcmu, OPUS], 1000.0);
    check_chain(&[AudioCodec::Pcmu, OPUS, AudioCodec::Pcmu], 1000.0);
}

#[test]
fn pcmu_to_g722_keeps_tone() {
    check_chain(&[AudioCodec::Pcmu, AudioCodec::G722], 1000.0);
}

#[test]
fn g722_to_pcma_keeps_wideband_source_tone() {
    check_chain(&[AudioCodec::G722, AudioCodec::Pcma], 1000.0);
    check_chain(&[AudioCodec::G722, AudioCodec::Pcma], 3000.0);
}

#[test]
fn g722_and_opus_wideband_paths_keep_3khz() {
    check_chain(&[AudioCodec::G722, OPUS], 3000.0);
    check_chain(&[OPUS, AudioCodec::G722], 3000.0);
}

/// Runs a tone through `a → b → a` with bare resamplers; checks both the intermediate
/// rate and the round trip.
fn resample_round_trip(a: u32, b: u32, freq: f64) {
    let mut up = Resampler::new(a, b).unwrap();
    let mut down = Resampler::new(b, a).unwrap();
    assert_eq!(up.input_frame_len(), (a / 50) as usize);
    assert_eq!(up.output_frame_len(), (b / 50) as usize);
    let input = tone(freq, a, up.input_frame_len() * FRAMES);
    let mut mid = vec![0i16; up.output_frame_len()];
    let mut back = vec![0i16; down.output_frame_len()];
    let (mut mid_all, mut back_all) = (Vec::new(), Vec::new());
    for chunk in input.chunks_exact(up.input_frame_len()) {
        assert_eq!(up.process(chunk, &mut mid).unwrap(), mid.len());
        mid_all.extend_from_slice(&mid);
        assert_eq!(down.process(&mid, &mut back).unwrap(), back.len());
        back_all.extend_from_slice(&back);
    }
    let skip_mid = up.output_frame_len() * SKIP_FRAMES;
    assert_tone(&format!("{a}->{b}"), &mid_all[skip_mid..], b, freq);
    let skip_back = down.output_frame_len() * SKIP_FRAMES;
    assert_tone(&format!("{a}->{b}->{a}"), &back_all[skip_back..], a, freq);
}

#[test]
fn resample_8k_16k_8k() {
    resample_round_trip(8_000, 16_000, 1000.0);
}

#[test]
fn resample_8k_24k_8k() {
    resample_round_trip(8_000, 24_000, 1000.0);
}

#[test]
fn resample_every_pair() {
    let rates = media::resample::SUPPORTED_RATES;
    for &a in &rates {
        for &b in &rates {
            if a < b {
                resample_round_trip(a, b, 1000.0);
            }
        }
    }
}

#[test]
fn resampler_delay_and_passthrough() {
    let same = Resampler::new(16_000, 16_000).unwrap();
    assert!(same.is_passthrough());
    assert_eq!(same.delay_samples(), 0);
    // FFT block of one frame: the delay is half an output frame (10 ms).
    assert_eq!(Resampler::new(8_000, 16_000).unwrap().delay_samples(), 160);
    assert_eq!(Resampler::new(24_000, 8_000).unwrap().delay_samples(), 80);
    assert!(Resampler::new(8_000, 44_100).is_err());
    let mut r = Resampler::new(8_000, 16_000).unwrap();
    let mut out = [0i16; 320];
    assert!(r.process(&[0; 100], &mut out).is_err());
    assert!(r.process(&[0; 160], &mut out[..100]).is_err());
}

/// A delayed impulse comes out where `delay_samples` says (±2 for the filter's spread).
#[test]
fn resampler_delay_matches_report() {
    let mut r = Resampler::new(8_000, 24_000).unwrap();
    let mut input = vec![0i16; 160 * 4];
    input[100] = 20_000;
    let mut all = Vec::new();
    let mut out = [0i16; 480];
    for chunk in input.chunks_exact(160) {
        r.process(chunk, &mut out).unwrap();
        all.extend_from_slice(&out);
    }
    let peak = all
        .iter()
        .enumerate()
        .max_by_key(|(_, v)| v.unsigned_abs())
        .map(|(i, _)| i)
        .unwrap();
    let expected = 100 * 3 + r.delay_samples();
    assert!(
        peak.abs_diff(expected) <= 2,
        "peak {peak}, expected {expected}"
    );
}

#[test]
fn transcoder_rejects_bad_input() {
    let mut tc = Transcoder::new(AudioCodec::Pcmu, AudioCodec::Pcma, PTIME).unwrap();
    let mut buf = [0u8; 160];
    assert!(matches!(
        tc.process(&[0xff; 80], &mut buf),
        Err(CodecError::FrameLength {
            expected: 160,
            got: 80
        })
    ));
    assert!(matches!(
        tc.process(&[], &mut buf),
        Err(CodecError::EmptyPayload)
    ));
    assert!(matches!(
        tc.process(&[0xff; 160], &mut buf[..100]),
        Err(CodecError::OutputTooSmall { .. })
    ));
    assert!(matches!(
        Transcoder::new(AudioCodec::Pcmu, OPUS, 30),
        Err(CodecError::Ptime { ptime_ms: 30, .. })
    ));
    let mut opus_in = Transcoder::new(OPUS, AudioCodec::Pcmu, PTIME).unwrap();
    assert!(opus_in.process(&[0xff], &mut buf).is_err());
}

fn energy(pcm: &[i16]) -> f64 {
    pcm.iter().map(|&x| f64::from(x).powi(2)).sum()
}

/// Concealment yields frames of the right size whose energy falls towards silence.
#[test]
fn decoder_concealment_sizes_and_decay() {
    for codec in [AudioCodec::Pcmu, AudioCodec::Pcma, AudioCodec::G722, OPUS] {
        let frame = codec.frame_samples(PTIME);
        let payloads = source_payloads(codec, 1000.0);
        let mut dec = codec::decoder(codec).unwrap();
        let mut pcm = Vec::new();
        for p in &payloads[..10] {
            dec.decode(p, &mut pcm).unwrap();
        }
        let good = energy(&pcm);
        let mut energies = Vec::new();
        for _ in 0..8 {
            dec.conceal(&mut pcm, frame);
            assert_eq!(pcm.len(), frame, "{codec:?}");
            energies.push(energy(&pcm));
        }
        assert!(energies[0] > 0.0, "{codec:?}: first concealed frame silent");
        assert!(energies[0] <= good * 1.5, "{codec:?}");
        assert!(
            energies[7] < energies[0] * 0.1,
            "{codec:?}: no decay {energies:?}"
        );
        // Recovery: a good frame decodes at full size again.
        dec.decode(&payloads[10], &mut pcm).unwrap();
        assert_eq!(pcm.len(), frame);
    }
}

#[test]
fn waveform_concealment_is_silent_after_60ms() {
    let mut dec = codec::decoder(AudioCodec::Pcmu).unwrap();
    let mut pcm = Vec::new();
    dec.decode(&[0x10; 160], &mut pcm).unwrap();
    let mut energies = Vec::new();
    for _ in 0..4 {
        dec.conceal(&mut pcm, 160);
        energies.push(energy(&pcm));
    }
    assert!(energies[0] > energies[1] && energies[1] > energies[2]);
    assert_eq!(energies[3], 0.0);
}

#[test]
fn transcoder_concealment_output_sizes() {
    for (from, to, expect) in [
        (AudioCodec::Pcmu, AudioCodec::Pcma, Some(160)),
        (AudioCodec::Pcmu, AudioCodec::G722, Some(160)),
        (AudioCodec::G722, AudioCodec::Pcmu, Some(160)),
        (OPUS, AudioCodec::Pcma, Some(160)),
        (AudioCodec::Pcmu, OPUS, None),
    ] {
        let payloads = source_payloads(from, 1000.0);
        let mut tc = Transcoder::new(from, to, PTIME).unwrap();
        let mut buf = vec![0u8; tc.max_output_bytes()];
        for p in &payloads[..5] {
            tc.process(p, &mut buf).unwrap();
        }
        for _ in 0..5 {
            let n = tc.conceal(&mut buf).unwrap();
            match expect {
                Some(len) => assert_eq!(n, len, "{from:?}->{to:?}"),
                None => assert!(n > 0 && n <= buf.len()),
            }
        }
        assert!(tc.process(&payloads[5], &mut buf).unwrap() > 0);
    }
}

#[test]
fn transcoder_concealment_decays_in_target_codec() {
    let payloads = source_payloads(AudioCodec::Pcmu, 1000.0);
    let mut tc = Transcoder::new(AudioCodec::Pcmu, AudioCodec::Pcma, PTIME).unwrap();
    let mut buf = [0u8; 160];
    for p in &payloads[..5] {
        tc.process(p, &mut buf).unwrap();
    }
    let mut dec = codec::decoder(AudioCodec::Pcma).unwrap();
    let mut pcm = Vec::new();
    let mut energies = Vec::new();
    for _ in 0..4 {
        let n = tc.conceal(&mut buf).unwrap();
        dec.decode(&buf[..n], &mut pcm).unwrap();
        energies.push(energy(&pcm));
    }
    assert!(energies[0] > energies[1] && energies[1] > energies[2]);
    // A-law's smallest code decodes to ±8, so "silent" is tiny, not zero.
    assert!(energies[3] < energies[0] * 1e-3, "{energies:?}");
}

/// The checker itself rejects a wrong tone and a wrong level, so passing means something.
#[test]
fn tone_checker_rejects_wrong_frequency_and_level() {
    let wrong_freq = tone(1200.0, 8_000, 8_000);
    assert!(std::panic::catch_unwind(|| assert_tone("wrong", &wrong_freq, 8_000, 1000.0)).is_err());
    let quiet: Vec<i16> = tone(1000.0, 8_000, 8_000).iter().map(|&s| s / 2).collect();
    assert!(std::panic::catch_unwind(|| assert_tone("quiet", &quiet, 8_000, 1000.0)).is_err());
    let right = tone(1000.0, 8_000, 8_000);
    assert_tone("right", &right, 8_000, 1000.0);
}
