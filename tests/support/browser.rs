//! A real browser for the tests: headless Chromium (the Debian `chromium` package).
//!
//! - [`chromium`] finds it, or says the test is skipped; with `CI` or
//!   `WSPLICE_REQUIRE_BROWSER` set a missing browser is a failure.
//! - [`run_chromium`] loads a page once and returns what Chromium prints (`--dump-dom`, a
//!   screenshot), the page's timers running on virtual time.
//! - [`LivePage`] keeps a page open and reads its DOM over the DevTools protocol until a
//!   condition holds: for pages whose state comes from WebSocket messages, which virtual time
//!   does not wait for.
//! - [`Dom`] reads the start tags and attributes of a serialized DOM; [`text_of`] a leaf's text.

use std::collections::HashMap;
use std::io::Read;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A fresh profile directory per call (Chromium refuses to share one between instances).
fn profile_dir(kind: &str) -> PathBuf {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static N: AtomicUsize = AtomicUsize::new(0);
    std::env::temp_dir().join(format!(
        "wsplice-chromium-{kind}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ))
}

/// Chromium's path, or `None` (the test then skips, unless CI requires the browser).
pub fn chromium() -> Option<PathBuf> {
    let found = ["chromium", "chromium-browser"].iter().find_map(|name| {
        std::env::var_os("PATH")?
            .to_str()?
            .split(':')
            .map(|d| Path::new(d).join(name))
            .find(|p| p.is_file())
    });
    let required = ["CI", "WSPLICE_REQUIRE_BROWSER"]
        .iter()
        .any(|v| std::env::var(v).is_ok_and(|v| !v.is_empty()));
    match found {
        None if required => panic!(
            "chromium is not installed and CI (or WSPLICE_REQUIRE_BROWSER) requires the browser tests: apt-get install chromium"
        ),
        None => eprintln!(
            "skipped: no chromium on PATH (apt-get install chromium; CI and WSPLICE_REQUIRE_BROWSER make this a failure)"
        ),
        Some(_) => {}
    }
    found
}

/// Runs headless Chromium on `url` with `args`, letting the page's script run for `budget` of
/// virtual time (its timers and fetches), with a fresh profile; returns its stdout.
pub fn run_chromium(bin: &Path, url: &str, budget: Duration, args: &[&str]) -> String {
    let profile = profile_dir("dump");
    let mut child = Command::new(bin)
        .args([
            "--headless",
            "--disable-gpu",
            "--no-sandbox",
            "--no-first-run",
            "--hide-scrollbars",
            &format!("--user-data-dir={}", profile.display()),
            &format!("--virtual-time-budget={}", budget.as_millis()),
        ])
        .args(args)
        .arg(url)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start chromium");
    let mut out = String::new();
    let mut stdout = child.stdout.take().expect("stdout");
    let reader = std::thread::spawn(move || {
        let _ = stdout.read_to_string(&mut out);
        out
    });
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        if child.try_wait().expect("wait chromium").is_some() {
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            let _ = std::fs::remove_dir_all(&profile);
            panic!("chromium did not finish {url} within 90 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = std::fs::remove_dir_all(&profile);
    reader.join().expect("chromium's stdout")
}

/// The start tags of a DOM as Chromium serializes it (`<tag a="v" ...>`, values quoted with `"`
/// and entity-escaped), each as its attributes.
pub struct Dom(Vec<HashMap<String, String>>);

impl Dom {
    pub fn parse(html: &str) -> Dom {
        let mut tags = Vec::new();
        let mut rest = html;
        while let Some(i) = rest.find('<') {
            rest = &rest[i + 1..];
            if !rest.starts_with(|c: char| c.is_ascii_alphabetic()) {
                continue;
            }
            // The tag ends at the first `>` outside quotes.
            let mut quoted = false;
            let end = rest
                .char_indices()
                .find(|&(_, c)| {
                    if c == '"' {
                        quoted = !quoted;
                    }
                    c == '>' && !quoted
                })
                .map_or(rest.len(), |(j, _)| j);
            let tag = &rest[..end];
            let mut attrs = HashMap::new();
            let mut words = tag.splitn(2, char::is_whitespace);
            attrs.insert("<tag>".to_owned(), words.next().unwrap_or("").to_owned());
            let mut a = words.next().unwrap_or("");
            while let Some(eq) = a.find("=\"") {
                let name = a[..eq].trim().to_owned();
                let after = &a[eq + 2..];
                let close = after.find('"').unwrap_or(after.len());
                let value = after[..close]
                    .replace("&quot;", "\"")
                    .replace("&lt;", "<")
                    .replace("&gt;", ">")
                    .replace("&amp;", "&");
                attrs.insert(name, value);
                a = after.get(close + 1..).unwrap_or("");
            }
            tags.push(attrs);
            rest = &rest[end..];
        }
        Dom(tags)
    }

    /// Every element with attribute `name` (equal to `value`, if given).
    pub fn all(&self, name: &str, value: Option<&str>) -> Vec<&HashMap<String, String>> {
        self.0
            .iter()
            .filter(|t| t.get(name).is_some_and(|v| value.map_or(true, |w| v == w)))
            .collect()
    }

    pub fn one(&self, name: &str, value: &str) -> &HashMap<String, String> {
        match self.all(name, Some(value))[..] {
            [t] => t,
            ref v => panic!("{} elements with {name}={value:?}", v.len()),
        }
    }

    /// The number in `attr` of the element with `name="value"`.
    pub fn num(&self, name: &str, value: &str, attr: &str) -> u64 {
        let t = self.one(name, value);
        let v = t
            .get(attr)
            .unwrap_or_else(|| panic!("[{name}={value}] has no {attr}: {t:?}"));
        v.parse()
            .unwrap_or_else(|_| panic!("[{name}={value}] {attr}={v:?} is not a count"))
    }

    /// The `data-value` of the element with this id.
    pub fn value(&self, id: &str) -> u64 {
        self.num("id", id, "data-value")
    }
}

/// The text between the element with `id` and its end tag (a leaf element).
pub fn text_of(html: &str, id: &str) -> String {
    let at = html
        .find(&format!("id=\"{id}\""))
        .unwrap_or_else(|| panic!("no #{id}"));
    let start = at + html[at..].find('>').expect("tag end") + 1;
    let end = start + html[start..].find('<').expect("end tag");
    html[start..end].to_owned()
}

/// A page kept open in headless Chromium and read over the DevTools protocol (a WebSocket to
/// the browser, spoken with tungstenite): the page runs in real time, as long as the test
/// needs. The browser and its profile go away on drop.
pub struct LivePage {
    child: Child,
    profile: PathBuf,
    devtools: Option<tungstenite::WebSocket<TcpStream>>,
    next_id: u64,
}

/// How long Chromium may take to start and show the page's DevTools endpoint.
const START: Duration = Duration::from_secs(60);

impl LivePage {
    /// Starts Chromium on `url` (its DevTools port chosen by itself, read from the profile's
    /// `DevToolsActivePort`) and connects to the page's DevTools endpoint.
    pub fn open(bin: &Path, url: &str) -> LivePage {
        let profile = profile_dir("live");
        let child = Command::new(bin)
            .args([
                "--headless",
                "--disable-gpu",
                "--no-sandbox",
                "--no-first-run",
                "--remote-debugging-port=0",
                &format!("--user-data-dir={}", profile.display()),
            ])
            .arg(url)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromium");
        let mut page = LivePage {
            child,
            profile,
            devtools: None,
            next_id: 0,
        };
        let deadline = Instant::now() + START;
        let endpoint = loop {
            if let Some(ws) = page.page_endpoint() {
                break ws;
            }
            if let Ok(Some(status)) = page.child.try_wait() {
                panic!("chromium exited ({status}) before showing {url}");
            }
            assert!(
                Instant::now() < deadline,
                "chromium showed no DevTools endpoint for {url} within {START:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        };
        let authority = endpoint
            .strip_prefix("ws://")
            .and_then(|r| r.split('/').next())
            .expect("a ws:// DevTools endpoint")
            .to_owned();
        let stream = TcpStream::connect(&authority).expect("connect to DevTools");
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .expect("timeout");
        let (ws, _) = tungstenite::client(endpoint.as_str(), stream).expect("DevTools handshake");
        page.devtools = Some(ws);
        page
    }

    /// The page target's `webSocketDebuggerUrl`, once Chromium lists it.
    fn page_endpoint(&self) -> Option<String> {
        let file = std::fs::read_to_string(self.profile.join("DevToolsActivePort")).ok()?;
        let port: u16 = file.lines().next()?.trim().parse().ok()?;
        let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
        std::io::Write::write_all(
            &mut s,
            format!(
                "GET /json/list HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
            )
            .as_bytes(),
        )
        .ok()?;
        // Chromium keeps the connection open: read by Content-Length.
        let mut answer = Vec::new();
        let mut buf = [0u8; 8192];
        let body = loop {
            let n = s.read(&mut buf).ok()?;
            if n == 0 {
                return None;
            }
            answer.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&answer);
            let Some((head, body)) = text.split_once("\r\n\r\n") else {
                continue;
            };
            let length: usize = head.lines().find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("content-length")
                    .then(|| v.trim().parse().ok())?
            })?;
            if body.len() >= length {
                break body.to_owned();
            }
        };
        let list: serde_json::Value = serde_json::from_str(&body).ok()?;
        list.as_array()?.iter().find(|t| t["type"] == "page")?["webSocketDebuggerUrl"]
            .as_str()
            .map(str::to_owned)
    }

    /// Evaluates `expression` in the page and returns its value (JSON); panics if it throws.
    pub fn eval(&mut self, expression: &str) -> serde_json::Value {
        self.try_eval(expression)
            .unwrap_or_else(|e| panic!("{expression} threw: {e}"))
    }

    /// Evaluates `expression` in the page: its value (JSON), or what it threw (the page may be
    /// between two documents while it loads).
    pub fn try_eval(&mut self, expression: &str) -> Result<serde_json::Value, String> {
        self.next_id += 1;
        let id = self.next_id;
        let ws = self.devtools.as_mut().expect("connected");
        let call = serde_json::json!({
            "id": id,
            "method": "Runtime.evaluate",
            "params": {"expression": expression, "returnByValue": true},
        });
        ws.send(tungstenite::Message::text(call.to_string()))
            .expect("DevTools send");
        loop {
            let m = ws.read().expect("DevTools answer");
            let Ok(text) = m.to_text() else { continue };
            let Ok(v) = serde_json::from_str::<serde_json::Value>(text) else {
                continue;
            };
            if v["id"] != id {
                continue; // an event
            }
            if let Some(e) = v.get("error").or(v["result"].get("exceptionDetails")) {
                return Err(e.to_string());
            }
            return Ok(v["result"]["result"]["value"].clone());
        }
    }

    /// Reads the DOM (as Chromium serializes it) every 200 ms until `done` holds for it (at
    /// most `within`); returns it.
    pub fn wait_for(
        &mut self,
        what: &str,
        within: Duration,
        done: impl Fn(&Dom) -> bool,
    ) -> String {
        let deadline = Instant::now() + within;
        loop {
            let read = self.try_eval("document.documentElement.outerHTML");
            if let Ok(html) = &read {
                let html = html.as_str().unwrap_or("").to_owned();
                if done(&Dom::parse(&html)) {
                    return html;
                }
            }
            assert!(
                Instant::now() < deadline,
                "the page did not show {what} within {within:?}; its DOM: {read:?}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for LivePage {
    fn drop(&mut self) {
        if let Some(mut ws) = self.devtools.take() {
            let _ = ws.close(None);
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}
