//! The transcoding bridge over real loopback UDP plays reordered packets out in order,
//! on its own 20 ms clock, through the relay's jitter buffer.
//! Waits are on datagrams; timeouts only guard. The sender is paced by a tokio interval
//! (it plays the far end's 20 ms media clock).
#![cfg(feature = "net")]
#![allow(clippy::unwrap_used)]
#![allow(clippy::disallowed_methods)] // real sockets: the wall clock is what the bridge sees

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use media::codec::{self, AudioCodec};
use media::g711;
use media::net::PortPool;
use media::net::bridge::Bridge;
use media::relay::{RelayConfig, Side, SideParams, TranscodeJitter};
use media::rtp::{RtpHeader, RtpView, write_packet};
use rand::SeedableRng;
use rand::rngs::StdRng;
use tokio::net::UdpSocket;
use tokio::time::timeout;

const GUARD: Duration = Duration::from_secs(5);
const LO: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

fn params(remote: SocketAddr, codec: AudioCodec, pt: u8) -> SideParams {
    SideParams {
        remote: Some(remote),
        codec,
        pt,
        clock_rate: codec.rtp_clock_rate(),
        dtmf_pt: None,
    }
}

/// Levels 600 apart: G.711 quantisation (at most 256 each way here) keeps them apart.
fn level(i: usize) -> i16 {
    (600 + 600 * (i % 10)) as i16
}

fn level_frame(i: usize) -> Vec<u8> {
    let mut out = vec![0u8; 160];
    g711::encode_ulaw(&[level(i); 160], &mut out);
    out
}

/// Which level a decoded frame carries; `None` for concealment (it fades: not flat).
fn frame_id(pcm: &[i16]) -> Option<usize> {
    let (lo, hi) = (pcm.iter().min()?, pcm.iter().max()?);
    if hi - lo > 300 {
        return None;
    }
    let mean = pcm.iter().map(|&v| f64::from(v)).sum::<f64>() / pcm.len() as f64;
    (0..10).find(|&k| (mean - f64::from(level(k))).abs() < 290.0)
}

#[tokio::test]
async fn reordered_packets_leave_a_transcoding_bridge_in_order() {
    let pool = PortPool::with_rng(43000, 43019, StdRng::seed_from_u64(43000)).unwrap();
    let caller = UdpSocket::bind((LO, 0)).await.unwrap();
    let callee = UdpSocket::bind((LO, 0)).await.unwrap();
    let config = RelayConfig {
        // Deep enough that a loaded test machine's scheduling does not make packets late.
        transcode_jitter: Some(TranscodeJitter {
            min_delay_ms: 80,
            max_delay_ms: 200,
        }),
        ..RelayConfig::default()
    };
    let bridge = Bridge::open(
        &pool,
        LO,
        params(caller.local_addr().unwrap(), AudioCodec::Pcmu, 0),
        params(callee.local_addr().unwrap(), AudioCodec::Pcma, 8),
        config,
    )
    .unwrap();
    let a = bridge.local_addr(Side::A);

    const FRAMES: usize = 20;
    let send = async {
        let mut tick = tokio::time::interval(Duration::from_millis(20));
        let mut buf = [0u8; 200];
        // Frame 6 overtakes frame 5; both leave at frame 5's time.
        let order = (0..FRAMES).map(|i| match i {
            5 => vec![6, 5],
            6 => vec![],
            _ => vec![i],
        });
        for frames in order {
            tick.tick().await;
            for i in frames {
                let h = RtpHeader {
                    marker: false,
                    pt: 0,
                    seq: 1000 + i as u16,
                    timestamp: 160 * i as u32,
                    ssrc: 0xCA11,
                };
                let n = write_packet(&mut buf, &h, &level_frame(i)).unwrap();
                caller.send_to(&buf[..n], a).await.unwrap();
            }
        }
    };
    let receive = async {
        let mut dec = codec::decoder(AudioCodec::Pcma).unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 1500];
        // Until as many frames came out as went in (or fewer and some concealment).
        while got.len() < FRAMES {
            let (n, _) = timeout(GUARD, callee.recv_from(&mut buf))
                .await
                .expect("timed out waiting for RTP")
                .unwrap();
            let v = RtpView::parse(&buf[..n]).unwrap();
            assert_eq!(v.pt(), 8);
            let mut pcm = Vec::new();
            dec.decode(v.payload(), &mut pcm).unwrap();
            got.push((v.seq(), frame_id(&pcm)));
        }
        got
    };
    let ((), got) = tokio::join!(send, receive);
    for w in got.windows(2) {
        assert_eq!(
            w[1].0,
            w[0].0.wrapping_add(1),
            "consecutive numbers: {got:?}"
        );
    }
    let ids: Vec<usize> = got
        .iter()
        .map(|g| g.1.expect("no frame concealed"))
        .collect();
    let want: Vec<usize> = (0..FRAMES).map(|i| i % 10).collect();
    assert_eq!(ids, want, "every frame, in order");

    let [ca, _] = bridge.close().await;
    assert_eq!(ca.transcoded_packets, FRAMES as u64);
    assert_eq!(ca.transcode_errors, 0);
    assert!(ca.sent_packets >= FRAMES as u64);
}
