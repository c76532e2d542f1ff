//! Status codes by name (RFC 3261 §21 and the extensions Porchlight
//! answers with), so an answer says what it means where it is written.

/// 100 Trying.
pub const TRYING: u16 = 100;
/// 180 Ringing.
pub const RINGING: u16 = 180;
/// 200 OK.
pub const OK: u16 = 200;
/// 202 Accepted.
pub const ACCEPTED: u16 = 202;
/// 400 Bad Request.
pub const BAD_REQUEST: u16 = 400;
/// 401 Unauthorized.
pub const UNAUTHORIZED: u16 = 401;
/// 403 Forbidden.
pub const FORBIDDEN: u16 = 403;
/// 404 Not Found.
pub const NOT_FOUND: u16 = 404;
/// 406 Not Acceptable.
pub const NOT_ACCEPTABLE: u16 = 406;
/// 408 Request Timeout.
pub const REQUEST_TIMEOUT: u16 = 408;
/// 409 Conflict.
pub const CONFLICT: u16 = 409;
/// 412 Conditional Request Failed (RFC 3903).
pub const CONDITIONAL_REQUEST_FAILED: u16 = 412;
/// 415 Unsupported Media Type.
pub const UNSUPPORTED_MEDIA_TYPE: u16 = 415;
/// 416 Unsupported URI Scheme.
pub const UNSUPPORTED_URI_SCHEME: u16 = 416;
/// 420 Bad Extension.
pub const BAD_EXTENSION: u16 = 420;
/// 423 Interval Too Brief.
pub const INTERVAL_TOO_BRIEF: u16 = 423;
/// 480 Temporarily Unavailable.
pub const TEMPORARILY_UNAVAILABLE: u16 = 480;
/// 481 Call/Transaction Does Not Exist.
pub const CALL_DOES_NOT_EXIST: u16 = 481;
/// 483 Too Many Hops.
pub const TOO_MANY_HOPS: u16 = 483;
/// 486 Busy Here.
pub const BUSY_HERE: u16 = 486;
/// 487 Request Terminated.
pub const REQUEST_TERMINATED: u16 = 487;
/// 489 Bad Event (RFC 6665).
pub const BAD_EVENT: u16 = 489;
/// 500 Server Internal Error.
pub const SERVER_INTERNAL_ERROR: u16 = 500;
/// 501 Not Implemented.
pub const NOT_IMPLEMENTED: u16 = 501;
/// 503 Service Unavailable.
pub const SERVICE_UNAVAILABLE: u16 = 503;
/// 505 Version Not Supported.
pub const VERSION_NOT_SUPPORTED: u16 = 505;
/// 513 Message Too Large.
pub const MESSAGE_TOO_LARGE: u16 = 513;
