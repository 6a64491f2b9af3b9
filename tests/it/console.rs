//! The operator's console in real headless Chromium, driven over WebDriver (fantoccini and
//! Debian's chromedriver, which `cargo xtask test` installs): live counters, a dead letter
//! replayed from the page, a broken upload refused while the old version runs on, and the
//! token gate. `PATCHBAY_SCREENSHOT=docs/console.png` also writes the README's screenshot.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};

use crate::admin::{enrichment_pipeline, free_port};
use crate::{Running, Scratch};

/// A chromedriver on a free port, killed when dropped.
struct Driver {
    child: Child,
    url: String,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn chromedriver() -> Driver {
    let port = free_port();
    let child = Command::new("chromedriver")
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("chromedriver (Debian package chromium-driver; `cargo xtask test` installs it)");
    let started = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "chromedriver did not listen"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    Driver {
        child,
        url: format!("http://127.0.0.1:{port}"),
    }
}

/// A headless Chromium session with a laptop-sized window.
async fn browser(driver: &Driver) -> Client {
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        serde_json::json!({
            "binary": "/usr/bin/chromium",
            "args": ["--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                     "--disable-gpu", "--window-size=1366,900"],
        }),
    );
    ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(&driver.url)
        .await
        .expect("a Chromium session")
}

/// The text of `css` once it satisfies `ok` (within 60 s).
async fn text_when(c: &Client, css: &str, ok: impl Fn(&str) -> bool) -> String {
    let started = Instant::now();
    let mut last = String::new();
    while started.elapsed() < Duration::from_secs(60) {
        if let Ok(el) = c.find(Locator::Css(css)).await
            && let Ok(text) = el.text().await
        {
            if ok(&text) {
                return text;
            }
            last = text;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("`{css}` never showed what was expected; last text: {last:?}");
}

fn number(text: &str) -> u64 {
    text.replace(',', "").trim().parse().unwrap_or(0)
}

#[test]
fn the_console_shows_live_counters_replays_a_dead_letter_and_refuses_a_broken_upload() {
    let _redis = crate::redis::redis_lock();
    crate::redis::require_redis();
    let s = Scratch::new();
    s.mkdir("out");
    let port = free_port();
    let prefix = format!("console-{port}");
    for seq in (0..20).step_by(2) {
        crate::redis::cli(&["SET", &format!("{prefix}:{seq}"), r#"{"ok":true}"#]);
    }
    s.write("p.toml", &enrichment_pipeline(&prefix));
    s.write("broken.wasm", "this is not a component");
    let _patchbay = Running::start(
        s.path(),
        &["run", "p.toml", "--admin", &format!("127.0.0.1:{port}")],
    );
    let driver = chromedriver();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let c = browser(&driver).await;
        c.goto(&format!("http://127.0.0.1:{port}/")).await.unwrap();
        // Live counters: the ticker's count rises without a reload of the page.
        let counter = "#pipeline-forever [data-counter='in']";
        let first = number(&text_when(&c, counter, |t| number(t) > 0).await);
        text_when(&c, counter, |t| number(t) > first + 20).await;
        assert_eq!(text_when(&c, "#health", |t| !t.is_empty()).await, "healthy");

        // The ten records without data are listed as dead letters.
        text_when(&c, "#dl-total", |t| t == "10 entries").await;
        let row = c
            .find(Locator::Css("tr[data-id='orders:1']"))
            .await
            .unwrap();
        let row_text = row.text().await.unwrap();
        assert!(
            row_text.contains("transform #1 lookup invalid-data"),
            "{row_text}"
        );
        if let Ok(path) = std::env::var("PATCHBAY_SCREENSHOT") {
            // Let the chart gather half a minute first.
            tokio::time::sleep(Duration::from_secs(30)).await;
            let png = c.screenshot().await.unwrap();
            std::fs::write(crate::root().join(path), png).unwrap();
        }

        // Its data arrives; choose it on the page and replay it.
        crate::redis::cli(&["SET", &format!("{prefix}:1"), r#"{"ok":true}"#]);
        c.find(Locator::Css("input[aria-label='Choose orders:1']"))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
        c.find(Locator::Id("dl-replay"))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
        let said = text_when(&c, "#dl-message", |t| !t.is_empty()).await;
        assert_eq!(
            said,
            "Replayed. orders: 1 replayed, 1 delivered, 0 dead-lettered again."
        );
        text_when(&c, "#dl-total", |t| t == "9 entries").await;
        let written = s.read("out/out.jsonl");
        assert_eq!(written.lines().count(), 11, "{written}");
        assert!(
            written.lines().any(|l| l.contains(r#""seq":1,"#)),
            "{written}"
        );

        // A broken component uploaded for the running blackhole: refused with the reason, and
        // the old version goes on.
        let upload = c.find(Locator::Id("reload-null-file")).await.unwrap();
        upload
            .send_keys(&s.path().join("broken.wasm").display().to_string())
            .await
            .unwrap();
        c.find(Locator::Css("#plugin-null form.reload button"))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
        let refused = text_when(&c, "#reload-null-result", |t| !t.is_empty()).await;
        assert!(refused.starts_with("Refused: "), "{refused}");
        assert!(
            refused.ends_with("The running version goes on."),
            "{refused}"
        );
        assert!(
            refused.contains("null-"),
            "the upload's file is named: {refused}"
        );
        let generation = c
            .find(Locator::Css("#plugin-null [data-field='generation']"))
            .await
            .unwrap();
        assert_eq!(generation.text().await.unwrap(), "0");
        let before = number(&text_when(&c, counter, |_| true).await);
        text_when(&c, counter, |t| number(t) > before + 20).await;
        c.close().await.unwrap();
    });
    crate::redis::cli(&[
        "EVAL",
        "for _,k in ipairs(redis.call('KEYS', ARGV[1])) do redis.call('DEL', k) end",
        "0",
        &format!("{prefix}:*"),
    ]);
}

#[test]
fn with_a_token_the_console_asks_for_it_and_shows_nothing_without_it() {
    let s = Scratch::new();
    s.write("p.toml", crate::admin::FOREVER);
    let port = free_port();
    let _patchbay = Running::start(
        s.path(),
        &[
            "run",
            "p.toml",
            "--admin",
            &format!("127.0.0.1:{port}"),
            "--admin-token",
            "s3cret",
        ],
    );
    let driver = chromedriver();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let c = browser(&driver).await;
        c.goto(&format!("http://127.0.0.1:{port}/")).await.unwrap();
        let form = c
            .wait()
            .at_most(Duration::from_secs(30))
            .for_element(Locator::Id("token-form"))
            .await
            .unwrap();
        let body = c
            .find(Locator::Css("body"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(
            !body.contains("forever"),
            "a pipeline shows before the token: {body}"
        );
        assert!(c.find(Locator::Id("pipelines-title")).await.is_err());
        // A wrong token is refused, and still nothing shows.
        let input = form.find(Locator::Id("token")).await.unwrap();
        input.send_keys("wrong").await.unwrap();
        form.find(Locator::Css("button"))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
        text_when(&c, "#token-error", |t| t == "That token was refused.").await;
        assert!(c.find(Locator::Id("pipelines-title")).await.is_err());
        // The right one opens the console.
        let input = c.find(Locator::Id("token")).await.unwrap();
        input.clear().await.unwrap();
        input.send_keys("s3cret").await.unwrap();
        c.find(Locator::Css("#token-form button"))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
        text_when(&c, "#pipeline-forever [data-counter='in']", |t| {
            number(t) > 0
        })
        .await;
        c.close().await.unwrap();
    });
}
