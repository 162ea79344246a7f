//! A cookie-keeping HTTP client for the dashboard (no browser): it never
//! follows redirects, so a test sees each 303 and `Set-Cookie`, and it
//! parses pages with `scraper`.

use std::collections::BTreeMap;
use std::io::Read;
use std::time::Duration;

use super::{encode, Server};

pub struct Page {
    pub status: u16,
    pub body: String,
    pub headers: ureq::http::HeaderMap,
}

impl Page {
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    }
    pub fn location(&self) -> String {
        self.header("location")
            .unwrap_or_else(|| panic!("no Location in a {}: {}", self.status, self.body))
    }
    pub fn html(&self) -> scraper::Html {
        scraper::Html::parse_document(&self.body)
    }
    /// The text of every element matching `css`.
    pub fn texts(&self, css: &str) -> Vec<String> {
        let sel = scraper::Selector::parse(css).unwrap();
        self.html()
            .select(&sel)
            .map(|e| e.text().collect::<String>())
            .collect()
    }
    /// The text of the one element matching `css`.
    pub fn text(&self, css: &str) -> String {
        let t = self.texts(css);
        assert_eq!(t.len(), 1, "{css}: {} matches in\n{}", t.len(), self.body);
        t[0].trim().to_owned()
    }
    /// Attribute `attr` of every element matching `css`.
    pub fn attrs(&self, css: &str, attr: &str) -> Vec<String> {
        let sel = scraper::Selector::parse(css).unwrap();
        self.html()
            .select(&sel)
            .filter_map(|e| e.value().attr(attr).map(str::to_owned))
            .collect()
    }
    /// The CSRF token of the page's forms.
    pub fn csrf(&self) -> String {
        self.attrs("input[name=csrf]", "value")
            .into_iter()
            .next()
            .unwrap_or_else(|| panic!("no csrf field in\n{}", self.body))
    }
}

pub struct Browser<'a> {
    pub s: &'a Server,
    pub cookies: BTreeMap<String, String>,
    agent: ureq::Agent,
}

/// `application/x-www-form-urlencoded` of `fields`.
pub fn form(fields: &[(&str, &str)]) -> Vec<u8> {
    fields
        .iter()
        .map(|(k, v)| {
            let enc = |s: &str| {
                s.bytes()
                    .map(|b| {
                        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                            (b as char).to_string()
                        } else {
                            format!("%{b:02X}")
                        }
                    })
                    .collect::<String>()
            };
            format!("{}={}", enc(k), enc(v))
        })
        .collect::<Vec<_>>()
        .join("&")
        .into_bytes()
}

impl<'a> Browser<'a> {
    pub fn new(s: &'a Server) -> Self {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .max_redirects(0)
            .timeout_global(Some(Duration::from_secs(30)))
            .build()
            .into();
        Browser {
            s,
            cookies: BTreeMap::new(),
            agent,
        }
    }

    pub fn request(&mut self, method: &str, path: &str, body: Option<Vec<u8>>) -> Page {
        self.request_with(method, path, body, &[])
    }

    pub fn request_with(
        &mut self,
        method: &str,
        path: &str,
        body: Option<Vec<u8>>,
        headers: &[(&str, &str)],
    ) -> Page {
        let mut b = ureq::http::Request::builder().method(method).uri(format!(
            "{}{}",
            self.s.base,
            encode(path)
        ));
        if !self.cookies.is_empty() {
            let c: Vec<String> = self
                .cookies
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            b = b.header("Cookie", c.join("; "));
        }
        let own_type = headers
            .iter()
            .any(|(k, _)| k.eq_ignore_ascii_case("content-type"));
        if body.is_some() && !own_type {
            b = b.header("Content-Type", "application/x-www-form-urlencoded");
        }
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        let resp = self
            .agent
            .run(b.body(body.unwrap_or_default()).unwrap())
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        for v in headers.get_all("set-cookie") {
            let v = v.to_str().unwrap();
            let (kv, attrs) = v.split_once(';').unwrap_or((v, ""));
            let (k, val) = kv.split_once('=').unwrap();
            if attrs.contains("Max-Age=0") {
                self.cookies.remove(k);
            } else {
                self.cookies.insert(k.to_owned(), val.to_owned());
            }
        }
        let mut bytes = Vec::new();
        resp.into_body()
            .into_reader()
            .read_to_end(&mut bytes)
            .unwrap();
        Page {
            status,
            body: String::from_utf8_lossy(&bytes).into_owned(),
            headers,
        }
    }

    pub fn get(&mut self, path: &str) -> Page {
        self.request("GET", path, None)
    }

    pub fn post(&mut self, path: &str, fields: &[(&str, &str)]) -> Page {
        self.request("POST", path, Some(form(fields)))
    }

    /// Logs in through the form; returns the answer to the POST.
    pub fn login(&mut self, user: &str, password: &str) -> Page {
        let page = self.get("/login");
        assert_eq!(page.status, 200, "{}", page.body);
        let csrf = page.csrf();
        self.post(
            "/login",
            &[
                ("csrf", &csrf),
                ("next", "/fleets"),
                ("username", user),
                ("password", password),
            ],
        )
    }

    /// The session's CSRF token (from the fleets page).
    pub fn csrf(&mut self) -> String {
        let p = self.get("/fleets");
        assert_eq!(p.status, 200, "{}", p.body);
        p.csrf()
    }
}

impl Server {
    /// A user with an API key and a dashboard password.
    pub fn web_user(&self, name: &str, password: &str) -> (i64, String) {
        let (id, key) = self.user(name);
        self.rt
            .block_on(resin_cloud::web::session::set_password(
                &self.app.db,
                name,
                password,
            ))
            .unwrap();
        (id, key)
    }
}
