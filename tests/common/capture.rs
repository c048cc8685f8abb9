//! Packets on the loopback interface, captured by `tcpdump` (a real capture, not a
//! socket of the test's): what a peer that owns its media socket (SIPp) received.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// A running `tcpdump -i lo` writing to a file.
pub struct Capture {
    child: Child,
    file: PathBuf,
    _dir: tempfile::TempDir,
}

/// One captured UDP datagram.
#[derive(Debug, Clone)]
pub struct Datagram {
    pub src_port: u16,
    pub dst_port: u16,
    pub payload: Vec<u8>,
}

impl Capture {
    /// Starts capturing UDP on `lo` matching `filter` (a pcap filter expression) and
    /// returns once tcpdump says it is listening.
    pub async fn start(filter: &str) -> Capture {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("capture.pcap");
        // -U and --immediate-mode: every packet written as it arrives (not held for a
        // block of the capture ring), so what came just before `finish` is in the file;
        // -Z root: keep the right to write the file.
        let mut child = Command::new("tcpdump")
            .args([
                "-i",
                "lo",
                "-n",
                "-U",
                "--immediate-mode",
                "-s",
                "0",
                "-Z",
                "root",
                "-w",
            ])
            .arg(&file)
            .arg(filter)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn tcpdump");
        let stderr = child.stderr.take().expect("tcpdump stderr");
        let mut lines = BufReader::new(stderr).lines();
        let ready = tokio::time::timeout(Duration::from_secs(10), async {
            while let Ok(Some(line)) = lines.next_line().await {
                if line.contains("listening on") {
                    return true;
                }
            }
            false
        })
        .await;
        assert_eq!(ready, Ok(true), "tcpdump did not start listening");
        // Keep draining stderr so tcpdump never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Capture {
            child,
            file,
            _dir: dir,
        }
    }

    /// Stops the capture (SIGINT, so tcpdump flushes and closes the file) and returns
    /// the UDP datagrams captured, in order.
    pub async fn finish(mut self) -> Vec<Datagram> {
        let pid = self.child.id().expect("tcpdump running");
        let status = Command::new("kill")
            .args(["-INT", &pid.to_string()])
            .status()
            .await
            .expect("kill -INT");
        assert!(status.success(), "kill -INT {pid}");
        tokio::time::timeout(Duration::from_secs(10), self.child.wait())
            .await
            .expect("tcpdump exits on SIGINT")
            .expect("wait tcpdump");
        let data = std::fs::read(&self.file).expect("read capture");
        parse_pcap(&data)
    }
}

/// UDP datagrams of a classic pcap of IPv4 over Ethernet (`lo` is DLT_EN10MB); anything
/// else is skipped.
pub fn parse_pcap(data: &[u8]) -> Vec<Datagram> {
    let mut out = Vec::new();
    let Some(magic) = data.get(..4) else {
        return out;
    };
    let le = match magic {
        [0xd4, 0xc3, 0xb2, 0xa1] | [0x4d, 0x3c, 0xb2, 0xa1] => true,
        [0xa1, 0xb2, 0xc3, 0xd4] | [0xa1, 0xb2, 0x3c, 0x4d] => false,
        _ => panic!("not a pcap file"),
    };
    let u32_at = |at: usize| -> Option<u32> {
        let b: [u8; 4] = data.get(at..at + 4)?.try_into().ok()?;
        Some(if le {
            u32::from_le_bytes(b)
        } else {
            u32::from_be_bytes(b)
        })
    };
    let mut at = 24;
    while let Some(incl) = u32_at(at + 8) {
        let incl = incl as usize;
        let Some(frame) = data.get(at + 16..at + 16 + incl) else {
            break;
        };
        at += 16 + incl;
        // Ethernet II, IPv4, UDP.
        if frame.get(12..14) != Some(&[0x08, 0x00][..]) {
            continue;
        }
        let ip = &frame[14..];
        let (Some(&vihl), Some(&proto)) = (ip.first(), ip.get(9)) else {
            continue;
        };
        let ihl = usize::from(vihl & 0x0f) * 4;
        if vihl >> 4 != 4 || proto != 17 {
            continue;
        }
        let Some(udp) = ip.get(ihl..) else {
            continue;
        };
        let (Some(ports), Some(payload)) = (udp.get(..4), udp.get(8..)) else {
            continue;
        };
        out.push(Datagram {
            src_port: u16::from_be_bytes([ports[0], ports[1]]),
            dst_port: u16::from_be_bytes([ports[2], ports[3]]),
            payload: payload.to_vec(),
        });
    }
    out
}
