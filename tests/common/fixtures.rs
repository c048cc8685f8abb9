//! Media fixtures for the end-to-end tests: SIPp scenarios that replay the repository's
//! pcaps, and the tone measure their checks use.

use std::path::{Path, PathBuf};

/// The repository root.
pub fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// A copy of `tests/sipp/<name>` whose repository-relative `pcap-fixtures/` paths are
/// made absolute (SIPp resolves `play_pcap_audio` against its working directory, a
/// tempdir of the harness). Returns the tempdir (keep it alive) and the copy's path.
pub fn scenario_with_fixtures(name: &str) -> (tempfile::TempDir, PathBuf) {
    let text = std::fs::read_to_string(super::sipp::scenario_dir().join(name)).expect("scenario");
    let fixtures = format!("\"{}/pcap-fixtures/", repo().display());
    assert!(text.contains("\"pcap-fixtures/"), "{name} plays no fixture");
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join(name);
    std::fs::write(&path, text.replace("\"pcap-fixtures/", &fixtures)).expect("write scenario");
    (dir, path)
}

/// Goertzel power of `freq` in `x` sampled at `rate` (relative units, comparable within
/// one signal).
pub fn goertzel(x: &[i16], freq: f64, rate: f64) -> f64 {
    let w = 2.0 * std::f64::consts::PI * freq / rate;
    let coeff = 2.0 * w.cos();
    let (mut s1, mut s2) = (0.0f64, 0.0f64);
    for &s in x {
        let s0 = f64::from(s) + coeff * s1 - s2;
        s2 = s1;
        s1 = s0;
    }
    s1 * s1 + s2 * s2 - coeff * s1 * s2
}
