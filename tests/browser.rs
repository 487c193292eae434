//! The web client (web/dist, served by `serve --ws-listen`) in a real
//! headless Chromium, driven over WebDriver by chromedriver (Debian's
//! `chromium` and `chromium-driver`): people register, befriend, chat,
//! see presence, typing and read receipts, reload and survive a server
//! restart with nothing lost or doubled, talk to a terminal-client user
//! (`ringchat::client` over TCP, what `ringchat chat` is built on), and
//! a group member who was offline logs in and sees everything.
//!
//! Assertions read the page's DOM (what a person sees), never the page's
//! internals. Without chromium/chromedriver the tests print "skipped" and
//! pass, unless `RINGCHAT_REQUIRE_CHROMIUM=1` (CI), when they fail.
//!
//! `RINGCHAT_SCREENSHOTS=DIR` saves the screenshots shown in the README
//! (login, contacts, direct chat with receipts, group chat, phone) to DIR
//! (`RINGCHAT_SCREENSHOTS=docs/web cargo test --test browser`).
//!
//! The WebDriver client is a few HTTP/1.1 calls over std's TcpStream with
//! serde_json: the tests need eight endpoints, and the WebDriver crates
//! all bring an async runtime.

mod common;

use common::*;
use ringchat::client::Event;
use serde_json::{Value, json};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

// ---------------------------------------------------------------- setup

/// The browser and its driver, if installed.
fn tools() -> Option<(PathBuf, PathBuf)> {
    let find = |names: &[&str]| {
        names
            .iter()
            .map(PathBuf::from)
            .find(|p| p.is_file())
            .or_else(|| {
                names.iter().find_map(|n| {
                    let out = Command::new("which").arg(n).output().ok()?;
                    let p = String::from_utf8(out.stdout).ok()?.trim().to_string();
                    (!p.is_empty()).then(|| PathBuf::from(p))
                })
            })
    };
    // The real binary, not Debian's /usr/bin/chromium wrapper script.
    let browser = find(&["/usr/lib/chromium/chromium", "chromium"])?;
    let driver = find(&["/usr/bin/chromedriver", "chromedriver"])?;
    Some((browser, driver))
}

/// `None` when the tests should skip (and say so).
fn setup(test: &str) -> Option<(PathBuf, PathBuf)> {
    match tools() {
        Some(t) => Some(t),
        None if std::env::var("RINGCHAT_REQUIRE_CHROMIUM").as_deref() == Ok("1") => {
            panic!("chromium/chromedriver not found and RINGCHAT_REQUIRE_CHROMIUM=1")
        }
        None => {
            eprintln!("{test}: skipped (chromium or chromedriver not installed)");
            None
        }
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A server with the WebSocket listener on a port of our choosing (so a
/// restart keeps the page's URL).
struct WebServer {
    srv: TestServer,
    url: String,
}

impl WebServer {
    fn start() -> WebServer {
        let ws: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let srv = TestServer::start_with(&["--ws-listen", &ws.to_string()]);
        WebServer {
            srv,
            url: format!("http://{ws}/"),
        }
    }
}

fn screenshots_dir() -> Option<PathBuf> {
    let d = std::env::var_os("RINGCHAT_SCREENSHOTS")?;
    let d = PathBuf::from(d);
    std::fs::create_dir_all(&d).unwrap();
    Some(d)
}

// ---------------------------------------------------------------- WebDriver

/// A chromedriver process; one browser per [`Browser`] session.
struct Driver {
    child: Child,
    addr: SocketAddr,
    browser: PathBuf,
}

impl Driver {
    fn start(browser: &Path, driver: &Path) -> Driver {
        let port = free_port();
        let child = Command::new(driver)
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn chromedriver");
        let d = Driver {
            child,
            addr: format!("127.0.0.1:{port}").parse().unwrap(),
            browser: browser.to_path_buf(),
        };
        let deadline = Instant::now() + T;
        loop {
            if let Ok((_, v)) = http(d.addr, "GET", "/status", None)
                && v["value"]["ready"] == json!(true)
            {
                return d;
            }
            assert!(Instant::now() < deadline, "chromedriver did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// A new headless browser with a profile of its own (own localStorage).
    fn browser(&self, width: u32, height: u32) -> Browser {
        let profile = std::env::temp_dir().join(format!(
            "ringchat-chromium-{}-{}",
            std::process::id(),
            free_port()
        ));
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": self.browser.to_string_lossy(),
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--no-first-run", "--disable-extensions", "--hide-scrollbars",
                    format!("--window-size={width},{height}"),
                    format!("--user-data-dir={}", profile.display()),
                ],
            },
        }}});
        let v = call(self.addr, "POST", "/session", Some(caps));
        let id = v["sessionId"].as_str().expect("session id").to_string();
        Browser {
            driver: self.addr,
            id,
            profile,
        }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One HTTP/1.1 exchange (Connection: close) returning status and JSON body.
fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> std::io::Result<(u16, Value)> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(60)))?;
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    // chromedriver keeps the connection open despite `Connection: close`:
    // read the header, then exactly Content-Length bytes (or to EOF).
    let mut raw = Vec::new();
    let mut buf = [0u8; 16384];
    let split = loop {
        if let Some(i) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        let n = s.read(&mut buf)?;
        if n == 0 {
            return Err(std::io::Error::other("no HTTP header end"));
        }
        raw.extend_from_slice(&buf[..n]);
    };
    let len = String::from_utf8_lossy(&raw[..split])
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse::<usize>().ok())?
        });
    match len {
        Some(len) => {
            while raw.len() < split + 4 + len {
                let n = s.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                raw.extend_from_slice(&buf[..n]);
            }
        }
        None => {
            s.read_to_end(&mut raw)?;
        }
    }
    let head = String::from_utf8_lossy(&raw[..split]).to_string();
    let mut payload = raw[split + 4..].to_vec();
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        payload = dechunk(&payload);
    }
    let v = if payload.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&payload).map_err(std::io::Error::other)?
    };
    Ok((status, v))
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(i) = b.windows(2).position(|w| w == b"\r\n") {
        let n = usize::from_str_radix(String::from_utf8_lossy(&b[..i]).trim(), 16).unwrap_or(0);
        if n == 0 {
            break;
        }
        out.extend_from_slice(&b[i + 2..i + 2 + n]);
        b = &b[i + 2 + n + 2..];
    }
    out
}

/// A WebDriver command; panics on an error answer. Returns `value`.
fn call(addr: SocketAddr, method: &str, path: &str, body: Option<Value>) -> Value {
    let (status, v) =
        http(addr, method, path, body).unwrap_or_else(|e| panic!("webdriver {path}: {e}"));
    assert!(status == 200, "webdriver {method} {path}: {status} {v}");
    v["value"].clone()
}

const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// One browser window (a WebDriver session).
struct Browser {
    driver: SocketAddr,
    id: String,
    profile: PathBuf,
}

impl Browser {
    fn cmd(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        call(
            self.driver,
            method,
            &format!("/session/{}{path}", self.id),
            body,
        )
    }

    fn go(&self, url: &str) {
        self.cmd("POST", "/url", Some(json!({ "url": url })));
    }

    fn reload(&self) {
        self.cmd("POST", "/refresh", Some(json!({})));
    }

    fn js(&self, script: &str) -> Value {
        self.cmd(
            "POST",
            "/execute/sync",
            Some(json!({ "script": script, "args": [] })),
        )
    }

    /// Waits until `expr` (a JS expression) is truthy; returns its value.
    fn wait(&self, what: &str, expr: &str) -> Value {
        let deadline = Instant::now() + T;
        let script = format!("try {{ return ({expr}); }} catch (e) {{ return null; }}");
        loop {
            let v = self.js(&script);
            let truthy =
                !matches!(&v, Value::Null | Value::Bool(false)) && v != json!("") && v != json!(0);
            if truthy {
                return v;
            }
            if Instant::now() > deadline {
                panic!(
                    "{what}: timed out; page text:\n{}",
                    self.js("return document.body.innerText")
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn find(&self, css: &str) -> String {
        self.wait(
            &format!("element {css}"),
            &format!(
                "(() => {{ const e = document.querySelector({}); return e && e.offsetParent !== null; }})()",
                json!(css)
            ),
        );
        let v = self.cmd(
            "POST",
            "/element",
            Some(json!({ "using": "css selector", "value": css })),
        );
        v[ELEMENT].as_str().unwrap().to_string()
    }

    /// `action` on the element `css` names. The page re-renders lists as
    /// pushes arrive, so an element found a moment ago may be replaced
    /// ("stale element reference"): like a person, find it again and retry.
    fn on_element(&self, css: &str, action: &str, body: Value) {
        for _ in 0..20 {
            let e = self.find(css);
            let path = format!("/session/{}/element/{e}/{action}", self.id);
            let (status, v) = http(self.driver, "POST", &path, Some(body.clone()))
                .unwrap_or_else(|err| panic!("webdriver {path}: {err}"));
            if status == 200 {
                return;
            }
            assert!(
                v["value"]["error"] == "stale element reference",
                "webdriver POST {path}: {status} {v}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("{css}: still replaced after 20 tries");
    }

    fn click(&self, css: &str) {
        self.on_element(css, "click", json!({}));
    }

    /// Types `text` into the element, as key presses.
    fn type_into(&self, css: &str, text: &str) {
        self.on_element(css, "value", json!({ "text": text }));
    }

    fn text(&self, css: &str) -> String {
        self.js(&format!(
            "const e = document.querySelector({}); return e ? e.innerText : ''",
            json!(css)
        ))
        .as_str()
        .unwrap_or("")
        .to_string()
    }

    fn screenshot(&self, name: &str) {
        let Some(dir) = screenshots_dir() else { return };
        // Let the last render and fonts settle before the picture.
        std::thread::sleep(Duration::from_millis(300));
        let b64 = self.cmd("GET", "/screenshot", None);
        let path = dir.join(format!("{name}.png"));
        // coreutils' base64 decodes; no hand-written decoder.
        let mut child = Command::new("base64")
            .arg("-d")
            .stdin(Stdio::piped())
            .stdout(std::fs::File::create(&path).unwrap())
            .spawn()
            .expect("base64");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(b64.as_str().unwrap().as_bytes())
            .unwrap();
        assert!(child.wait().unwrap().success());
    }

    fn resize(&self, width: u32, height: u32) {
        self.cmd(
            "POST",
            "/window/rect",
            Some(json!({ "width": width, "height": height })),
        );
    }

    // ------------------------------------------------ the page, as a person uses it

    fn register(&self, url: &str, name: &str) {
        self.sign_in(url, name, "#register-btn");
    }

    fn login(&self, url: &str, name: &str) {
        self.sign_in(url, name, "#login-btn");
    }

    /// Fills the login form and presses `button` (register or log in).
    fn sign_in(&self, url: &str, name: &str, button: &str) {
        self.go(url);
        self.type_into("#login-user", name);
        self.type_into("#login-pass", PASSWORD);
        self.wait(
            "connected",
            "document.getElementById('login-status').textContent === ''",
        );
        self.click(button);
        self.wait_online();
    }

    fn wait_online(&self) {
        self.wait(
            "logged in and online",
            "!document.getElementById('app').hidden && document.getElementById('conn-status').classList.contains('online')",
        );
    }

    fn conv_css(name: &str) -> String {
        format!(".conv[data-name={}]", json!(name))
    }

    fn open_chat(&self, name: &str) {
        self.click(&Browser::conv_css(name));
        self.wait(
            "chat open",
            &format!(
                "!document.getElementById('chat-view').hidden && document.getElementById('chat-name').textContent === {}",
                json!(name)
            ),
        );
    }

    fn send(&self, body: &str) {
        self.type_into("#composer-input", body);
        self.click("#send-btn");
    }

    /// The open chat as shown: (seq, body, receipt mark) per message, in order.
    fn messages(&self) -> Vec<(u64, String, String)> {
        let v = self.js(
            "return [...document.querySelectorAll('#msg-list li[data-seq]')].map(li => [
                 li.dataset.seq, li.querySelector('.body') ? li.querySelector('.body').textContent : li.textContent,
                 li.querySelector('.receipt') ? li.querySelector('.receipt').textContent : ''])",
        );
        v.as_array()
            .unwrap()
            .iter()
            .map(|r| {
                (
                    r[0].as_str().unwrap().parse().unwrap(),
                    r[1].as_str().unwrap().to_string(),
                    r[2].as_str().unwrap().to_string(),
                )
            })
            .collect()
    }

    fn wait_message(&self, body: &str) {
        self.wait(
            &format!("message {body:?} shown"),
            &format!(
                "[...document.querySelectorAll('#msg-list li[data-seq] .body')].some(b => b.textContent === {})",
                json!(body)
            ),
        );
    }

    fn bodies(&self) -> Vec<String> {
        self.messages().into_iter().map(|m| m.1).collect()
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = http(
            self.driver,
            "DELETE",
            &format!("/session/{}", self.id),
            None,
        );
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

/// Asserts the open chat shows seqs 1..=n, each once, in order.
#[track_caller]
fn assert_all_once(b: &Browser, n: u64, who: &str) {
    let seqs: Vec<u64> = b.messages().iter().map(|m| m.0).collect();
    let want: Vec<u64> = (1..=n).collect();
    assert_eq!(
        seqs, want,
        "{who}: every message shown exactly once, in order"
    );
}

/// A befriends B through the page: search, Add, Accept.
fn befriend_in_pages(a: &Browser, b: &Browser, b_name: &str, a_name: &str) {
    a.type_into("#search-input", b_name);
    a.click("#search-form button");
    a.click(".add-friend");
    a.wait(
        "request shown as sent",
        "document.querySelector('#requests .outgoing')",
    );
    b.click(&format!(
        ".req.incoming[data-name={}] .accept",
        json!(a_name)
    ));
    a.find(&Browser::conv_css(b_name));
    b.find(&Browser::conv_css(a_name));
}

// ---------------------------------------------------------------- tests

#[test]
fn two_browsers_befriend_chat_see_presence_typing_receipts_and_resume() {
    let Some((browser, driver)) = setup("two_browsers") else {
        return;
    };
    let mut ws = WebServer::start();
    let d = Driver::start(&browser, &driver);
    let a = d.browser(1100, 720);
    let b = d.browser(1100, 720);
    let (an, bn) = (uname("alice"), uname("bob"));

    a.go(&ws.url);
    a.find("#login-user");
    a.screenshot("login");
    a.register(&ws.url, &an);
    b.register(&ws.url, &bn);

    // Friends through search, request and accept; each sees the other online.
    befriend_in_pages(&a, &b, &bn, &an);
    a.wait(
        "bob shown online",
        &format!(
            "document.querySelector('{} .dot.online')",
            Browser::conv_css(&bn).replace('\'', "\\'")
        ),
    );
    b.wait(
        "alice shown online",
        &format!(
            "document.querySelector('{} .dot.online')",
            Browser::conv_css(&an).replace('\'', "\\'")
        ),
    );

    // Alice types: Bob, in the chat with her, sees it.
    b.open_chat(&an);
    a.open_chat(&bn);
    a.type_into("#composer-input", "hel");
    b.wait(
        "typing indicator",
        &format!(
            "document.getElementById('typing').textContent === {}",
            json!(format!("{an} is typing…"))
        ),
    );
    a.type_into("#composer-input", "lo bob");
    a.click("#send-btn");
    b.wait_message("hello bob");
    b.wait(
        "typing cleared by the message",
        "document.getElementById('typing').textContent === ''",
    );
    // Bob has the chat open, so he read it: Alice sees the receipt.
    a.wait(
        "read receipt ✓✓",
        "[...document.querySelectorAll('#msg-list li.mine .receipt')].some(r => r.textContent === '✓✓')",
    );
    b.send("hi alice");
    a.wait_message("hi alice");

    // Unread badge: Bob leaves the chat (opens nothing) on a phone-sized
    // screen; Alice writes twice; his list shows 2 unread.
    b.resize(390, 760);
    b.click("#back-btn");
    a.send("are you there?");
    a.send("second");
    b.wait(
        "unread badge 2",
        &format!(
            "document.querySelector({}).querySelector('.badge').textContent === '2'",
            json!(Browser::conv_css(&an))
        ),
    );
    a.screenshot("contacts");
    b.screenshot("phone-contacts");
    b.open_chat(&an);
    b.wait_message("second");
    b.screenshot("phone-chat");
    b.resize(1100, 720);
    a.wait(
        "both new messages read",
        "[...document.querySelectorAll('#msg-list li.mine .receipt')].slice(-2).every(r => r.textContent === '✓✓')",
    );
    a.screenshot("direct-chat");

    // Bob reloads while Alice keeps writing: after the reload he has every
    // message once (stored ones from before, the rest from the resume).
    b.reload();
    for i in 0..3 {
        a.send(&format!("during reload {i}"));
    }
    b.wait_online();
    b.open_chat(&an);
    b.wait_message("during reload 2");
    assert_all_once(&b, 7, "bob after reload");
    assert_eq!(
        b.bodies(),
        [
            "hello bob",
            "hi alice",
            "are you there?",
            "second",
            "during reload 0",
            "during reload 1",
            "during reload 2"
        ]
    );

    // A server restart: both pages reconnect and resume on their own.
    ws.srv.restart();
    a.wait_online();
    b.wait_online();
    a.send("after restart");
    b.wait_message("after restart");
    b.send("got it");
    a.wait_message("got it");
    assert_all_once(&a, 9, "alice after restart");
    assert_all_once(&b, 9, "bob after restart");

    // Bob goes away: Alice sees him offline.
    drop(b);
    a.wait(
        "bob shown offline",
        "document.getElementById('chat-presence').textContent === 'offline'",
    );
}

#[test]
fn a_browser_user_and_a_terminal_client_user_talk() {
    let Some((browser, driver)) = setup("browser_and_terminal") else {
        return;
    };
    let ws = WebServer::start();
    let d = Driver::start(&browser, &driver);
    let w = d.browser(1000, 700);
    let wn = uname("web");
    w.register(&ws.url, &wn);
    let t = ws.srv.user(&uname("term"));

    // The terminal user asks; the browser user accepts.
    let wid = t.search_users(&wn, 0, 0).unwrap().0[0].user_id;
    t.friend_request(wid, "from the terminal").unwrap();
    w.click(&format!(
        ".req.incoming[data-name={}] .accept",
        json!(t.name)
    ));
    wait(&t.c, "accepted", |e| matches!(e, Event::Friend { .. }));

    t.send_direct(wid, "hello from the terminal").unwrap();
    w.open_chat(&t.name);
    w.wait_message("hello from the terminal");
    // The browser shows it with the chat open: the terminal gets the receipt.
    wait(
        &t.c,
        "read receipt from the browser",
        |e| matches!(e, Event::ReadUpTo { reader, seq: 1, .. } if *reader == wid),
    );
    // Typing in the browser reaches the terminal client.
    w.type_into("#composer-input", "hi termi");
    wait(
        &t.c,
        "typing from the browser",
        |e| matches!(e, Event::Typing { user_id, stopped: false, .. } if *user_id == wid),
    );
    w.type_into("#composer-input", "nal");
    w.click("#send-btn");
    let m = wait_msg(&t.c, "the browser's message");
    assert_eq!((m.body.as_str(), m.sender, m.seq), ("hi terminal", wid, 2));
    t.typing(m.conversation, false).unwrap();
    t.ack(&[(m.conversation, 2)]).unwrap();
    w.wait(
        "receipt from the terminal",
        "[...document.querySelectorAll('#msg-list li.mine .receipt')].some(r => r.textContent === '✓✓')",
    );
    assert_all_once(&w, 2, "browser");
}

#[test]
fn a_group_of_three_and_the_offline_member_sees_everything() {
    let Some((browser, driver)) = setup("group_of_three") else {
        return;
    };
    let ws = WebServer::start();
    let d = Driver::start(&browser, &driver);
    let a = d.browser(1100, 720);
    let b = d.browser(1100, 720);
    let (an, bn) = (uname("gowner"), uname("gmember"));
    a.register(&ws.url, &an);
    b.register(&ws.url, &bn);

    // Alice creates the group in her page and reads its id off the header.
    a.click("#group-tools summary");
    a.type_into("#create-group-name", "team");
    a.click("#create-group-form button");
    a.wait(
        "group chat open",
        "document.getElementById('chat-name').textContent === 'team'",
    );
    let gid: u64 = a
        .text("#chat-presence")
        .trim_start_matches("group #")
        .parse()
        .unwrap();
    // Bob joins in his page; Carol (a terminal user) joins and goes offline.
    b.click("#group-tools summary");
    b.type_into("#join-group-id", &gid.to_string());
    b.click("#join-group-form button");
    b.wait(
        "group chat open",
        "document.getElementById('chat-name').textContent === 'team'",
    );
    let carol = ws.srv.user(&uname("gcarol"));
    carol.join_group(gid).unwrap();
    let carol_name = carol.name.clone();
    carol.logout().unwrap();
    drop(carol);

    a.send("welcome to the team");
    b.wait_message("welcome to the team");
    b.send("thanks!");
    a.wait_message("thanks!");
    a.send("carol is away");
    b.wait_message("carol is away");
    a.click("#members-btn");
    a.wait(
        "three members listed",
        "document.querySelectorAll('#members li').length === 3",
    );
    a.wait(
        "bob's read cursor",
        "[...document.querySelectorAll('#msg-list li.mine .receipt')].some(r => r.textContent.startsWith('✓✓'))",
    );
    a.screenshot("group-chat");

    // Carol logs in from a browser later and sees everything, once.
    let c = d.browser(1000, 700);
    c.login(&ws.url, &carol_name);
    c.wait(
        "unread badge 3",
        &format!(
            "document.querySelector({}).querySelector('.badge').textContent === '3'",
            json!(Browser::conv_css("team"))
        ),
    );
    c.open_chat("team");
    c.wait_message("carol is away");
    assert_eq!(
        c.bodies(),
        ["welcome to the team", "thanks!", "carol is away"]
    );
    c.send("back now");
    a.wait_message("back now");
    b.wait_message("back now");
    assert_all_once(&a, 4, "alice");
    assert_all_once(&b, 4, "bob");
}
