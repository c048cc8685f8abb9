-- The SIP dialog of an answered call (JSON), so a call left live by a crash can be ended
-- with a BYE at start-up instead of staying up at the carrier.
ALTER TABLE calls ADD COLUMN sip_dialog TEXT;
