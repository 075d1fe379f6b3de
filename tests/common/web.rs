//! A browser without JavaScript for the web pages' tests: plain HTTP with cookies in headers,
//! redirects not followed (each answer is seen), forms sent url-encoded.
#![allow(dead_code)] // not every test binary uses every helper

use std::time::Duration;

use super::node::NodeProc;

/// A browser's agent: redirects are not followed, so that each answer is seen.
pub fn browser() -> ureq::Agent {
    ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(30))
        .redirects(0)
        .build()
}

pub struct Page {
    pub status: u16,
    pub location: Option<String>,
    pub set_cookie: Vec<String>,
    pub csp: Option<String>,
    pub refresh: Option<String>,
    pub body: String,
}

pub fn page(resp: Result<ureq::Response, ureq::Error>) -> Page {
    let resp = match resp {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("{e}"),
    };
    Page {
        status: resp.status(),
        location: resp.header("location").map(str::to_string),
        set_cookie: resp
            .all("set-cookie")
            .into_iter()
            .map(str::to_string)
            .collect(),
        csp: resp.header("content-security-policy").map(str::to_string),
        refresh: resp.header("refresh").map(str::to_string),
        body: resp.into_string().unwrap_or_default(),
    }
}

pub fn get(node: &NodeProc, path: &str, cookie: Option<&str>) -> Page {
    let mut req = browser().get(&node.url(path));
    if let Some(c) = cookie {
        req = req.set("Cookie", c);
    }
    page(req.call())
}

pub fn post(node: &NodeProc, path: &str, cookie: Option<&str>, form: &[(&str, &str)]) -> Page {
    let mut req = browser().post(&node.url(path));
    if let Some(c) = cookie {
        req = req.set("Cookie", c);
    }
    page(req.send_form(form))
}

/// `name=value` of the session cookie an answer sets.
pub fn session_cookie(p: &Page) -> String {
    let set = p
        .set_cookie
        .iter()
        .find(|c| c.starts_with("onecard_session="))
        .unwrap_or_else(|| panic!("no session cookie in {:?}", p.set_cookie));
    set.split(';').next().unwrap().to_string()
}

/// The CSRF token in a page's forms.
pub fn csrf(body: &str) -> String {
    let at = body
        .find("name=\"csrf\" value=\"")
        .unwrap_or_else(|| panic!("no csrf field in {body}"));
    let rest = &body[at + "name=\"csrf\" value=\"".len()..];
    rest[..rest.find('"').unwrap()].to_string()
}
