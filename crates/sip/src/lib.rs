//! SIP message syntax for Porchlight (RFC 3261 §7, §20, §25).
//!
//! An I/O-free parser over a shared byte buffer: one pass finds the start
//! line and the header fields, and header values are typed only when read.
//! Any method token is accepted (`BENOTIFY`, `SERVICE`), a header with
//! non-UTF-8 bytes affects only itself, and every size is bounded by
//! [`Limits`]. [`MessageWriter`] builds what Porchlight sends.

mod cursor;
mod header_name;
mod message;
mod method;
mod params;
pub mod status;
mod typed;
mod uri;
mod validate;
mod write;

pub use header_name::HeaderName;
pub use message::{Frame, Framing, HeaderField, Limits, Message, ParseError, ParseErrorKind};
pub use method::Method;
pub use params::Params;
pub use typed::{
    AuthValue, CSeq, Contacts, HeaderError, Items, MediaType, NameAddr, RetryAfter,
    TokenWithParams, Via, Warning, BRANCH_MAGIC_COOKIE,
};
pub use uri::{Host, SipUri, Uri, UriError};
pub use validate::RequestError;
pub use write::{response_to, standard_reason, via_with_received, Answer, MessageWriter};
