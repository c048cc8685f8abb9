//! Switchyard media: SDP offer/answer, RTP/RTCP, codecs. Only `net` does I/O.
