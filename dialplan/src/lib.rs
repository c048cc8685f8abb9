//! Switchyard dialplan: number normalisation and routing decisions.
//!
//! Pure: no I/O, no clock. The switch asks "given this call attempt, where does it go?"
//! and gets a value back. Inbound routing rules arrive with the inbound-calls work; for
//! outbound calls the plan picks the trunk that owns the caller id.

pub mod e164;
pub mod outbound;
pub mod plan;
