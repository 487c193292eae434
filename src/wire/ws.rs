//! WebSocket framing (RFC 6455) around native frames, sans-IO.
//!
//! Over WebSocket every binary message is exactly one native frame: the
//! same size-prefixed FlatBuffers `Envelope` bytes a TCP connection carries
//! (docs/PROTOCOL.md "WebSocket"). So this layer only takes WebSocket
//! frames apart and puts them together; everything above it (the frame
//! splitter, the verifier, the session) is the native protocol's, unchanged.
//!
//! [`WsIn`] turns received bytes into native frames appended to the
//! connection's [`FrameBuf`], one message at a time and only when asked
//! ([`WsIn::step`]). Stopping at each message boundary keeps the rest of
//! the bytes in WebSocket form, so a connection handed to another shard
//! after login carries [`WsIn::remaining`] and nothing half-decoded.
//! Control frames are answered here (a ping gets its pong in `control`),
//! and a peer that breaks the protocol gets the close code RFC 6455 names
//! for it. Header parsing and formatting are tungstenite's
//! ([`FrameHeader`]); its message layer is not used because it would copy
//! every payload into a message of its own before we copy it into the frame
//! buffer the verifier reads in place.

use super::frame::{FrameBuf, PREFIX};
use std::io::Cursor;
use tungstenite::protocol::frame::FrameHeader;
use tungstenite::protocol::frame::coding::{Control, Data, OpCode};

/// Which end of the connection we are: a server requires masked frames
/// and sends unmasked ones, a client the other way round (RFC 6455 5.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Server,
    Client,
}

/// Close codes used here (RFC 6455 7.4.1).
pub mod code {
    pub const NORMAL: u16 = 1000;
    pub const GOING_AWAY: u16 = 1001;
    pub const PROTOCOL_ERROR: u16 = 1002;
    pub const UNSUPPORTED_DATA: u16 = 1003;
    pub const INVALID_PAYLOAD: u16 = 1007;
    pub const POLICY: u16 = 1008;
    pub const TOO_BIG: u16 = 1009;
    pub const INTERNAL: u16 = 1011;
}

/// Why the stream ends: the code for our Close frame and a reason for it
/// (sent to the peer and logged).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WsClose {
    pub code: u16,
    pub reason: &'static str,
    /// The peer sent a Close frame (ours echoes its code); otherwise the
    /// peer broke the protocol.
    pub by_peer: bool,
}

/// What [`WsIn::step`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// One whole native frame was appended to the frame buffer.
    Frame,
    /// The buffered bytes hold no whole message yet: read more.
    More,
    /// Send a Close frame with this code and end the connection.
    Close(WsClose),
}

fn broken(code: u16, reason: &'static str) -> Step {
    Step::Close(WsClose {
        code,
        reason,
        by_peer: false,
    })
}

/// First byte of a (final) Close frame, for writers that must know
/// whether they already sent one.
pub const CLOSE_BYTE: u8 = 0x88;

/// Largest control payload (RFC 6455 5.5).
const MAX_CONTROL: usize = 125;
/// Longest frame header: 2 + 8 (length) + 4 (mask).
const MAX_HEADER: usize = 14;

/// Received WebSocket bytes, turned into native frames on demand.
pub struct WsIn {
    raw: Vec<u8>,
    start: usize,
    end: usize,
    role: Role,
    /// Largest message: one max native frame, prefix included.
    max_msg: usize,
    /// Bytes of the (fragmented) message being assembled that are already
    /// in the frame buffer.
    partial: usize,
    in_message: bool,
    /// Size of the frame waiting to arrive whole, to grow the buffer once.
    want: usize,
}

impl WsIn {
    /// `max_frame` is the native frame limit (payload, without prefix).
    pub fn new(role: Role, max_frame: usize) -> WsIn {
        WsIn {
            // Lent from `wire::pool` while bytes are in it.
            raw: Vec::new(),
            start: 0,
            end: 0,
            role,
            max_msg: max_frame + PREFIX,
            partial: 0,
            in_message: false,
            want: 0,
        }
    }

    /// Room to read into: at least `min` bytes, more if a frame of known
    /// size is waiting (it is never longer than one max message + header).
    pub fn spare(&mut self, min: usize) -> &mut [u8] {
        if self.raw.is_empty() {
            self.raw = super::pool::take();
        }
        if self.start > 0 {
            self.raw.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        let need = (self.end + min).max(self.want);
        if need > self.raw.len() {
            self.raw.resize(need.next_power_of_two().max(need), 0);
        }
        &mut self.raw[self.end..]
    }

    /// Gives the buffer back once every byte was taken apart (an idle
    /// connection holds none; see `wire::pool`).
    pub fn release_if_idle(&mut self) {
        if self.start == self.end && !self.raw.is_empty() {
            super::pool::give(std::mem::take(&mut self.raw));
            self.start = 0;
            self.end = 0;
        }
    }

    /// Commits `n` bytes written into [`WsIn::spare`].
    pub fn filled(&mut self, n: usize) {
        self.end += n;
    }

    /// Appends bytes (a handed-over remainder, or tests).
    pub fn push(&mut self, bytes: &[u8]) {
        if bytes.is_empty() {
            return; // no buffer for nothing (a hand-off with no remainder)
        }
        let dst = self.spare(bytes.len());
        dst[..bytes.len()].copy_from_slice(bytes);
        self.filled(bytes.len());
    }

    /// Bytes not yet taken apart: what a connection moved to another shard
    /// takes with it (always at a message boundary, see the module docs).
    pub fn remaining(&self) -> &[u8] {
        &self.raw[self.start..self.end]
    }

    /// Takes frames apart until one whole message is in `fbuf` (or more
    /// bytes are needed, or the stream must end). Pongs for pings go to
    /// `control`, already framed for our role.
    pub fn step(&mut self, fbuf: &mut FrameBuf, control: &mut Vec<u8>) -> Step {
        loop {
            let avail = &self.raw[self.start..self.end];
            let mut cur = Cursor::new(avail);
            let (hdr, len) = match FrameHeader::parse(&mut cur) {
                Ok(Some(h)) => h,
                Ok(None) => return Step::More,
                Err(_) => return broken(code::PROTOCOL_ERROR, "invalid frame header"),
            };
            let hlen = cur.position() as usize;
            if hdr.rsv1 || hdr.rsv2 || hdr.rsv3 {
                return broken(code::PROTOCOL_ERROR, "reserved bits set (no extension)");
            }
            match (self.role, hdr.mask.is_some()) {
                (Role::Server, false) => {
                    return broken(code::PROTOCOL_ERROR, "client frames must be masked");
                }
                (Role::Client, true) => {
                    return broken(code::PROTOCOL_ERROR, "server frames must not be masked");
                }
                _ => {}
            }
            let control_frame = matches!(hdr.opcode, OpCode::Control(_));
            if control_frame && (len > MAX_CONTROL as u64 || !hdr.is_final) {
                return broken(
                    code::PROTOCOL_ERROR,
                    "control frames are short and never fragmented",
                );
            }
            if !control_frame && self.partial as u64 + len > self.max_msg as u64 {
                return broken(code::TOO_BIG, "message exceeds the frame limit");
            }
            let len = len as usize;
            if avail.len() < hlen + len {
                self.want = hlen + len;
                return Step::More;
            }
            self.want = 0;
            let from = self.start + hlen;
            self.start = from + len;
            let payload = from..from + len;
            let mask = hdr.mask.unwrap_or([0; 4]);
            match hdr.opcode {
                OpCode::Data(Data::Binary | Data::Continue) => {
                    let first = hdr.opcode == OpCode::Data(Data::Binary);
                    if first == self.in_message {
                        return broken(
                            code::PROTOCOL_ERROR,
                            if first {
                                "new message inside a fragmented one"
                            } else {
                                "continuation outside a message"
                            },
                        );
                    }
                    let dst = fbuf.spare(len);
                    unmask_into(&mut dst[..len], &self.raw[payload], mask);
                    fbuf.filled(len);
                    self.partial += len;
                    self.in_message = !hdr.is_final;
                    if hdr.is_final {
                        let n = std::mem::take(&mut self.partial);
                        return self.finish(fbuf, n);
                    }
                }
                OpCode::Data(Data::Text) => {
                    return broken(
                        code::UNSUPPORTED_DATA,
                        "text messages are not supported: send binary frames",
                    );
                }
                OpCode::Control(Control::Ping) => {
                    let mut body = [0u8; MAX_CONTROL];
                    unmask_into(&mut body[..len], &self.raw[payload], mask);
                    encode(
                        self.role,
                        OpCode::Control(Control::Pong),
                        &body[..len],
                        control,
                    );
                }
                OpCode::Control(Control::Pong) => {}
                OpCode::Control(Control::Close) => {
                    let mut body = [0u8; MAX_CONTROL];
                    unmask_into(&mut body[..len], &self.raw[payload], mask);
                    return Step::Close(peer_close(&body[..len]));
                }
                // Reserved opcodes fail in FrameHeader::parse.
                OpCode::Data(Data::Reserved(_)) | OpCode::Control(Control::Reserved(_)) => {
                    return broken(code::PROTOCOL_ERROR, "reserved opcode");
                }
            }
        }
    }

    /// A message is complete: it must be exactly one native frame.
    fn finish(&self, fbuf: &FrameBuf, n: usize) -> Step {
        let pending = fbuf.pending();
        let msg = &pending[pending.len() - n..];
        let ok = msg.len() > PREFIX
            && u32::from_le_bytes([msg[0], msg[1], msg[2], msg[3]]) as usize == msg.len() - PREFIX;
        if ok {
            Step::Frame
        } else {
            broken(
                code::INVALID_PAYLOAD,
                "a binary message must be one size-prefixed FlatBuffers frame",
            )
        }
    }
}

/// The answer to a peer's Close frame: its code echoed, if it is one a
/// peer may send.
fn peer_close(body: &[u8]) -> WsClose {
    let by_peer = |code| WsClose {
        code,
        reason: "closed by peer",
        by_peer: true,
    };
    match body {
        [] => by_peer(code::NORMAL),
        [_] => broken_close(code::PROTOCOL_ERROR, "close frame of one byte"),
        [a, b, rest @ ..] => {
            let c = u16::from_be_bytes([*a, *b]);
            let valid = matches!(c, 1000..=1003 | 1007..=1014 | 3000..=4999);
            if !valid {
                broken_close(code::PROTOCOL_ERROR, "invalid close code")
            } else if std::str::from_utf8(rest).is_err() {
                broken_close(code::INVALID_PAYLOAD, "close reason is not UTF-8")
            } else {
                by_peer(c)
            }
        }
    }
}

fn broken_close(code: u16, reason: &'static str) -> WsClose {
    WsClose {
        code,
        reason,
        by_peer: false,
    }
}

fn unmask_into(dst: &mut [u8], src: &[u8], mask: [u8; 4]) {
    for (i, (d, s)) in dst.iter_mut().zip(src).enumerate() {
        *d = s ^ mask[i & 3];
    }
}

/// Appends one whole frame of `opcode` with `payload`, framed for `role`
/// (a client masks with a fresh random key, as RFC 6455 requires).
pub fn encode(role: Role, opcode: OpCode, payload: &[u8], out: &mut Vec<u8>) {
    let mask = (role == Role::Client).then(rand::random::<[u8; 4]>);
    let hdr = FrameHeader {
        is_final: true,
        rsv1: false,
        rsv2: false,
        rsv3: false,
        opcode,
        mask,
    };
    out.reserve(MAX_HEADER + payload.len());
    // Writing into a Vec cannot fail.
    let _ = hdr.format(payload.len() as u64, out);
    match mask {
        None => out.extend_from_slice(payload),
        Some(m) => {
            let at = out.len();
            out.resize(at + payload.len(), 0);
            unmask_into(&mut out[at..], payload, m);
        }
    }
}

/// Appends one binary message carrying `frame` (a native frame).
pub fn encode_binary(role: Role, frame: &[u8], out: &mut Vec<u8>) {
    encode(role, OpCode::Data(Data::Binary), frame, out);
}

/// A Close frame with `code` and `reason` (cut to fit a control frame).
pub fn close_frame(role: Role, code: u16, reason: &str) -> Vec<u8> {
    let mut body = code.to_be_bytes().to_vec();
    let mut cut = reason.len().min(MAX_CONTROL - 2);
    while !reason.is_char_boundary(cut) {
        cut -= 1;
    }
    body.extend_from_slice(&reason.as_bytes()[..cut]);
    let mut out = Vec::new();
    encode(role, OpCode::Control(Control::Close), &body, &mut out);
    out
}

/// The client half of the upgrade, sans-IO: a fresh `Sec-WebSocket-Key`.
pub fn new_key() -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(rand::random::<[u8; 16]>())
}

/// The upgrade request for the native protocol's endpoint (`GET /ws`).
pub fn upgrade_request(host: &str, key: &str) -> String {
    format!(
        "GET /ws HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {key}\r\n\r\n"
    )
}

/// Checks the server's answer to [`upgrade_request`] with `key`:
/// `Ok(None)` while the response head is incomplete, `Ok(Some(n))` for a
/// 101 with the right `Sec-WebSocket-Accept` (the head used `n` bytes; what
/// follows is already frames), else why the upgrade failed.
pub fn upgrade_response(buf: &[u8], key: &str) -> Result<Option<usize>, String> {
    let mut headers = [httparse::EMPTY_HEADER; 16];
    let mut resp = httparse::Response::new(&mut headers);
    match resp.parse(buf) {
        Ok(httparse::Status::Complete(used)) => {
            let accept = resp
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case("sec-websocket-accept"))
                .map(|h| h.value);
            let want = tungstenite::handshake::derive_accept_key(key.as_bytes());
            if resp.code == Some(101) && accept == Some(want.as_bytes()) {
                Ok(Some(used))
            } else {
                let head = String::from_utf8_lossy(&buf[..used]).into_owned();
                Err(format!("WebSocket upgrade refused: {head}"))
            }
        }
        Ok(httparse::Status::Partial) if buf.len() < 16 << 10 => Ok(None),
        _ => Err("bad WebSocket upgrade response".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn native(payload: &[u8]) -> Vec<u8> {
        let mut v = (payload.len() as u32).to_le_bytes().to_vec();
        v.extend_from_slice(payload);
        v
    }

    /// A client's masked frame with explicit FIN and opcode bits.
    fn client_frame(fin: bool, op: u8, payload: &[u8]) -> Vec<u8> {
        let mask = [0x11, 0x22, 0x33, 0x44];
        let mut out = vec![(if fin { 0x80 } else { 0 }) | op];
        match payload.len() {
            n if n < 126 => out.push(0x80 | n as u8),
            n if n < 65536 => {
                out.push(0x80 | 126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                out.push(0x80 | 127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        out.extend_from_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i & 3]));
        out
    }

    fn frames(fb: &mut FrameBuf) -> Vec<Vec<u8>> {
        let mut v = vec![];
        while let Some(r) = fb.next_frame().unwrap() {
            v.push(fb.get(r).to_vec());
        }
        v
    }

    #[test]
    fn every_split_point_yields_the_same_frames() {
        let msgs: Vec<Vec<u8>> = [1usize, 7, 125, 126, 300, 70_000]
            .iter()
            .map(|&n| native(&vec![n as u8; n]))
            .collect();
        let mut stream = Vec::new();
        for m in &msgs {
            stream.extend(client_frame(true, 2, m));
        }
        for chunk in [1usize, 2, 3, 7, 64, 4096, stream.len()] {
            let mut ws = WsIn::new(Role::Server, 100_000);
            let mut fb = FrameBuf::new(100_000);
            let mut ctl = Vec::new();
            let mut got = vec![];
            for piece in stream.chunks(chunk) {
                ws.push(piece);
                while ws.step(&mut fb, &mut ctl) == Step::Frame {
                    got.extend(frames(&mut fb));
                }
            }
            assert_eq!(got, msgs, "chunk size {chunk}");
            assert!(ws.remaining().is_empty() && ctl.is_empty());
        }
    }

    #[test]
    fn fragments_with_a_ping_between_them_make_one_frame_and_a_pong() {
        let m = native(b"hello fragmented world");
        let mut ws = WsIn::new(Role::Server, 1024);
        let mut fb = FrameBuf::new(1024);
        let mut ctl = Vec::new();
        ws.push(&client_frame(false, 2, &m[..5]));
        ws.push(&client_frame(true, 9, b"are you there"));
        ws.push(&client_frame(false, 0, &m[5..9]));
        ws.push(&client_frame(true, 0, &m[9..]));
        assert_eq!(ws.step(&mut fb, &mut ctl), Step::Frame);
        assert_eq!(frames(&mut fb), vec![m]);
        // The pong: unmasked (server role), same payload.
        assert_eq!(ctl[0], 0x8A);
        assert_eq!(ctl[1] as usize, 13);
        assert_eq!(&ctl[2..], b"are you there");
    }

    #[test]
    fn stops_at_each_message_so_the_rest_can_travel() {
        let (a, b) = (native(b"login"), native(b"pipelined send"));
        let second = client_frame(true, 2, &b);
        let mut ws = WsIn::new(Role::Server, 1024);
        ws.push(&client_frame(true, 2, &a));
        ws.push(&second[..3]);
        let mut fb = FrameBuf::new(1024);
        assert_eq!(ws.step(&mut fb, &mut Vec::new()), Step::Frame);
        assert_eq!(frames(&mut fb), vec![a]);
        // The second message, half arrived, is still WebSocket bytes.
        assert_eq!(ws.remaining(), &second[..3]);
    }

    #[test]
    fn protocol_breaches_get_their_close_codes() {
        let m = native(b"x");
        let unmasked = {
            let mut v = vec![0x82, m.len() as u8];
            v.extend_from_slice(&m);
            v
        };
        let mut wrong_prefix = native(b"abc");
        wrong_prefix[0] = 9;
        let cases: Vec<(Vec<u8>, u16)> = vec![
            (client_frame(true, 1, b"text"), code::UNSUPPORTED_DATA),
            (unmasked, code::PROTOCOL_ERROR),
            (client_frame(true, 0, &m), code::PROTOCOL_ERROR),
            (client_frame(true, 0x42, &m), code::PROTOCOL_ERROR),
            (client_frame(true, 3, &m), code::PROTOCOL_ERROR),
            (client_frame(false, 9, b"p"), code::PROTOCOL_ERROR),
            (client_frame(true, 9, &[0; 126]), code::PROTOCOL_ERROR),
            (client_frame(true, 2, &wrong_prefix), code::INVALID_PAYLOAD),
            (client_frame(true, 2, &native(&[0; 200])), code::TOO_BIG),
            (client_frame(true, 8, &[0x03]), code::PROTOCOL_ERROR),
            (
                client_frame(true, 8, &999u16.to_be_bytes()),
                code::PROTOCOL_ERROR,
            ),
        ];
        for (bytes, want) in cases {
            let mut ws = WsIn::new(Role::Server, 100);
            ws.push(&bytes);
            match ws.step(&mut FrameBuf::new(100), &mut Vec::new()) {
                Step::Close(c) => assert_eq!((c.code, c.by_peer), (want, false), "{bytes:02x?}"),
                s => panic!("{bytes:02x?}: {s:?}"),
            }
        }
        // A new message inside a fragmented one.
        let mut ws = WsIn::new(Role::Server, 100);
        ws.push(&client_frame(false, 2, &m[..2]));
        ws.push(&client_frame(true, 2, &m));
        assert!(matches!(
            ws.step(&mut FrameBuf::new(100), &mut Vec::new()),
            Step::Close(WsClose {
                code: code::PROTOCOL_ERROR,
                ..
            })
        ));
    }

    #[test]
    fn an_oversized_message_is_refused_before_it_is_buffered() {
        // Only the header of a 1 GiB frame arrives: refused at once.
        let mut ws = WsIn::new(Role::Server, 1 << 16);
        let mut h = vec![0x82, 0x80 | 127];
        h.extend_from_slice(&(1u64 << 30).to_be_bytes());
        h.extend_from_slice(&[1, 2, 3, 4]);
        ws.push(&h);
        let s = ws.step(&mut FrameBuf::new(1 << 16), &mut Vec::new());
        assert!(matches!(
            s,
            Step::Close(WsClose {
                code: code::TOO_BIG,
                ..
            })
        ));
        // Fragments adding up past the limit, too.
        let mut ws = WsIn::new(Role::Server, 100);
        for _ in 0..3 {
            ws.push(&client_frame(
                false,
                if ws.remaining().is_empty() { 2 } else { 0 },
                &[0; 50],
            ));
        }
        let s = ws.step(&mut FrameBuf::new(100), &mut Vec::new());
        assert!(matches!(
            s,
            Step::Close(WsClose {
                code: code::TOO_BIG,
                ..
            })
        ));
    }

    #[test]
    fn the_upgrade_response_must_carry_the_accept_for_our_key() {
        let key = "dGhlIHNhbXBsZSBub25jZQ==";
        let ok = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
            Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n\x82";
        assert_eq!(upgrade_response(ok, key), Ok(Some(ok.len() - 1)));
        assert_eq!(upgrade_response(&ok[..20], key), Ok(None));
        assert!(
            upgrade_response(ok, &new_key()).is_err(),
            "another key's accept"
        );
        let refused = b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n";
        assert!(upgrade_response(refused, key).is_err());
        assert!(upgrade_request("h:1", key).contains("Sec-WebSocket-Key: dGhl"));
    }

    #[test]
    fn peer_close_is_echoed() {
        let mut ws = WsIn::new(Role::Server, 100);
        let mut body = 1001u16.to_be_bytes().to_vec();
        body.extend_from_slice(b"tab closed");
        ws.push(&client_frame(true, 8, &body));
        assert_eq!(
            ws.step(&mut FrameBuf::new(100), &mut Vec::new()),
            Step::Close(WsClose {
                code: 1001,
                reason: "closed by peer",
                by_peer: true
            })
        );
    }

    #[test]
    fn what_a_client_encodes_a_server_decodes() {
        let m = native(&[7; 1000]);
        let mut bytes = Vec::new();
        encode_binary(Role::Client, &m, &mut bytes);
        assert_ne!(&bytes[bytes.len() - 1000..], &m[4..], "masked on the wire");
        let mut ws = WsIn::new(Role::Server, 2000);
        ws.push(&bytes);
        let mut fb = FrameBuf::new(2000);
        assert_eq!(ws.step(&mut fb, &mut Vec::new()), Step::Frame);
        assert_eq!(frames(&mut fb), vec![m.clone()]);
        // And the other way round.
        let mut bytes = Vec::new();
        encode_binary(Role::Server, &m, &mut bytes);
        let mut ws = WsIn::new(Role::Client, 2000);
        ws.push(&bytes);
        assert_eq!(ws.step(&mut fb, &mut Vec::new()), Step::Frame);
        assert_eq!(frames(&mut fb), vec![m]);
        // A long reason is cut at a character boundary to fit.
        let c = close_frame(Role::Server, 1000, &"é".repeat(100));
        assert!(c.len() <= 2 + MAX_CONTROL);
        assert!(std::str::from_utf8(&c[4..]).is_ok());
    }
}
