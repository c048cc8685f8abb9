-- Media statistics of the call's leg: loss, jitter (ms) and an estimated MOS.
ALTER TABLE calls ADD COLUMN rtp_packets_lost BIGINT NOT NULL DEFAULT 0;
ALTER TABLE calls ADD COLUMN rtp_jitter_ms DOUBLE PRECISION;
ALTER TABLE calls ADD COLUMN mos DOUBLE PRECISION;
