//! What a client's bytes go through before herald's handlers see them, as a
//! socket would: an Engine.IO polling body (packets split on `\x1e`) or a
//! run of WebSocket frames, each Engine.IO packet, the Socket.IO packet in
//! it (with its binary attachments, through the same parser state), and for
//! an event, the decoding of its first argument into herald's `subscribe`
//! request. Nothing may panic; every refusal must say something.
#![no_main]

use bytes::Bytes;
use engineioxide_core::{Packet as EioPacket, ProtocolVersion, payload};
use futures_util::{FutureExt, StreamExt};
use herald::protocol::SessionRequest;
use libfuzzer_sys::fuzz_target;
use socketioxide_core::{
    Str,
    packet::PacketData,
    parser::{Parse, ParseConfig, ParseError, ParserState},
};
use socketioxide_parser_common::CommonParser;

/// herald's default `MAX_PAYLOAD_BYTES`, which bounds a polling body.
const MAX_PAYLOAD: u64 = 1_048_576;

fuzz_target!(|data: &[u8]| {
    let Some((mode, rest)) = data.split_first() else {
        return;
    };
    let packets = if mode % 2 == 0 {
        polling_body(rest)
    } else {
        websocket_frames(rest)
    };
    // One socket's parser state: attachments complete the packet before them.
    let state = ParserState::default();
    let config = ParseConfig::default();
    for packet in packets {
        let decoded = match packet {
            EioPacket::Message(text) => CommonParser.decode_str(&config, &state, text),
            EioPacket::Binary(bin) => CommonParser.decode_bin(&config, &state, bin),
            _ => continue,
        };
        match decoded {
            Ok(packet) => dispatch(packet.inner),
            Err(ParseError::NeedsMoreBinaryData) => {}
            Err(e) => assert!(!e.to_string().is_empty()),
        }
    }
});

/// A polling `POST` body, decoded as engineioxide decodes it.
fn polling_body(body: &[u8]) -> Vec<EioPacket> {
    let body = http_body_util::Full::new(Bytes::copy_from_slice(body));
    let decoded = payload::decoder(body, None, ProtocolVersion::V4, MAX_PAYLOAD)
        .collect::<Vec<_>>()
        .now_or_never()
        .expect("a body held in memory decodes at once");
    decoded.into_iter().filter_map(Result::ok).collect()
}

/// WebSocket frames, split on `\x1e`: a frame that starts with a zero byte is
/// binary (the rest of it), any other is text, which must be UTF-8 (the
/// WebSocket layer refuses a text frame that is not).
fn websocket_frames(frames: &[u8]) -> Vec<EioPacket> {
    frames
        .split(|b| *b == 0x1e)
        .filter_map(|frame| match frame.split_first() {
            Some((0, bin)) => Some(EioPacket::Binary(Bytes::copy_from_slice(bin))),
            _ => {
                let text = std::str::from_utf8(frame).ok()?;
                EioPacket::parse(ProtocolVersion::V4, Str::from(text.to_string())).ok()
            }
        })
        .collect()
}

/// What socketioxide and herald do with a whole packet: the handshake's
/// `auth`, or an event's name and its first argument as a `subscribe`.
fn dispatch(packet: PacketData) {
    match packet {
        PacketData::Connect(Some(auth)) => {
            let _ = CommonParser.decode_default::<serde_json::Value>(Some(&auth));
        }
        PacketData::Event(mut value, _) | PacketData::BinaryEvent(mut value, _) => {
            if CommonParser.read_event(&value).is_err() {
                return;
            }
            let payload = CommonParser.decode_value::<serde_json::Value>(&mut value, true);
            if let Err(refusal) = SessionRequest::parse(payload.ok().as_ref()) {
                assert!(!refusal.to_string().is_empty());
            }
        }
        _ => {}
    }
}
