//! Declared representations: what a `Content-Type` (and `Content-Encoding`) makes each
//! peer read, in both directions.
//!
//! The filter decides on bytes it read as UTF-8 JSON (or SSE); a peer that decodes the same
//! bytes by a declared charset, or guesses a type from a prefix, reads something else. So
//! each direction accepts only declarations that leave one reading:
//!
//! * [`request`]: a POST body must be declared `application/json`, UTF-8, unencoded;
//!   equivalent spellings are forwarded as the canonical value (HTTP 415 otherwise).
//! * [`response`]: a governed answer is read the way every MCP client reads it, or not at
//!   all (the answer is then replaced by a JSON-RPC error).

pub mod request;
pub mod response;

pub use request::{check_content_encoding, check_content_type, ContentTypeAction, ContentTypeError, CANONICAL_JSON};
pub use response::{is_identity_encoding, read, BodyType, UnreadableContentType};
