//! Headless Chromium driven over WebDriver (Debian's `chromium` and `chromium-driver`): just the
//! commands the end-to-end tests need, spoken as JSON over HTTP to a chromedriver we start.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use base64::Engine as _;
use serde_json::{json, Value};

const ELEMENT_KEY: &str = "element-6066-11e4-a52e-4f735466cecf";

fn setting(name: &str, default: &str) -> String {
    std::env::var(name)
        .ok()
        .filter(|value| !value.is_empty())
        .unwrap_or_else(|| default.to_string())
}

/// Installs Debian's `chromium` and `chromium-driver` once per test process, the way the run
/// command installs moto: only where the user may install packages (root with apt-get);
/// elsewhere the error says the one command to run.
fn install_chromium() -> Result<(), String> {
    static INSTALLED: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    INSTALLED
        .get_or_init(|| {
            let instruction = "the browser test needs Debian's chromium and chromium-driver: \
                               run `sudo apt-get install chromium chromium-driver`";
            let root = Command::new("id")
                .arg("-u")
                .output()
                .is_ok_and(|out| String::from_utf8_lossy(&out.stdout).trim() == "0");
            if !root || !std::path::Path::new("/usr/bin/apt-get").exists() {
                return Err(instruction.to_string());
            }
            eprintln!("crm-sync tests: installing chromium and chromium-driver (first run only)");
            let install = || {
                Command::new("apt-get")
                    .args(["install", "-y", "-qq", "chromium", "chromium-driver"])
                    .env("DEBIAN_FRONTEND", "noninteractive")
                    .stdout(Stdio::null())
                    .status()
                    .is_ok_and(|status| status.success())
            };
            let updated = || {
                Command::new("apt-get")
                    .args(["update", "-qq"])
                    .stdout(Stdio::null())
                    .status()
                    .is_ok_and(|status| status.success())
            };
            if install() || (updated() && install()) {
                Ok(())
            } else {
                Err(format!("apt-get could not install them; {instruction}"))
            }
        })
        .clone()
}

/// A browser session; dropping it ends the session and stops chromedriver.
pub struct Browser {
    http: reqwest::Client,
    session: String,
    driver_url: String,
    driver: Child,
    profile: std::path::PathBuf,
}

/// An element of the current page.
pub struct Element<'a> {
    browser: &'a Browser,
    id: String,
}

impl Browser {
    /// Starts chromedriver and a headless Chromium (`CHROMEDRIVER`, `CHROMIUM` override the paths).
    pub async fn start() -> anyhow::Result<Browser> {
        let chromedriver = setting("CHROMEDRIVER", "/usr/bin/chromedriver");
        let chromium = setting("CHROMIUM", "/usr/bin/chromium");
        let missing = || {
            [&chromedriver, &chromium]
                .into_iter()
                .find(|path| !std::path::Path::new(path.as_str()).exists())
                .cloned()
        };
        if missing().is_some() {
            install_chromium().map_err(anyhow::Error::msg)?;
        }
        if let Some(path) = missing() {
            anyhow::bail!("{path} is missing: install Debian's chromium and chromium-driver");
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let driver = Command::new(&chromedriver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        let driver_url = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()?;
        let profile = std::env::temp_dir().join(format!("crm-sync-chromium-{}-{port}", std::process::id()));
        let mut browser = Browser {
            http,
            session: String::new(),
            driver_url,
            driver,
            profile,
        };
        let mut ready = false;
        for _ in 0..100 {
            if let Ok(response) = browser
                .http
                .get(format!("{}/status", browser.driver_url))
                .send()
                .await
            {
                if response.status().is_success() {
                    ready = true;
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        anyhow::ensure!(ready, "chromedriver did not start");
        // The flags keep Chromium off the network it has no access to here, and out of a sandbox
        // that needs privileges the test runner may lack.
        let capabilities = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chromium,
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--disable-quic", "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync", "--window-size=1280,900",
                    format!("--user-data-dir={}", browser.profile.display()),
                ]
            }
        }}});
        let created = browser
            .call(
                reqwest::Method::POST,
                &format!("{}/session", browser.driver_url),
                Some(capabilities),
            )
            .await?;
        browser.session = created["sessionId"]
            .as_str()
            .ok_or_else(|| anyhow::anyhow!("no session id in {created}"))?
            .to_string();
        Ok(browser)
    }

    async fn call(&self, method: reqwest::Method, url: &str, body: Option<Value>) -> anyhow::Result<Value> {
        let mut request = self.http.request(method, url);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await?;
        let status = response.status();
        let value: Value = response.json().await?;
        anyhow::ensure!(status.is_success(), "WebDriver {url}: {status} {value}");
        Ok(value["value"].clone())
    }

    async fn command(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<Value> {
        let url = format!("{}/session/{}{path}", self.driver_url, self.session);
        self.call(method, &url, body).await
    }

    /// Runs `script` in the page (a function body; `arguments` are `args`) and returns what it
    /// returns; a returned promise is awaited.
    pub async fn execute(&self, script: &str, args: Value) -> anyhow::Result<Value> {
        self.command(
            reqwest::Method::POST,
            "/execute/sync",
            Some(json!({"script": script, "args": args})),
        )
        .await
    }

    /// Presses one key (`\u{E004}` is Tab) as a keyboard would.
    pub async fn press(&self, key: &str) -> anyhow::Result<()> {
        let actions = json!({"actions": [{
            "type": "key", "id": "keyboard",
            "actions": [{"type": "keyDown", "value": key}, {"type": "keyUp", "value": key}],
        }]});
        self.command(reqwest::Method::POST, "/actions", Some(actions))
            .await?;
        Ok(())
    }

    /// The serious and critical accessibility violations axe-core finds on the page (their rule,
    /// impact, help and the first elements), read from `axe_source` (axe.min.js).
    pub async fn accessibility_violations(&self, axe_source: &str) -> anyhow::Result<Vec<Value>> {
        self.execute(&format!("{axe_source}\nreturn true;"), json!([]))
            .await?;
        let found = self
            .execute(
                "return axe.run(document, {resultTypes: ['violations']}).then(function (result) {
                   return result.violations
                     .filter(function (v) { return v.impact === 'serious' || v.impact === 'critical'; })
                     .map(function (v) {
                       return {id: v.id, impact: v.impact, help: v.help,
                               nodes: v.nodes.slice(0, 3).map(function (n) { return n.target.join(' '); })};
                     });
                 });",
                json!([]),
            )
            .await?;
        Ok(found.as_array().cloned().unwrap_or_default())
    }

    pub async fn goto(&self, url: &str) -> anyhow::Result<()> {
        self.command(reqwest::Method::POST, "/url", Some(json!({"url": url})))
            .await?;
        Ok(())
    }

    pub async fn url(&self) -> anyhow::Result<String> {
        Ok(self
            .command(reqwest::Method::GET, "/url", None)
            .await?
            .as_str()
            .unwrap_or_default()
            .to_string())
    }

    pub async fn title(&self) -> anyhow::Result<String> {
        Ok(self
            .command(reqwest::Method::GET, "/title", None)
            .await?
            .as_str()
            .unwrap_or_default()
            .to_string())
    }

    pub async fn find(&self, css: &str) -> anyhow::Result<Element<'_>> {
        let found = match self
            .command(
                reqwest::Method::POST,
                "/element",
                Some(json!({"using": "css selector", "value": css})),
            )
            .await
        {
            Ok(found) => found,
            Err(error) => {
                let page = self.url().await.unwrap_or_default();
                let title = self.title().await.unwrap_or_default();
                anyhow::bail!("no element matches `{css}` on {page} ({title}): {error}");
            }
        };
        Ok(Element {
            browser: self,
            id: found[ELEMENT_KEY]
                .as_str()
                .map(str::to_string)
                .ok_or_else(|| anyhow::anyhow!("`{css}`: no element id in {found}"))?,
        })
    }

    pub async fn find_all(&self, css: &str) -> anyhow::Result<Vec<Element<'_>>> {
        let found = self
            .command(
                reqwest::Method::POST,
                "/elements",
                Some(json!({"using": "css selector", "value": css})),
            )
            .await?;
        Ok(found
            .as_array()
            .into_iter()
            .flatten()
            .map(|element| Element {
                browser: self,
                id: element[ELEMENT_KEY].as_str().unwrap_or_default().to_string(),
            })
            .collect())
    }

    /// Sets the viewport's outer size (a phone is about 390 x 844).
    pub async fn resize(&self, width: u32, height: u32) -> anyhow::Result<()> {
        self.command(
            reqwest::Method::POST,
            "/window/rect",
            Some(json!({"width": width, "height": height})),
        )
        .await?;
        Ok(())
    }

    /// A PNG of the viewport.
    pub async fn screenshot(&self) -> anyhow::Result<Vec<u8>> {
        let encoded = self.command(reqwest::Method::GET, "/screenshot", None).await?;
        Ok(base64::engine::general_purpose::STANDARD.decode(encoded.as_str().unwrap_or_default())?)
    }
}

impl Element<'_> {
    /// Clicks a link or submit button and waits for the page it leads to. A click returns once the
    /// event is dispatched, which can be before the old page is gone; looking for the new page's
    /// elements then would search the old one.
    pub async fn click_through(&self) -> anyhow::Result<()> {
        let old_page = self.browser.find("html").await?;
        self.browser
            .command(
                reqwest::Method::POST,
                &format!("/element/{}/click", self.id),
                Some(json!({})),
            )
            .await?;
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        // Mid-navigation, chromedriver may answer anything (a document unloading, a script
        // interrupted), so only the settled answers count and the rest are asked again.
        let mut last = String::new();
        loop {
            let old_gone = match self
                .browser
                .command(
                    reqwest::Method::GET,
                    &format!("/element/{}/name", old_page.id),
                    None,
                )
                .await
            {
                Ok(_) => false,
                Err(error) => {
                    last = error.to_string();
                    ["stale element reference", "no such element"]
                        .iter()
                        .any(|code| last.contains(code))
                }
            };
            if old_gone {
                let state = self
                    .browser
                    .command(
                        reqwest::Method::POST,
                        "/execute/sync",
                        Some(json!({"script": "return document.readyState", "args": []})),
                    )
                    .await;
                match state {
                    Ok(state) if state.as_str() == Some("complete") => return Ok(()),
                    Ok(state) => last = format!("the next page is {state}"),
                    Err(error) => last = error.to_string(),
                }
            }
            anyhow::ensure!(
                std::time::Instant::now() < deadline,
                "the click never led to a loaded page (on {}): {last}",
                self.browser.url().await.unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn type_text(&self, text: &str) -> anyhow::Result<()> {
        self.browser
            .command(
                reqwest::Method::POST,
                &format!("/element/{}/value", self.id),
                Some(json!({"text": text})),
            )
            .await?;
        Ok(())
    }

    /// The element's rendered width, in CSS pixels.
    pub async fn width(&self) -> anyhow::Result<f64> {
        let rect = self
            .browser
            .command(reqwest::Method::GET, &format!("/element/{}/rect", self.id), None)
            .await?;
        rect["width"]
            .as_f64()
            .ok_or_else(|| anyhow::anyhow!("no width in {rect}"))
    }

    pub async fn text(&self) -> anyhow::Result<String> {
        Ok(self
            .browser
            .command(reqwest::Method::GET, &format!("/element/{}/text", self.id), None)
            .await?
            .as_str()
            .unwrap_or_default()
            .to_string())
    }
}

impl Browser {
    /// The processes of this browser's Chromium: every one runs with its own profile directory.
    pub fn chromium_processes(&self) -> Vec<u32> {
        processes_naming(&format!("--user-data-dir={}", self.profile.display()))
    }
}

/// Processes whose command line holds `text` (read from `/proc`).
pub fn processes_naming(text: &str) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
            let cmdline = std::fs::read(entry.path().join("cmdline")).ok()?;
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            cmdline.contains(text).then_some(pid)
        })
        .collect()
}

impl Drop for Browser {
    fn drop(&mut self) {
        // chromedriver's Chromium outlives a killed chromedriver: it is ended by its profile,
        // which no other browser shares.
        let _ = self.driver.kill();
        let _ = self.driver.wait();
        // `--` ends pkill's options: the pattern itself starts with dashes.
        let _ = Command::new("pkill")
            .arg("-f")
            .arg("--")
            .arg(format!("--user-data-dir={}", self.profile.display()))
            .status();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}
