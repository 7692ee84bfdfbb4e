//! A client of the admin API, for the CLI subcommands (`ballast targets`, `drain`, `deploy`, …).
//! HTTP by ureq; JSON in and out.

use std::path::Path;
use std::time::Duration;

use serde_json::Value;

/// Default admin API URL, matching the default `admin.bind`.
pub(crate) const DEFAULT_ADMIN_URL: &str = "http://127.0.0.1:9100";

/// Why a request to the admin API failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The API answered with an error status; `message` is its `error` field (or the body).
    #[error("{status}: {message}")]
    Status {
        /// HTTP status (4xx, 5xx).
        status: u16,
        /// What the API said.
        message: String,
    },
    /// No answer: connection refused, timeout, bad URL.
    #[error("cannot reach the admin API at {url}: {message}")]
    Transport {
        /// The URL asked.
        url: String,
        /// What went wrong.
        message: String,
    },
    /// The token file could not be read.
    #[error("cannot read token file {path}: {source}")]
    TokenFile {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The answer was not JSON.
    #[error("the admin API answered something other than JSON: {0}")]
    NotJson(String),
}

/// The admin API at one base URL, with an optional bearer token.
#[derive(Debug, Clone)]
pub(crate) struct AdminClient {
    base: String,
    token: Option<String>,
    agent: ureq::Agent,
}

impl AdminClient {
    /// A client of the API at `base` (e.g. `http://127.0.0.1:9100`), sending the token read
    /// from `token_file` (surrounding whitespace trimmed), if given. Requests time out after
    /// 10 s.
    ///
    /// # Errors
    /// [`ClientError::TokenFile`] when the file cannot be read.
    pub(crate) fn new(base: &str, token_file: Option<&Path>) -> Result<AdminClient, ClientError> {
        let token = match token_file {
            Some(p) => Some(
                std::fs::read_to_string(p)
                    .map_err(|source| ClientError::TokenFile {
                        path: p.display().to_string(),
                        source,
                    })?
                    .trim()
                    .to_string(),
            ),
            None => None,
        };
        Ok(AdminClient {
            base: base.trim_end_matches('/').to_string(),
            token,
            agent: ureq::AgentBuilder::new()
                .timeout(Duration::from_secs(10))
                .build(),
        })
    }

    /// The same client with requests timing out after `timeout` instead.
    pub(crate) fn with_timeout(mut self, timeout: Duration) -> AdminClient {
        self.agent = ureq::AgentBuilder::new().timeout(timeout).build();
        self
    }

    /// `GET path`.
    ///
    /// # Errors
    /// As [`ClientError`].
    pub(crate) fn get(&self, path: &str) -> Result<Value, ClientError> {
        self.call("GET", path, None)
    }

    /// `POST path`, with `body` as JSON when given.
    ///
    /// # Errors
    /// As [`ClientError`].
    pub(crate) fn post(&self, path: &str, body: Option<&Value>) -> Result<Value, ClientError> {
        self.call("POST", path, body)
    }

    /// `DELETE path`.
    ///
    /// # Errors
    /// As [`ClientError`].
    pub(crate) fn delete(&self, path: &str) -> Result<Value, ClientError> {
        self.call("DELETE", path, None)
    }

    fn call(&self, method: &str, path: &str, body: Option<&Value>) -> Result<Value, ClientError> {
        let url = format!("{}{path}", self.base);
        // Always JSON: the API refuses changes without it when it has no token (cross-site
        // requests cannot send it).
        let mut request = self
            .agent
            .request(method, &url)
            .set("Content-Type", "application/json");
        if let Some(t) = &self.token {
            request = request.set("Authorization", &format!("Bearer {t}"));
        }
        let result = match body {
            Some(b) => request.send_string(&b.to_string()),
            None if method == "GET" => request.call(),
            None => request.send_string(""),
        };
        match result {
            Ok(response) => {
                let text = response.into_string().map_err(|e| ClientError::Transport {
                    url: url.clone(),
                    message: e.to_string(),
                })?;
                serde_json::from_str(&text).map_err(|_| ClientError::NotJson(text))
            }
            Err(ureq::Error::Status(status, response)) => {
                let text = response.into_string().unwrap_or_default();
                let message = serde_json::from_str::<Value>(&text)
                    .ok()
                    .and_then(|v| v["error"].as_str().map(str::to_string))
                    .unwrap_or(text);
                Err(ClientError::Status { status, message })
            }
            Err(e) => Err(ClientError::Transport {
                url,
                message: e.to_string(),
            }),
        }
    }
}

/// `/target-groups/{group}/targets/{address}` with `suffix` appended (`""`, `"/drain"`, …).
pub(crate) fn target_path(group: &str, address: &str, suffix: &str) -> String {
    format!("/target-groups/{group}/targets/{address}{suffix}")
}

/// The `GET /targets` entry of `address` in `group`, from a `/targets` document.
pub(crate) fn find_target<'d>(doc: &'d Value, group: &str, address: &str) -> Option<&'d Value> {
    doc["target_groups"]
        .as_array()?
        .iter()
        .find(|g| g["name"] == group)?["targets"]
        .as_array()?
        .iter()
        .find(|t| t["address"] == address && t["admin_state"] != "removed")
}
