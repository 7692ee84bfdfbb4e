//! The live status page at the admin API's `/`, in a real headless Chromium driven over
//! WebDriver (Debian's `chromium` and `chromium-driver`, the `fantoccini` client): it loads
//! with no console errors, lists the configured listener and targets, shows a killed target
//! unhealthy within two of its refreshes, and its drain button (after a confirmation) drains
//! the target, as `GET /targets` confirms. A screenshot is written to
//! `target/tmp/status-page.png`. With a token configured, the browser's log-in (HTTP Basic,
//! the token as password) opens the page, and Basic credentials are held to the cross-site
//! rules a browser's ambient credentials need.

mod common;

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use fantoccini::wd::WebDriverCompatibleCommand;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{json, Value};

/// A chromedriver process on a free loopback port, and the browser profile its sessions
/// use. On drop both are killed: the driver, and any Chromium left on the profile (a test
/// that panics before closing its session would otherwise leave the browser running).
struct Driver {
    child: Child,
    url: String,
    profile: tempfile::TempDir,
}

impl Driver {
    fn start() -> Driver {
        need("chromedriver");
        need("chromium");
        let port = free_port();
        let child = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        wait_listening(SocketAddr::from(([127, 0, 0, 1], port)));
        Driver {
            child,
            url: format!("http://127.0.0.1:{port}"),
            profile: tempfile::tempdir().unwrap(),
        }
    }

    /// A new browser session: headless Chromium with a fresh profile, no background
    /// networking (this machine's network is closed), its console kept for [`BrowserLog`].
    async fn browser(&self) -> Client {
        let caps = json!({
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                "args": [
                    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                    "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync", "--disable-breakpad",
                    "--window-size=1500,900",
                    format!("--user-data-dir={}", self.profile.path().display()),
                ],
            },
            "goog:loggingPrefs": { "browser": "ALL" },
        });
        let Value::Object(caps) = caps else {
            unreachable!()
        };
        ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(caps)
            .connect(&self.url)
            .await
            .expect("a chromedriver session")
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let profile = format!("user-data-dir={}", self.profile.path().display());
        let _ = Command::new("pkill")
            .args(["-KILL", "-f", &profile])
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// ChromeDriver's console log of the page (`POST /session/{id}/se/log`, type `browser`):
/// entries `{level, message, timestamp}` since the last call.
#[derive(Debug)]
struct BrowserLog;

impl WebDriverCompatibleCommand for BrowserLog {
    fn endpoint(
        &self,
        base: &url::Url,
        session: Option<&str>,
    ) -> Result<url::Url, url::ParseError> {
        base.join(&format!("session/{}/se/log", session.unwrap_or_default()))
    }

    fn method_and_body(&self, _url: &url::Url) -> (http::Method, Option<String>) {
        (http::Method::POST, Some(r#"{"type":"browser"}"#.into()))
    }
}

/// The console entries at level SEVERE (errors, failed loads) so far.
async fn console_errors(browser: &Client) -> Vec<String> {
    let log = browser
        .issue_cmd(BrowserLog)
        .await
        .expect("the browser log");
    log.as_array()
        .expect("a list of log entries")
        .iter()
        .filter(|e| e["level"] == "SEVERE")
        .map(|e| e["message"].to_string())
        .collect()
}

/// Waits (bounded by [`WAIT`]) for the element `css`.
async fn element(browser: &Client, css: &str) -> fantoccini::elements::Element {
    let page = || async { browser.source().await.unwrap_or_default() };
    match browser
        .wait()
        .at_most(WAIT)
        .for_element(Locator::Css(css))
        .await
    {
        Ok(e) => e,
        Err(e) => panic!("no `{css}` within {WAIT:?} ({e}); page:\n{}", page().await),
    }
}

/// How many refreshes the page has completed.
async fn refreshes(browser: &Client) -> u64 {
    let updated = browser.find(Locator::Id("updated")).await.unwrap();
    let n = updated.attr("data-refreshes").await.unwrap();
    n.and_then(|n| n.parse().ok()).expect("data-refreshes")
}

/// Target `address` of group `g` in `GET /targets`.
fn target(admin: SocketAddr, token: Option<&str>, address: SocketAddr) -> Value {
    let (status, body) = http(admin, "GET", "/targets", token, "");
    assert_eq!(status, 200, "{body}");
    let doc: Value = serde_json::from_str(&body).unwrap();
    doc["target_groups"][0]["targets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["address"] == address.to_string())
        .cloned()
        .unwrap_or_else(|| panic!("{address} not in {body}"))
}

fn yaml(a: SocketAddr, b: SocketAddr) -> String {
    format!(
        "workers: 2\nlisteners:\n  - {{name: web, protocol: tcp, bind: '127.0.0.1:0', target_group: g}}\n\
         target_groups:\n  - name: g\n    health_check: {{protocol: tcp, interval: 100ms, timeout: 100ms, \
         unhealthy_threshold: 1, healthy_threshold: 1}}\n    queue: {{max: 50}}\n    targets:\n      \
         - {{address: '{a}', max_connections: 100}}\n      - {{address: '{b}', weight: 2}}\n"
    )
}

/// Writes `png` beside the other test artefacts and says where.
fn artefact(name: &str, png: &[u8]) {
    let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    std::fs::write(&path, png).unwrap();
    eprintln!("screenshot: {}", path.display());
}

#[tokio::test(flavor = "current_thread")]
async fn the_page_shows_health_live_and_drains_a_target_after_confirmation() {
    let a = Backend::start(named("a"));
    let mut b = Backend::start(named("b"));
    let ballast = Ballast::start(&format!(
        "admin: {{bind: '127.0.0.1:0'}}\n{}",
        yaml(a.addr, b.addr)
    ));
    let admin = ballast.admin_addr();
    for _ in 0..6 {
        fetch(ballast.addr("web")).unwrap();
    }
    let driver = Driver::start();
    let browser = driver.browser().await;
    browser.goto(&format!("http://{admin}/")).await.unwrap();

    // Lists the listener and both targets, healthy, with their counters.
    let listener = element(&browser, "#listeners tr[data-key='web']").await;
    let text = listener.text().await.unwrap();
    assert!(text.contains(&ballast.addr("web").to_string()), "{text}");
    // The group's heading: its health, and its queue.
    let heading = element(&browser, "section[data-group='g'] h3").await;
    let text = heading.text().await.unwrap();
    assert!(text.contains("queue 0 of 50 waiting (0 refused)"), "{text}");
    let row_a = format!("section[data-group='g'] tr[data-key='{}']", a.addr);
    let row_b = format!("section[data-group='g'] tr[data-key='{}']", b.addr);
    element(&browser, &format!("{row_a}[data-health='healthy']")).await;
    let b_row = element(&browser, &format!("{row_b}[data-health='healthy']")).await;
    let text = b_row.text().await.unwrap();
    assert!(
        text.contains("healthy") && text.contains("active"),
        "{text}"
    );
    let total = |t: Value| t["total"].as_u64().unwrap();
    assert_eq!(
        total(target(admin, None, a.addr)) + total(target(admin, None, b.addr)),
        6
    );

    // Connections/s per target: a sparkline with a peak above zero once traffic passed
    // between two refreshes.
    let spark = format!("{row_a} td:nth-child(7) svg");
    let deadline = Instant::now() + WAIT;
    loop {
        for _ in 0..4 {
            fetch(ballast.addr("web")).unwrap();
        }
        let svg = element(&browser, &spark).await;
        let label = svg.attr("aria-label").await.unwrap().unwrap_or_default();
        let points = element(&browser, &format!("{spark} polyline")).await;
        let points = points.attr("points").await.unwrap().unwrap_or_default();
        let drawn = points.split(' ').count() >= 2;
        if drawn && label.contains("peak") && !label.contains("peak 0.0/s") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no rate drawn within {WAIT:?}: {label}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // A killed target shows unhealthy within two refreshes of the prober seeing it.
    b.stop();
    wait_until("target b unhealthy in /targets", || {
        target(admin, None, b.addr)["health"] == "unhealthy"
    });
    let seen = refreshes(&browser).await;
    element(&browser, &format!("{row_b}[data-health='unhealthy']")).await;
    let shown = refreshes(&browser).await;
    assert!(
        shown <= seen + 2,
        "unhealthy shown after {} refreshes",
        shown - seen
    );

    // Drain asks first: cancelled, nothing changes.
    let drain = format!("{row_a} button[data-action='drain']");
    element(&browser, &drain).await.click().await.unwrap();
    let dialog = element(&browser, "dialog#confirm[open]").await;
    let question = dialog.text().await.unwrap();
    assert!(question.contains(&a.addr.to_string()), "{question}");
    element(&browser, "#confirm-cancel")
        .await
        .click()
        .await
        .unwrap();
    let closed = browser.find(Locator::Css("dialog#confirm[open]")).await;
    assert!(closed.is_err(), "the dialog stays open after Cancel");
    assert_eq!(target(admin, None, a.addr)["admin_state"], "active");

    // Confirmed, the target drains.
    element(&browser, &drain).await.click().await.unwrap();
    element(&browser, "#confirm-ok")
        .await
        .click()
        .await
        .unwrap();
    wait_until("target a draining in /targets", || {
        target(admin, None, a.addr)["admin_state"] == "draining"
    });
    element(&browser, &format!("{row_a}[data-state='draining']")).await;
    let message = element(&browser, "#message").await.text().await.unwrap();
    assert!(message.contains("draining"), "{message}");

    // Why b is down, and for how long; process facts; numbers as people write them.
    let b_text = element(&browser, &format!("{row_b}[data-health='unhealthy']"))
        .await
        .text()
        .await
        .unwrap();
    assert!(b_text.contains("fail: connection refused"), "{b_text}");
    assert!(b_text.contains("unhealthy · "), "time in state: {b_text}");
    let process = element(&browser, "#process").await.text().await.unwrap();
    assert!(
        process.contains(&format!("PID {}", ballast.pid())) && process.contains("2 workers"),
        "{process}"
    );
    let page = browser
        .execute("return document.body.innerText", vec![])
        .await
        .unwrap();
    let page = page.as_str().unwrap_or_default().to_string();
    let long_fraction = regex::Regex::new(r"\d\.\d{4,}").unwrap();
    assert!(
        !long_fraction.is_match(&page),
        "an unformatted number: {:?}",
        long_fraction.find(&page)
    );
    // At 1440 px nothing scrolls sideways.
    browser.set_window_size(1440, 900).await.unwrap();
    let widths = browser
        .execute(
            "return [document.documentElement.scrollWidth, window.innerWidth, \
             Math.max(...[...document.querySelectorAll('.scroll')].map(e => e.scrollWidth - e.clientWidth))]",
            vec![],
        )
        .await
        .unwrap();
    let widths: Vec<i64> = serde_json::from_value(widths).unwrap();
    assert!(
        widths[0] <= widths[1] && widths[2] <= 0,
        "scrolls sideways at 1440 px: page {} of {}, a table by {}",
        widths[0],
        widths[1],
        widths[2]
    );

    // The node drain button, after a confirmation; then Enable node serves again.
    element(&browser, "#node-action[data-action='drain']")
        .await
        .click()
        .await
        .unwrap();
    let question = element(&browser, "dialog#confirm[open]")
        .await
        .text()
        .await
        .unwrap();
    assert!(question.contains("Drain this node?"), "{question}");
    element(&browser, "#confirm-ok")
        .await
        .click()
        .await
        .unwrap();
    wait_until("the node draining in /node", || {
        get_json(admin, "/node")["service"] == "draining"
    });
    element(&browser, "#node .badge.draining").await;
    element(&browser, "#node-action[data-action='enable']")
        .await
        .click()
        .await
        .unwrap();
    element(&browser, "#confirm-ok")
        .await
        .click()
        .await
        .unwrap();
    wait_until("the node serving in /node", || {
        get_json(admin, "/node")["service"] == "serving"
    });
    element(&browser, "#node-action[data-action='drain']").await;

    artefact("status-page.png", &browser.screenshot().await.unwrap());
    let errors = console_errors(&browser).await;
    assert!(errors.is_empty(), "console errors: {errors:#?}");
    browser.close().await.unwrap();
}

/// A raw request to `admin` with `headers` (`\r\n`-terminated lines); the status and head.
fn raw(admin: SocketAddr, request_line: &str, headers: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(admin).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    write!(
        s,
        "{request_line} HTTP/1.0\r\nHost: {admin}\r\n{headers}\r\n"
    )
    .unwrap();
    let mut response = String::new();
    s.read_to_string(&mut response).unwrap();
    let status = response[9..12].parse().unwrap();
    (status, response)
}

#[tokio::test(flavor = "current_thread")]
async fn with_a_token_the_browser_logs_in_and_basic_credentials_keep_the_cross_site_rules() {
    let a = Backend::start(named("a"));
    let b = Backend::start(named("b"));
    let dir = tempfile::tempdir().unwrap();
    let ballast = Ballast::start(&with_token(dir.path(), "", &yaml(a.addr, b.addr)));
    let admin = ballast.admin_addr();
    // "ballast:s3cret" and "ballast:wrong".
    let (good, bad) = ("YmFsbGFzdDpzM2NyZXQ=", "YmFsbGFzdDp3cm9uZw==");

    let (status, head) = raw(admin, "GET /", "");
    assert_eq!(status, 401, "{head}");
    assert!(head.contains("www-authenticate: Basic realm="), "{head}");
    assert_eq!(
        raw(admin, "GET /", &format!("Authorization: Basic {bad}\r\n")).0,
        401
    );
    let (status, page) = raw(admin, "GET /", &format!("Authorization: Basic {good}\r\n"));
    assert_eq!(status, 200, "{page}");
    assert!(
        page.contains("content-security-policy: default-src 'none'"),
        "{page}"
    );
    assert!(page.contains("x-frame-options: DENY"), "{page}");

    // Basic credentials ride along with any request a browser makes, so a change must also
    // show it is no cross-site form: JSON, and this API's Host.
    let drain = format!("POST /target-groups/g/targets/{}/drain", a.addr);
    let basic = format!("Authorization: Basic {good}\r\n");
    let form = format!("{basic}Content-Type: application/x-www-form-urlencoded\r\n");
    assert_eq!(raw(admin, &drain, &form).0, 415);
    assert_eq!(
        target(admin, Some("s3cret"), a.addr)["admin_state"],
        "active"
    );
    let bearer = "Authorization: Bearer s3cret\r\n";
    assert_eq!(
        raw(admin, &drain, bearer).0,
        200,
        "a bearer token is never ambient"
    );
    let enable = format!("POST /target-groups/g/targets/{}/enable", a.addr);
    let json = format!("{basic}Content-Type: application/json\r\n");
    assert_eq!(raw(admin, &enable, &json).0, 200);

    // A browser given the credentials loads the page and its data.
    let driver = Driver::start();
    let browser = driver.browser().await;
    let started = Instant::now();
    browser
        .goto(&format!("http://ballast:s3cret@{admin}/"))
        .await
        .unwrap();
    let row = format!(
        "section[data-group='g'] tr[data-key='{}'][data-health='healthy']",
        b.addr
    );
    element(&browser, &row).await;
    assert!(started.elapsed() < WAIT + Duration::from_secs(1));
    let errors = console_errors(&browser).await;
    assert!(errors.is_empty(), "console errors: {errors:#?}");
    browser.close().await.unwrap();
}

#[tokio::test(flavor = "current_thread")]
async fn in_a_fleet_the_page_lists_every_node_and_says_when_etcd_is_away() {
    let mut etcd = common::etcd::Etcd::start();
    let a = Backend::start(named("a"));
    let b = Backend::start(named("b"));
    let node = |id: &str| {
        Ballast::start(&format!(
            "cluster:\n  node_id: {id}\n  etcd: {{endpoints: ['{}'], prefix: /ballast/page}}\n{}",
            etcd.url(),
            yaml(a.addr, b.addr)
        ))
    };
    let (n1, _n2) = (node("n1"), node("n2"));
    let driver = Driver::start();
    let browser = driver.browser().await;
    browser
        .goto(&format!("http://{}/", n1.admin_addr()))
        .await
        .unwrap();
    element(&browser, "#fleet tr[data-key='n2']").await;
    let me = element(&browser, "#fleet tr[data-key='n1']").await;
    let text = me.text().await.unwrap();
    assert!(
        text.contains("n1 (this node)") && text.contains("in step"),
        "{text}"
    );
    let summary = element(&browser, "#fleet-summary").await;
    assert!(summary.text().await.unwrap().contains("etcd connected"));
    // etcd goes: the page says so within a few refreshes.
    etcd.stop();
    let deadline = Instant::now() + WAIT;
    loop {
        let text = summary.text().await.unwrap();
        if text.contains("not reached") {
            break;
        }
        assert!(Instant::now() < deadline, "still: {text}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    artefact(
        "status-page-fleet.png",
        &browser.screenshot().await.unwrap(),
    );
    let errors = console_errors(&browser).await;
    assert!(errors.is_empty(), "console errors: {errors:#?}");
    browser.close().await.unwrap();
}
