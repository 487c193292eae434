//! The HTTP side of the WebSocket listener (`--ws-listen`), sans-IO: one
//! request in, one answer out.
//!
//! - `GET /ws` with `Upgrade: websocket` becomes a WebSocket connection
//!   speaking the native protocol (`wire::ws` frames it; `server::conn`
//!   runs it as a native session, so every limit, timeout and rule is the
//!   TCP one).
//! - Any other `GET`/`HEAD` is a file of the web client, embedded at build
//!   time from `web/dist` (so the binary serves its own client and
//!   `cargo build` needs no Node; see docs/WEB.md), answered with
//!   `Connection: close`.
//! - Browsers send `Origin`; a page of another site must not be able to use
//!   a visitor's browser to talk to us (cross-site WebSocket hijacking), so
//!   an upgrade with an Origin that is neither this server's own address
//!   (as the `Host` header names it) nor listed in `--ws-allowed-origin` is
//!   refused with 403. Non-browser clients send no Origin and are let in:
//!   they could forge one anyway.
//!
//! The handshake key check is tungstenite's (`derive_accept_key`), the
//! request parsing httparse's.

use include_dir::{Dir, include_dir};

/// The web client (`web/dist`), compiled into the binary.
static WEB: Dir<'static> = include_dir!("$CARGO_MANIFEST_DIR/web/dist");

/// Largest request head accepted (browsers send well under 2 KiB).
pub const MAX_REQUEST: usize = 8 << 10;
/// The WebSocket endpoint's path.
pub const WS_PATH: &str = "/ws";

/// Who may open a WebSocket from a browser page.
#[derive(Debug, Clone, Default)]
pub struct WsOptions {
    /// Origins allowed besides the server's own (`scheme://host[:port]`,
    /// compared without case); `*` allows every origin.
    pub allowed_origins: Vec<String>,
}

/// What to do with the bytes of a request head received so far.
#[derive(Debug, PartialEq, Eq)]
pub enum Http {
    /// The head is not complete: read more.
    Incomplete,
    /// Switch to WebSocket: write `response`; the request used `consumed`
    /// bytes, anything after them is already WebSocket frames.
    Upgrade { response: Vec<u8>, consumed: usize },
    /// Write this and close.
    Respond(Vec<u8>),
}

fn header<'a>(req: &httparse::Request<'_, 'a>, name: &str) -> Option<&'a str> {
    req.headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case(name))
        .and_then(|h| std::str::from_utf8(h.value).ok())
        .map(str::trim)
}

fn has_token(value: Option<&str>, token: &str) -> bool {
    value.is_some_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
}

/// Answers one request head (see the module docs).
pub fn answer(buf: &[u8], opts: &WsOptions) -> Http {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut req = httparse::Request::new(&mut headers);
    let consumed = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() >= MAX_REQUEST => {
            return Http::Respond(plain(
                431,
                "Request Header Fields Too Large",
                "request too large",
            ));
        }
        Ok(httparse::Status::Partial) => return Http::Incomplete,
        Err(httparse::Error::TooManyHeaders) => {
            return Http::Respond(plain(
                431,
                "Request Header Fields Too Large",
                "too many headers",
            ));
        }
        Err(_) => return Http::Respond(plain(400, "Bad Request", "malformed request")),
    };
    let method = req.method.unwrap_or("");
    let path = req.path.unwrap_or("/");
    let path = path.split(['?', '#']).next().unwrap_or("/");
    if method != "GET" && method != "HEAD" {
        return Http::Respond(plain(405, "Method Not Allowed", "only GET"));
    }
    if path != WS_PATH {
        return Http::Respond(file(path, method == "HEAD"));
    }
    if !has_token(header(&req, "upgrade"), "websocket")
        || !has_token(header(&req, "connection"), "upgrade")
    {
        return Http::Respond(plain(
            426,
            "Upgrade Required",
            "this is the WebSocket endpoint: connect with a WebSocket client",
        ));
    }
    if header(&req, "sec-websocket-version") != Some("13") {
        return Http::Respond(
            b"HTTP/1.1 426 Upgrade Required\r\nSec-WebSocket-Version: 13\r\n\
              Content-Length: 0\r\nConnection: close\r\n\r\n"
                .to_vec(),
        );
    }
    let Some(key) = header(&req, "sec-websocket-key").filter(|k| k.len() == 24) else {
        return Http::Respond(plain(400, "Bad Request", "missing Sec-WebSocket-Key"));
    };
    if let Some(origin) = header(&req, "origin")
        && !origin_allowed(origin, header(&req, "host"), opts)
    {
        return Http::Respond(plain(403, "Forbidden", "origin not allowed"));
    }
    let accept = tungstenite::handshake::derive_accept_key(key.as_bytes());
    let response = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {accept}\r\n\r\n"
    )
    .into_bytes();
    Http::Upgrade { response, consumed }
}

/// Whether a browser page of `origin` may connect (see the module docs).
fn origin_allowed(origin: &str, host: Option<&str>, opts: &WsOptions) -> bool {
    let listed = opts
        .allowed_origins
        .iter()
        .any(|o| o == "*" || o.eq_ignore_ascii_case(origin));
    // The page the server itself served: same host and port.
    let own = host.is_some_and(|h| {
        origin.split_once("://").is_some_and(|(scheme, rest)| {
            matches!(scheme, "http" | "https") && rest.eq_ignore_ascii_case(h)
        })
    });
    listed || own
}

fn plain(status: u16, reason: &str, body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain; charset=utf-8\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

fn content_type(path: &str) -> &'static str {
    match path.rsplit('.').next().unwrap_or("") {
        "html" => "text/html; charset=utf-8",
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "json" | "webmanifest" => "application/json",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "ico" => "image/x-icon",
        "woff2" => "font/woff2",
        _ => "application/octet-stream",
    }
}

/// A file of the embedded web client (`/` is `index.html`).
fn file(path: &str, head: bool) -> Vec<u8> {
    let rel = path.trim_start_matches('/');
    let rel = if rel.is_empty() { "index.html" } else { rel };
    // include_dir paths never contain "..": nothing outside web/dist can
    // be named, but refuse such paths outright anyway.
    let found = (!rel.split('/').any(|p| p == ".." || p.is_empty()))
        .then(|| WEB.get_file(rel))
        .flatten();
    let Some(f) = found else {
        return plain(404, "Not Found", "not found");
    };
    let body = f.contents();
    // index.html names the other files, which change with every build:
    // it must be revalidated; the rest may be cached briefly.
    let cache = if rel == "index.html" {
        "no-cache"
    } else {
        "max-age=300"
    };
    let mut out = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: {}\r\nContent-Length: {}\r\nCache-Control: {cache}\r\n\
         X-Content-Type-Options: nosniff\r\nConnection: close\r\n\r\n",
        content_type(rel),
        body.len()
    )
    .into_bytes();
    if !head {
        out.extend_from_slice(body);
    }
    out
}

/// What a refused connection (a cap is reached) is told.
pub fn refusal(why: &str) -> Vec<u8> {
    plain(503, "Service Unavailable", why)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upgrade(extra: &str) -> String {
        format!(
            "GET /ws HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nUpgrade: websocket\r\n\
             Connection: keep-alive, Upgrade\r\nSec-WebSocket-Version: 13\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n{extra}\r\n"
        )
    }

    fn status(h: &Http) -> u16 {
        let bytes = match h {
            Http::Respond(b) | Http::Upgrade { response: b, .. } => b,
            Http::Incomplete => return 0,
        };
        let s = std::str::from_utf8(&bytes[9..12]).unwrap();
        s.parse().unwrap()
    }

    #[test]
    fn the_rfc_sample_key_is_accepted_and_frames_after_it_are_kept() {
        let mut req = upgrade("").into_bytes();
        let n = req.len();
        req.extend_from_slice(&[0x82, 0x80]);
        match answer(&req, &WsOptions::default()) {
            Http::Upgrade { response, consumed } => {
                let r = String::from_utf8(response).unwrap();
                // RFC 6455 1.3's example.
                assert!(
                    r.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"),
                    "{r:?}"
                );
                assert_eq!(consumed, n);
            }
            h => panic!("{h:?}"),
        }
        assert_eq!(answer(&req[..20], &WsOptions::default()), Http::Incomplete);
    }

    #[test]
    fn origins_other_than_our_own_need_to_be_listed() {
        let none = WsOptions::default();
        let own = upgrade("Origin: http://127.0.0.1:8080\r\n");
        let other = upgrade("Origin: https://evil.example\r\n");
        assert_eq!(status(&answer(own.as_bytes(), &none)), 101);
        assert_eq!(status(&answer(other.as_bytes(), &none)), 403);
        assert_eq!(status(&answer(upgrade("").as_bytes(), &none)), 101);
        let listed = WsOptions {
            allowed_origins: vec!["https://EVIL.example".into()],
        };
        assert_eq!(status(&answer(other.as_bytes(), &listed)), 101);
        let any = WsOptions {
            allowed_origins: vec!["*".into()],
        };
        assert_eq!(status(&answer(other.as_bytes(), &any)), 101);
    }

    #[test]
    fn bad_requests_get_http_errors() {
        let o = WsOptions::default();
        let cases = [
            ("POST /ws HTTP/1.1\r\nHost: x\r\n\r\n".to_string(), 405),
            ("GET /ws HTTP/1.1\r\nHost: x\r\n\r\n".to_string(), 426),
            (upgrade("").replace("Version: 13", "Version: 8"), 426),
            (
                upgrade("").replace("dGhlIHNhbXBsZSBub25jZQ==", "short"),
                400,
            ),
            ("GET /../etc/passwd HTTP/1.1\r\n\r\n".to_string(), 404),
            ("GET /no-such-file HTTP/1.1\r\n\r\n".to_string(), 404),
            ("\x01\x02 garbage\r\n\r\n".to_string(), 400),
        ];
        for (req, want) in cases {
            assert_eq!(status(&answer(req.as_bytes(), &o)), want, "{req:?}");
        }
        let huge = format!("GET / HTTP/1.1\r\nX: {}", "a".repeat(MAX_REQUEST));
        assert_eq!(status(&answer(huge.as_bytes(), &o)), 431);
    }

    #[test]
    fn the_web_client_is_served_at_the_root() {
        let h = answer(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", &WsOptions::default());
        let Http::Respond(b) = h else { panic!() };
        let s = String::from_utf8_lossy(&b);
        assert!(s.starts_with("HTTP/1.1 200 OK\r\n"), "{s}");
        assert!(s.contains("Content-Type: text/html"));
        assert!(s.contains("<html"), "index.html is the body");
        let h = answer(b"HEAD / HTTP/1.1\r\n\r\n", &WsOptions::default());
        let Http::Respond(b) = h else { panic!() };
        assert!(b.ends_with(b"\r\n\r\n"), "HEAD has no body");
    }
}
