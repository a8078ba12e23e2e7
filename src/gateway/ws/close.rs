//! Which close code ends a connection whose client broke the WebSocket protocol (RFC 6455
//! §7.4.1): a text frame that is not UTF-8 is 1007, a frame or message over
//! `max_frame_bytes` is 1009, anything else the framing forbids (a reserved opcode, an
//! unmasked frame, a bad control frame, a continuation out of place) is 1002. A connection
//! that failed underneath (an I/O error) gets 1011.

use std::io::ErrorKind;

use actix_ws::{CloseCode, CloseReason, ProtocolError};

/// actix-ws's error for an aggregated message over its size limit (an `Io` error of kind
/// `Other` with this text).
const CONTINUATION_TOO_LARGE: &str = "Exceeded maximum continuation size";

/// The close frame for a protocol error.
pub(super) fn close_reason(e: &ProtocolError) -> CloseReason {
    let (code, text) = match e {
        ProtocolError::Overflow => (
            CloseCode::Size,
            "frame too large (payload_too_large)".into(),
        ),
        ProtocolError::Io(io) if io.to_string().contains(CONTINUATION_TOO_LARGE) => (
            CloseCode::Size,
            "message too large (payload_too_large)".into(),
        ),
        ProtocolError::Io(io) if io.kind() == ErrorKind::InvalidData => {
            (CloseCode::Invalid, "a text frame that is not UTF-8".into())
        }
        ProtocolError::Io(io) => (CloseCode::Error, format!("connection error: {io}")),
        other => (CloseCode::Protocol, format!("protocol error: {other}")),
    };
    CloseReason {
        code,
        description: Some(text),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(e: ProtocolError) -> u16 {
        close_reason(&e).code.into()
    }

    #[test]
    fn each_violation_has_its_rfc_code() {
        assert_eq!(code(ProtocolError::Overflow), 1009);
        assert_eq!(
            code(ProtocolError::Io(std::io::Error::other(
                CONTINUATION_TOO_LARGE
            ))),
            1009
        );
        assert_eq!(
            code(ProtocolError::Io(std::io::Error::new(
                ErrorKind::InvalidData,
                "invalid utf-8 sequence"
            ))),
            1007
        );
        assert_eq!(code(ProtocolError::BadOpCode), 1002);
        assert_eq!(code(ProtocolError::InvalidOpcode(3)), 1002);
        assert_eq!(code(ProtocolError::UnmaskedFrame), 1002);
        assert_eq!(code(ProtocolError::ContinuationNotStarted), 1002);
        assert_eq!(code(ProtocolError::InvalidLength(200)), 1002);
        assert_eq!(
            code(ProtocolError::Io(std::io::Error::other("reset"))),
            1011
        );
    }
}
