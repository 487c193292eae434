//! `ringchat admin`: a small HTTP client of a node's `/admin` endpoints on
//! its metrics address (`server::admin`; docs/DEPLOY.md, "Admin"). Blocking
//! std I/O: it runs in its own short-lived process, never on an executor.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

/// One admin action.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Online,
    User(String),
    Kick(String),
    Disable(String),
    Enable(String),
    Broadcast { group: u64, text: String },
}

impl Action {
    /// Method, path and body of the request.
    fn request(&self) -> (&'static str, String, &str) {
        match self {
            Action::Online => ("GET", "/admin/online".into(), ""),
            Action::User(n) => ("GET", format!("/admin/users/{}", encode(n)), ""),
            Action::Kick(n) => ("POST", format!("/admin/users/{}/kick", encode(n)), ""),
            Action::Disable(n) => ("POST", format!("/admin/users/{}/disable", encode(n)), ""),
            Action::Enable(n) => ("POST", format!("/admin/users/{}/enable", encode(n)), ""),
            Action::Broadcast { group, text } => {
                ("POST", format!("/admin/groups/{group}/broadcast"), text)
            }
        }
    }
}

/// Percent-encodes a path segment (everything but unreserved characters).
fn encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Where and how to reach the node.
pub struct Options {
    /// The node's metrics address (`serve --metrics`).
    pub addr: String,
    pub token: String,
    pub action: Action,
}

/// Sends the request; returns the HTTP status and the JSON reply.
pub fn call(o: &Options) -> Result<(u16, serde_json::Value), String> {
    let (method, path, body) = o.action.request();
    let addr = o
        .addr
        .to_socket_addrs()
        .map_err(|e| format!("{}: {e}", o.addr))?
        .next()
        .ok_or_else(|| format!("{}: no address", o.addr))?;
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .map_err(|e| format!("connecting to {addr}: {e}"))?;
    // The node waits up to 10 s for a shard; allow for that.
    let _ = s.set_read_timeout(Some(Duration::from_secs(30)));
    let _ = s.set_write_timeout(Some(Duration::from_secs(10)));
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {}\r\n\
         Content-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        o.token,
        body.len()
    );
    s.write_all(head.as_bytes())
        .and_then(|_| s.write_all(body.as_bytes()))
        .map_err(|e| format!("sending to {addr}: {e}"))?;
    let mut reply = Vec::new();
    s.read_to_end(&mut reply)
        .map_err(|e| format!("reading from {addr}: {e}"))?;
    let text = String::from_utf8_lossy(&reply);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("{addr}: not an HTTP reply"))?;
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("{addr}: bad HTTP status line"))?;
    let json = serde_json::from_str(body.trim())
        .unwrap_or_else(|_| serde_json::Value::String(body.trim().to_string()));
    Ok((status, json))
}

/// The reply in words, one line (or a few).
pub fn describe(action: &Action, v: &serde_json::Value) -> String {
    let s = |k: &str| v[k].to_string().trim_matches('"').to_string();
    match action {
        Action::Online => {
            let mut out = format!(
                "{} users online, {} connections",
                s("users"),
                s("connections")
            );
            if let Some(shards) = v["shards"].as_array() {
                for sh in shards {
                    out.push_str(&format!(
                        "\n  shard {}: {} users, {} connections",
                        sh["shard"], sh["users"], sh["connections"]
                    ));
                }
            }
            out
        }
        Action::User(_) => format!(
            "{} (id {}): {}, {} connection(s) on this node, {}",
            s("user"),
            s("id"),
            if v["online"] == true {
                "online"
            } else {
                "offline"
            },
            s("connections"),
            if v["disabled"] == true {
                "DISABLED"
            } else {
                "enabled"
            }
        ),
        Action::Kick(_) => format!(
            "{} (id {}): {} connection(s) closed, {} session token(s) revoked",
            s("user"),
            s("id"),
            s("closed"),
            s("tokens_revoked")
        ),
        Action::Disable(_) | Action::Enable(_) => format!(
            "{} (id {}): {}{}",
            s("user"),
            s("id"),
            if v["disabled"] == true {
                "disabled"
            } else {
                "enabled"
            },
            if v["disabled"] == true {
                format!(", {} connection(s) closed", s("closed"))
            } else {
                String::new()
            }
        ),
        Action::Broadcast { .. } => format!(
            "broadcast to group {} stored as seq {}",
            s("group"),
            s("seq")
        ),
    }
}

/// Runs the command: prints the result, returns the exit status (0 ok, 1
/// refused or failed, 2 unreachable).
pub fn run(o: &Options) -> i32 {
    match call(o) {
        Ok((200, v)) => {
            println!("{}", describe(&o.action, &v));
            0
        }
        Ok((status, v)) => {
            let why = v["error"]
                .as_str()
                .map(str::to_string)
                .unwrap_or(v.to_string());
            eprintln!("ringchat admin: HTTP {status}: {why}");
            1
        }
        Err(e) => {
            eprintln!("ringchat admin: {e}");
            2
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_encoded_into_paths() {
        assert_eq!(encode("al ice/ü"), "al%20ice%2F%C3%BC");
        let kick = Action::Kick("a b".into());
        let (m, p, b) = kick.request();
        assert_eq!((m, p.as_str(), b), ("POST", "/admin/users/a%20b/kick", ""));
        let a = Action::Broadcast {
            group: 7,
            text: "hi".into(),
        };
        assert_eq!(a.request().1, "/admin/groups/7/broadcast");
    }
}
