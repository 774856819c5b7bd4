//! The HTTP layer: one `ureq` agent, redirects followed by hand so that the `Authorization`
//! header only ever goes to the endpoint's own origin (LFS files redirect to a CDN on another
//! host), and every response sorted into "use it", "retry it" or "stop, and say why".

use std::time::Duration;

use super::error::HubError;
use super::retry::{parse_retry_after, RetryPolicy};
use super::{HubConfig, Progress};

/// Redirect hops followed before the response counts as bad.
const MAX_REDIRECTS: u32 = 10;

/// What a request was for, so a 404/401 can say which repo, revision or file was wrong.
pub(crate) struct Target<'a> {
    pub repo: &'a str,
    pub revision: &'a str,
    /// E.g. "repo or revision" or "file `x` at commit c".
    pub what: String,
}

/// A failed request, sorted for the retry loop.
pub(crate) enum Failure {
    /// Worth another try after a wait.
    Transient {
        url: String,
        error: String,
        status: Option<u16>,
        retry_after: Option<Duration>,
    },
    /// Retrying cannot help.
    Fatal(Box<HubError>),
}

impl Failure {
    /// Wraps a fatal error (boxed: it is the rare, large case).
    pub fn fatal(e: HubError) -> Failure {
        Failure::Fatal(Box::new(e))
    }

    /// The error to report once retries are exhausted.
    pub fn into_error(self, attempts: u32) -> HubError {
        match self {
            Failure::Fatal(e) => *e,
            Failure::Transient {
                url,
                error,
                status: Some(status),
                ..
            } => HubError::Http {
                url,
                status,
                detail: format!(": {error} (gave up after {attempts} attempts)"),
            },
            Failure::Transient { url, error, .. } => HubError::Network {
                url,
                error,
                attempts,
            },
        }
    }
}

/// A successful (2xx, or 416 for the caller to handle) response and the URL that gave it.
pub(crate) struct Reply {
    pub url: String,
    pub response: ureq::http::Response<ureq::Body>,
}

impl Reply {
    pub fn status(&self) -> u16 {
        self.response.status().as_u16()
    }
    pub fn header(&self, name: &str) -> Option<&str> {
        header(&self.response, name)
    }
}

fn header<'r>(r: &'r ureq::http::Response<ureq::Body>, name: &str) -> Option<&'r str> {
    r.headers().get(name).and_then(|v| v.to_str().ok())
}

/// The hub client: agent, endpoint, token and retry policy.
pub(crate) struct Client {
    agent: ureq::Agent,
    pub endpoint: String,
    token: Option<String>,
    pub retry: RetryPolicy,
}

impl Client {
    pub fn new(cfg: &HubConfig) -> Client {
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .max_redirects(0)
            .timeout_connect(Some(cfg.connect_timeout))
            .timeout_recv_response(Some(cfg.read_timeout))
            .timeout_per_read(Some(cfg.read_timeout))
            .user_agent(concat!("r1q/", env!("CARGO_PKG_VERSION")))
            .build()
            .new_agent();
        Client {
            agent,
            endpoint: cfg.endpoint.trim_end_matches('/').to_string(),
            token: cfg.token.clone(),
            retry: cfg.retry.clone(),
        }
    }

    /// One GET, following redirects; `range_from` asks for the bytes from that offset on.
    /// 2xx and 416 come back as a [`Reply`]; everything else as a [`Failure`].
    pub fn get(
        &self,
        url: &str,
        range_from: Option<u64>,
        target: &Target,
    ) -> Result<Reply, Failure> {
        let mut url = url.to_string();
        for _ in 0..=MAX_REDIRECTS {
            let mut req = self
                .agent
                .get(url.as_str())
                .header("Accept-Encoding", "identity");
            if let Some(from) = range_from.filter(|&f| f > 0) {
                req = req.header("Range", format!("bytes={from}-"));
            }
            if let Some(token) = &self.token {
                // Only to the endpoint's own origin: a redirect to a CDN or any other host or
                // port never sees the token.
                if same_origin(&url, &self.endpoint) {
                    req = req.header("Authorization", format!("Bearer {token}"));
                }
            }
            let response = match req.call() {
                Ok(r) => r,
                Err(e) => return Err(classify_transport(&url, e)),
            };
            let status = response.status().as_u16();
            match status {
                200..=299 | 416 => return Ok(Reply { url, response }),
                301 | 302 | 303 | 307 | 308 => {
                    let Some(loc) = header(&response, "location") else {
                        return Err(Failure::fatal(HubError::BadResponse {
                            url,
                            detail: format!("HTTP {status} without a Location header"),
                        }));
                    };
                    url = resolve_location(&url, loc);
                }
                _ => return Err(self.classify_status(&url, &response, target)),
            }
        }
        Err(Failure::fatal(HubError::BadResponse {
            url,
            detail: format!("more than {MAX_REDIRECTS} redirects"),
        }))
    }

    /// Runs `f` until it succeeds, fails fatally or runs out of attempts, waiting between tries.
    pub fn with_retries<T>(
        &self,
        progress: &dyn Progress,
        label: &str,
        mut f: impl FnMut() -> Result<T, Failure>,
    ) -> Result<T, HubError> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            match f() {
                Ok(v) => return Ok(v),
                Err(Failure::Transient {
                    error, retry_after, ..
                }) if attempt < self.retry.max_attempts => {
                    let wait = self.retry.delay(attempt, retry_after);
                    progress.retrying(label, attempt, wait, &error);
                    std::thread::sleep(wait);
                }
                Err(fail) => return Err(fail.into_error(attempt)),
            }
        }
    }

    fn classify_status(
        &self,
        url: &str,
        response: &ureq::http::Response<ureq::Body>,
        target: &Target,
    ) -> Failure {
        let status = response.status().as_u16();
        let code = header(response, "x-error-code").map(str::to_string);
        let message = header(response, "x-error-message").map(str::to_string);
        let code_part = code
            .as_deref()
            .map(|c| format!(", X-Error-Code: {c}"))
            .unwrap_or_default();
        match status {
            404 => Failure::fatal(HubError::NotFound {
                repo: target.repo.to_string(),
                revision: target.revision.to_string(),
                url: url.to_string(),
                code: code_part,
                what: target.what.clone(),
            }),
            401 | 403 => {
                let gated = code.as_deref() == Some("GatedRepo") || status == 403;
                let repo_page = format!("{}/{}", self.endpoint, target.repo);
                let advice = if gated {
                    format!("the repo is gated: accept its licence at {repo_page} while logged in, then set HF_TOKEN to a read token of that account")
                } else if self.token.is_some() {
                    "HF_TOKEN was sent and rejected: check that it is valid and can read this repo (https://huggingface.co/settings/tokens)".to_string()
                } else {
                    format!("the repo is private or gated: set HF_TOKEN to a read token (https://huggingface.co/settings/tokens) of an account with access (gated repos: accept the licence at {repo_page} first)")
                };
                let advice = match message {
                    Some(m) => format!("{advice} (hub says: {m})"),
                    None => advice,
                };
                Failure::fatal(HubError::Unauthorized {
                    repo: target.repo.to_string(),
                    url: url.to_string(),
                    status,
                    code: code_part,
                    advice,
                })
            }
            408 | 429 | 500..=599 => Failure::Transient {
                url: url.to_string(),
                error: format!(
                    "HTTP {status}{}",
                    message.map(|m| format!(" ({m})")).unwrap_or_default()
                ),
                status: Some(status),
                retry_after: header(response, "retry-after").and_then(parse_retry_after),
            },
            _ => Failure::fatal(HubError::Http {
                url: url.to_string(),
                status,
                detail: message.map(|m| format!(": {m}")).unwrap_or_default(),
            }),
        }
    }
}

/// Sorts a transport error: most are the network's fault and worth a retry.
pub(crate) fn classify_transport(url: &str, e: ureq::Error) -> Failure {
    match e {
        ureq::Error::HostNotFound => Failure::fatal(HubError::Network {
            url: url.to_string(),
            error: "host not found".to_string(),
            attempts: 1,
        }),
        ureq::Error::BadUri(detail) => Failure::fatal(HubError::BadResponse {
            url: url.to_string(),
            detail: format!("bad URL: {detail}"),
        }),
        other => Failure::Transient {
            url: url.to_string(),
            error: other.to_string(),
            status: None,
            retry_after: None,
        },
    }
}

/// `scheme://authority` of a URL, lowercased.
pub(crate) fn origin(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    format!(
        "{}://{}",
        scheme.to_ascii_lowercase(),
        authority.to_ascii_lowercase()
    )
}

fn same_origin(a: &str, b: &str) -> bool {
    origin(a) == origin(b)
}

/// The absolute URL a `Location` header points to.
pub(crate) fn resolve_location(base: &str, location: &str) -> String {
    let location = location.trim();
    if location.contains("://") {
        location.to_string()
    } else if let Some(rest) = location.strip_prefix("//") {
        let scheme = base.split_once("://").map(|(s, _)| s).unwrap_or("https");
        format!("{scheme}://{rest}")
    } else if location.starts_with('/') {
        format!("{}{location}", origin(base))
    } else {
        let path = base.split(['?', '#']).next().unwrap_or(base);
        let dir = match path.rfind('/') {
            Some(i) if i > origin(base).len() => &path[..=i],
            _ => return format!("{}/{location}", origin(base)),
        };
        format!("{dir}{location}")
    }
}

/// Percent-encodes a path for a URL, keeping `/` (as huggingface_hub's `quote(path)` does).
pub(crate) fn quote_path(path: &str, keep_slash: bool) -> String {
    let mut out = String::with_capacity(path.len());
    for b in path.bytes() {
        let keep = b.is_ascii_alphanumeric() || b"-._~".contains(&b) || (keep_slash && b == b'/');
        if keep {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_and_locations() {
        assert_eq!(origin("http://127.0.0.1:80/a/b"), "http://127.0.0.1:80");
        assert!(!same_origin("http://127.0.0.1:1/x", "http://127.0.0.1:2"));
        assert!(same_origin("HTTPS://Hub.co/x?y", "https://hub.co"));
        assert_eq!(
            resolve_location("http://a:1/x/y", "http://b:2/z"),
            "http://b:2/z"
        );
        assert_eq!(resolve_location("http://a:1/x/y", "/z?q"), "http://a:1/z?q");
        assert_eq!(
            resolve_location("https://a/x/y", "//cdn/z"),
            "https://cdn/z"
        );
        assert_eq!(resolve_location("http://a/x/y?q", "z"), "http://a/x/z");
        assert_eq!(quote_path("a b/c+d.json", true), "a%20b/c%2Bd.json");
        assert_eq!(quote_path("refs/pr/1", false), "refs%2Fpr%2F1");
    }
}
