//! The web pages in a real headless Chromium, driven through ChromeDriver's WebDriver
//! protocol, against the report service on the real broker, object store and PostgreSQL.
//!
//! Needs Debian's `chromium` and `chromium-driver` (`scripts/setup.sh` installs them when
//! it runs as root). Screenshots go to `target/test-artifacts/report-pages/`.

mod common;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{analysed, get, rejected, wait_for, Findings, Servers, NORTH_TOKEN};
use lungstream_report::render_overlay;
use lungstream_schemas::events::SeriesOutcome;
use lungstream_schemas::report::Decision;
use lungstream_schemas::ReasonCode;
use serde_json::{json, Value};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
/// Key of an element reference in WebDriver replies.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// A ChromeDriver process and one browser session, both ended on drop.
struct Browser {
    driver: Child,
    base: String,
    session: String,
    client: reqwest::Client,
    profile: PathBuf,
}

impl Browser {
    async fn start() -> Browser {
        for tool in [CHROMIUM, CHROMEDRIVER] {
            assert!(
                std::path::Path::new(tool).exists(),
                "{tool} is missing: install Debian's chromium and chromium-driver (scripts/setup.sh does so as root)"
            );
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let driver = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver starts");
        let base = format!("http://127.0.0.1:{port}");
        let client = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let ready = match client.get(format!("{base}/status")).send().await {
                Ok(r) => r.status().is_success(),
                Err(_) => false,
            };
            if ready {
                break;
            }
            assert!(Instant::now() < deadline, "chromedriver did not answer in 20 s");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let profile = std::env::temp_dir().join(format!("lungstream-chromium-{}-{port}", std::process::id()));
        let mut browser = Browser {
            driver,
            base,
            session: String::new(),
            client,
            profile,
        };
        let capabilities = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": CHROMIUM,
                "args": [
                    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                    "--disable-background-networking", "--disable-component-update", "--disable-sync",
                    "--window-size=1280,1800",
                    format!("--user-data-dir={}", browser.profile.display()),
                ]
            }
        }}});
        let reply = browser.call("POST", "/session", Some(capabilities)).await;
        browser.session = reply["sessionId"].as_str().expect("a session id").to_string();
        // Element lookups wait up to 10 s for the element to appear.
        browser.call("POST", "/timeouts", Some(json!({"implicit": 10_000}))).await;
        browser
    }

    /// Sends one WebDriver command and returns its `value`; panics on a WebDriver error.
    async fn call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let url = if path == "/session" {
            format!("{}{path}", self.base)
        } else {
            format!("{}/session/{}{path}", self.base, self.session)
        };
        let request = match method {
            "GET" => self.client.get(url),
            "DELETE" => self.client.delete(url),
            _ => self
                .client
                .post(url)
                .header("content-type", "application/json")
                .body(body.unwrap_or_else(|| json!({})).to_string()),
        };
        let response = request.send().await.expect("chromedriver answers");
        let status = response.status();
        let reply: Value = serde_json::from_slice(&response.bytes().await.unwrap()).unwrap();
        assert!(status.is_success(), "WebDriver {method} {path} failed: {reply}");
        reply["value"].clone()
    }

    async fn open(&self, url: &str) {
        self.call("POST", "/url", Some(json!({"url": url}))).await;
    }

    async fn url(&self) -> String {
        self.call("GET", "/url", None).await.as_str().unwrap().to_string()
    }

    /// Waits up to 10 s for the address to contain `part`, and returns it.
    async fn wait_url(&self, part: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let url = self.url().await;
            if url.contains(part) {
                return url;
            }
            assert!(Instant::now() < deadline, "the browser is at {url}, not at an address with {part}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn find(&self, css: &str) -> String {
        let reply = self
            .call("POST", "/element", Some(json!({"using": "css selector", "value": css})))
            .await;
        reply[ELEMENT].as_str().unwrap().to_string()
    }

    async fn count(&self, css: &str) -> usize {
        self.call("POST", "/elements", Some(json!({"using": "css selector", "value": css})))
            .await
            .as_array()
            .unwrap()
            .len()
    }

    async fn text(&self, css: &str) -> String {
        let element = self.find(css).await;
        self.call("GET", &format!("/element/{element}/text"), None)
            .await
            .as_str()
            .unwrap()
            .to_string()
    }

    async fn click(&self, css: &str) {
        let element = self.find(css).await;
        self.call("POST", &format!("/element/{element}/click"), None).await;
    }

    async fn type_into(&self, css: &str, text: &str) {
        let element = self.find(css).await;
        self.call("POST", &format!("/element/{element}/value"), Some(json!({"text": text})))
            .await;
    }

    async fn script(&self, script: &str) -> Value {
        self.call("POST", "/execute/sync", Some(json!({"script": script, "args": []})))
            .await
    }

    /// Saves a screenshot of the window and checks that it is a PNG.
    async fn screenshot(&self, name: &str) {
        let data = self.call("GET", "/screenshot", None).await;
        let png = base64_decode(data.as_str().unwrap());
        assert!(png.starts_with(b"\x89PNG"), "the screenshot is not a PNG");
        let folder = artifacts();
        std::fs::create_dir_all(&folder).unwrap();
        std::fs::write(folder.join(format!("{name}.png")), png).unwrap();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            let url = format!("{}/session/{}", self.base, self.session);
            // Drop cannot await; a blocking client on its own thread ends the session.
            let _ = std::thread::spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
                runtime.block_on(async { reqwest::Client::new().delete(url).send().await.map(|_| ()) })
            })
            .join();
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

fn base64_decode(text: &str) -> Vec<u8> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.decode(text).expect("base64")
}

/// Folder of the screenshots: `target/test-artifacts/report-pages`.
fn artifacts() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target"));
    target.join("test-artifacts").join("report-pages")
}

/// Draws an overlay like the infer service's: a synthetic chest slice (body, two lungs, a
/// patch of ground glass in the right lung) drawn by the service's own renderer, with the
/// patch marked in red on the left half.
fn chest_overlay(shift: usize) -> Vec<u8> {
    let (rows, columns) = (256usize, 256usize);
    let inside = |r: usize, c: usize, cr: f64, cc: f64, ar: f64, ac: f64| {
        let (dr, dc) = ((r as f64 - cr) / ar, (c as f64 - cc) / ac);
        dr * dr + dc * dc <= 1.0
    };
    let patch = |r: usize, c: usize| inside(r, c, 150.0, 80.0 + shift as f64, 22.0, 18.0);
    let mut hu = vec![-1000i16; rows * columns];
    for r in 0..rows {
        for c in 0..columns {
            let value = if inside(r, c, 128.0, 85.0, 70.0, 40.0) || inside(r, c, 128.0, 171.0, 70.0, 40.0) {
                if patch(r, c) {
                    -450
                } else {
                    -860
                }
            } else if inside(r, c, 128.0, 128.0, 100.0, 120.0) {
                40
            } else {
                -1000
            };
            hu[r * columns + c] = value;
        }
    }
    let mut image = render_overlay(&hu, rows, columns, &[]);
    for r in 0..rows {
        for c in 0..columns {
            if patch(r, c) && inside(r, c, 128.0, 85.0, 70.0, 40.0) {
                let p = (r * image.width + c) * 3;
                image.data[p] = 230;
                image.data[p + 1] /= 3;
                image.data[p + 2] /= 3;
            }
        }
    }
    image.to_png()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_in_headless_chromium() {
    let servers = Servers::new("report-browser");
    let store = servers.store();
    let (running, shutdown) = servers.start().await;
    let producer = servers.producer();

    // North: a severe COVID-19 study with real-looking overlays, a mild other-disease
    // study, a healthy one and a rejected one. South: one study north must not see.
    let studies = [
        ("1.2.826.0.1.7001", Decision::Covid19, 0.93, 0.87, 35.0),
        ("1.2.826.0.1.7002", Decision::OtherDisease, 0.71, 0.12, 8.0),
        ("1.2.826.0.1.7003", Decision::Healthy, 0.04, 0.30, 0.5),
    ];
    for (i, (study_uid, decision, p_diseased, p_covid, percent)) in studies.iter().enumerate() {
        let findings = Findings {
            decision: *decision,
            p_diseased: *p_diseased,
            p_covid: *p_covid,
            infected_percent: *percent,
            ..Findings::default()
        };
        let (event, _) = analysed(&store, "north", study_uid, &format!("{study_uid}.1"), 1, &findings).await;
        if i == 0 {
            let SeriesOutcome::Analysed(analysis) = &event.outcome else { unreachable!() };
            for (j, key) in analysis.overlay_keys.iter().enumerate() {
                store.put(key, chest_overlay(j * 12).into()).await.unwrap();
            }
        }
        servers.send(&producer, &event).await;
    }
    servers
        .send(&producer, &rejected("north", "1.2.826.0.1.7004", "1.2.826.0.1.7004.1", 1, ReasonCode::NoLungs))
        .await;
    let (south, _) = analysed(&store, "south", "1.2.826.0.1.7100", "1.2.826.0.1.7100.1", 1, &Findings::default()).await;
    servers.send(&producer, &south).await;
    wait_for("four north studies in the worklist", || async {
        let reply = get(&running, "/api/v1/worklist", Some(NORTH_TOKEN)).await;
        reply.status == 200 && reply.json().as_array().map(Vec::len) == Some(4)
    })
    .await;
    wait_for("the south study", || async {
        get(&running, "/api/v1/worklist", Some(common::SOUTH_TOKEN)).await.json().as_array().map(Vec::len) == Some(1)
    })
    .await;

    let site = format!("http://{}", running.http_address);
    let browser = Browser::start().await;

    // Without a session every page leads to the login form, which returns there.
    browser.open(&format!("{site}/worklist?sort=severity")).await;
    assert!(browser.url().await.contains("/login?next="), "{}", browser.url().await);
    browser.type_into("#token", "not-a-real-token").await;
    browser.click("#login").await;
    assert_eq!(browser.text("#login-error").await, "This token is not valid.");
    browser.screenshot("01-login-refused").await;
    browser.type_into("#token", NORTH_TOKEN).await;
    browser.click("#login").await;
    assert_eq!(browser.wait_url("/worklist").await, format!("{site}/worklist?sort=severity"));

    // The worklist: north's four studies, the most infected first, the rejected last.
    assert_eq!(browser.text("#hospital").await, "north");
    assert_eq!(browser.count("#worklist tr.study").await, 4);
    let first = browser.text("#worklist tr.study:nth-of-type(2)").await;
    for expected in ["35.0%", "COVID-19 pneumonia", "0.930", "0.870", "42.0", "24.5", "1400", "1.2.826.0.1.7001"] {
        assert!(first.contains(expected), "{expected} is not in the first row: {first}");
    }
    let last = browser.text("#worklist tr.study:nth-of-type(5)").await;
    assert!(last.contains("rejected: no_lungs"), "{last}");
    let page = browser.text("main").await;
    assert!(!page.contains("1.2.826.0.1.7100"), "the south study is listed for north");
    assert!(browser.text("#research-banner").await.contains("not for clinical decisions"));
    assert!(first.contains("lungstream-test research only"), "{first}");
    browser.screenshot("02-worklist").await;

    // Filters through the form.
    browser.click("#decision option[value=other_disease]").await;
    browser.click("#apply").await;
    browser.wait_url("decision=other_disease").await;
    assert_eq!(browser.count("#worklist tr.study").await, 1);
    assert!(browser.text("#worklist").await.contains("1.2.826.0.1.7002"));
    browser.click("#decision option[value='']").await;
    browser.click("#sort option[value=time]").await;
    browser.click("#apply").await;
    browser.wait_url("sort=time").await;
    assert_eq!(browser.count("#worklist tr.study").await, 4);

    // The study page of the severe study.
    browser.click("a[href='/studies/1.2.826.0.1.7001']").await;
    assert_eq!(browser.wait_url("/studies/").await, format!("{site}/studies/1.2.826.0.1.7001"));
    assert_eq!(browser.text("#decision").await, "COVID-19 pneumonia");
    assert_eq!(browser.text("#p-diseased").await, "0.930");
    assert_eq!(browser.text("#p-covid").await, "0.870");
    // The test findings: the right lung (2400 mL) 42 % infected, the left (1600 mL) 24.5 %.
    assert_eq!(browser.text("#infected-percent").await, "infected, % of each lung 42.00 24.50 35.00");
    assert_eq!(browser.text("#infected-ml").await, "infected, mL 1008.0 392.0 1400.0");
    assert!(browser.text("#mf-infected").await.ends_with("6.00"));
    assert_eq!(browser.text("#background-hu").await, "-1000 HU");
    let hospital_background = browser.text("#background-hospital").await;
    assert!(hospital_background.starts_with("-1000"), "{hospital_background}");
    let statement = browser.text("#model-statement").await;
    for expected in ["lungstream-test", "model-v1", "narrow configuration", "trained on phantoms", "research only"] {
        assert!(statement.contains(expected), "{expected} is not in the model statement: {statement}");
    }
    assert_eq!(browser.count("#overlays img").await, 2);
    let loaded = browser
        .script("return Array.from(document.querySelectorAll('#overlays img')).map(i => i.complete && i.naturalWidth)")
        .await;
    assert_eq!(loaded, json!([512, 512]), "the overlays did not load");
    browser.screenshot("03-study").await;

    // The rejected study shows its reason code.
    browser.open(&format!("{site}/studies/1.2.826.0.1.7004")).await;
    assert_eq!(browser.text("#decision").await, "Not analysed: no_lungs");
    // Another hospital's study is refused, and an unknown one is not found.
    browser.open(&format!("{site}/studies/1.2.826.0.1.7100")).await;
    assert!(browser.text("main").await.contains("belongs to another hospital"));
    browser.open(&format!("{site}/studies/1.2.826.0.1.7100/overlays/slice-0010.png")).await;
    assert!(browser.text("main").await.contains("belongs to another hospital"));
    browser.open(&format!("{site}/studies/9.9.9")).await;
    assert!(browser.text("main").await.contains("study 9.9.9 not found"));

    // The dashboard: one study of each class today.
    browser.open(&format!("{site}/dashboard")).await;
    assert_eq!(browser.text("#total-all").await, "4");
    for i in 0..4 {
        assert_eq!(browser.text(&format!("#total-{i}")).await, "1");
    }
    assert_eq!(browser.count("#per-day-chart rect").await, 4);
    let bars = browser
        .script("return Array.from(document.querySelectorAll('#severity-chart rect')).filter(r => r.getAttribute('height') !== '0.0').length")
        .await;
    // 0.5 % and 8 % share the first bin; 35 % is in the fourth.
    assert_eq!(bars, json!(2), "two severity bins hold studies");
    browser.screenshot("04-dashboard").await;

    // Logging out ends the session, on the server too.
    browser.click("header button").await;
    assert!(browser.wait_url("/login").await.ends_with("/login"));
    browser.open(&format!("{site}/dashboard")).await;
    assert!(browser.url().await.contains("/login?next=%2Fdashboard"));

    drop(browser);
    shutdown.cancel();
    running.wait().await.unwrap();
}

/// The pages without a browser: redirects, cookies, headers, and no access without a
/// session or with another hospital's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_need_a_session() {
    let servers = Servers::new("report-pages");
    let (running, shutdown) = servers.start().await;
    let site = format!("http://{}", running.http_address);
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();

    let reply = client.get(format!("{site}/worklist")).send().await.unwrap();
    assert_eq!(reply.status(), 303);
    assert_eq!(reply.headers()["location"], "/login?next=%2Fworklist");
    // A forged session is no session.
    let reply = client
        .get(format!("{site}/dashboard"))
        .header("cookie", "lungstream_session=forged")
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), 303);

    let reply = client
        .post(format!("{site}/login"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("token={NORTH_TOKEN}&next=https%3A%2F%2Fevil.example%2F"))
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), 303);
    assert_eq!(reply.headers()["location"], "/worklist", "an outside address is not followed");
    let cookie = reply.headers()["set-cookie"].to_str().unwrap().to_string();
    for attribute in ["HttpOnly", "SameSite=Strict", "Secure", "Path=/"] {
        assert!(cookie.contains(attribute), "{cookie}");
    }
    let session = cookie.split(';').next().unwrap().to_string();
    let reply = client
        .get(format!("{site}/worklist"))
        .header("cookie", &session)
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), 200);
    assert_eq!(reply.headers()["cache-control"], "no-store");
    assert!(reply.headers()["content-security-policy"].to_str().unwrap().contains("default-src 'none'"));
    assert!(reply.text().await.unwrap().contains("No studies match."));

    // A login form posted from another site is refused.
    let reply = client
        .post(format!("{site}/login"))
        .header("content-type", "application/x-www-form-urlencoded")
        .header("origin", "https://evil.example")
        .body(format!("token={NORTH_TOKEN}"))
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), 403);
    // Bad parameters are an HTML error page, not a crash.
    let reply = client
        .get(format!("{site}/dashboard?days=9999"))
        .header("cookie", &session)
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), 400);
    assert!(reply.text().await.unwrap().contains("days 9999 is out of range"));
    shutdown.cancel();
    running.wait().await.unwrap();

    // North's token is rotated: the session opened with the old one no longer counts.
    let mut config = servers.config();
    config.tenants[0].tokens = vec!["north-rotated-token-0123456789".into()];
    let shutdown = tokio_util::sync::CancellationToken::new();
    let running = lungstream_report::service::start(config, shutdown.clone()).await.unwrap();
    let site = format!("http://{}", running.http_address);
    let reply = client
        .get(format!("{site}/worklist"))
        .header("cookie", &session)
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), 303, "a session of a removed token still works");
    shutdown.cancel();
    running.wait().await.unwrap();
}
