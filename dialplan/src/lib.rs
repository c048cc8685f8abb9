//! Switchyard dialplan: E.164 normalisation and routing decisions. Pure: no I/O, no clock.
