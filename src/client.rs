//! A client of the admin API, for the CLI subcommands (`ballast targets`, `drain`, `deploy`, …).
//! JSON in and out; HTTP over TCP by ureq, over the API's UNIX socket (`admin.unix`) by hyper's
//! client on a one-thread runtime (ureq speaks TCP only).
//!
//! Where the API is ([`AdminClient::locate`]), first found wins: `--admin` (or
//! `BALLAST_ADMIN`); else the `admin:` section of `--config FILE` (or `BALLAST_CONFIG`, or the
//! packaged `/etc/ballast/ballast.yaml` when it exists): its UNIX socket when one is set and
//! this user may open it (no token needed there), else its `bind` address with its
//! `token_file`; else [`DEFAULT_ADMIN_URL`]. A flag wins over a variable (`ctl` settles that
//! before asking here).

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;

/// Default admin API URL, matching the default `admin.bind` (7390: outside 9100–9999, the
/// range Prometheus exporters allocate, where node_exporter holds 9100).
pub(crate) const DEFAULT_ADMIN_URL: &str = "http://127.0.0.1:7390";
/// The packaged configuration, read for the API's address when no other source is given.
pub(crate) const PACKAGED_CONFIG: &str = "/etc/ballast/ballast.yaml";
/// How long a request may take by default.
const TIMEOUT: Duration = Duration::from_secs(10);

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
    #[error(
        "cannot reach the admin API at {url}{found}: {message} (is Ballast running? --admin \
         URL or --config FILE say where its API is)"
    )]
    Transport {
        /// The URL asked.
        url: String,
        /// Where the URL came from (` (from --config FILE)`), or empty.
        found: String,
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
    /// The API found from a configuration file serves another one (two instances, or a file
    /// whose admin section was edited to name another instance's address).
    #[error(
        "the admin API at {url} (from {config}) serves the Ballast of {serving}, not of {config}; \
         nothing was sent (admin settings take a restart: is the running instance's API \
         elsewhere?)"
    )]
    WrongInstance {
        /// The URL asked.
        url: String,
        /// The file given.
        config: String,
        /// The file that instance runs.
        serving: String,
    },
    /// The configuration file named to find the API could not be read.
    #[error("cannot find the admin API from {path}: {message}")]
    Config {
        /// The file.
        path: String,
        /// What went wrong.
        message: String,
    },
    /// `--admin` is not a URL this client can use.
    #[error("bad admin API address `{0}`: give http://HOST:PORT, HOST:PORT or unix:/PATH")]
    BadUrl(String),
    /// The answer was not JSON.
    #[error("the admin API answered something other than JSON: {0}")]
    NotJson(String),
}

/// Where the API listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Endpoint {
    /// `http://host:port` (no trailing slash).
    Http(String),
    /// A UNIX socket path.
    Unix(PathBuf),
}

impl Endpoint {
    /// Parses `http://HOST:PORT`, `HOST:PORT`, `unix:/PATH`, `unix:///PATH` or `/PATH`.
    ///
    /// # Errors
    /// [`ClientError::BadUrl`] for anything else (another scheme, an empty path or host).
    pub(crate) fn parse(text: &str) -> Result<Endpoint, ClientError> {
        let bad = || ClientError::BadUrl(text.to_string());
        let text = text.trim();
        if let Some(path) = text.strip_prefix("unix:") {
            let path = path.strip_prefix("//").unwrap_or(path);
            return match path {
                p if p.starts_with('/') && p.len() > 1 => Ok(Endpoint::Unix(p.into())),
                _ => Err(bad()),
            };
        }
        if text.starts_with('/') {
            return Ok(Endpoint::Unix(text.into()));
        }
        let rest = match text.split_once("://") {
            Some(("http", rest)) => rest,
            Some(_) => return Err(bad()),
            None => text,
        };
        let host = rest.trim_end_matches('/');
        // A path, query or fragment would be glued to every request's path.
        if host.is_empty() || host.contains(['/', '?', '#', ' ', '@']) {
            return Err(bad());
        }
        Ok(Endpoint::Http(format!("http://{host}")))
    }
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Endpoint::Http(base) => f.write_str(base),
            Endpoint::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

/// The admin API at one endpoint, with an optional bearer token.
#[derive(Debug, Clone)]
pub(crate) struct AdminClient {
    endpoint: Endpoint,
    /// Where the endpoint came from, for errors (` (from --config FILE)`), or empty.
    found: String,
    /// The configuration file the endpoint was found from: the instance reached must run it.
    config: Option<PathBuf>,
    token: Option<String>,
    timeout: Duration,
}

/// What the CLI was told about where the API is (each `None` when not given).
#[derive(Debug, Clone, Default)]
pub(crate) struct Where<'a> {
    /// `--admin` or `BALLAST_ADMIN`.
    pub admin: Option<&'a str>,
    /// `--config` or `BALLAST_CONFIG`.
    pub config: Option<&'a Path>,
    /// `--token-file`.
    pub token_file: Option<&'a Path>,
}

fn read_token(path: &Path) -> Result<String, ClientError> {
    std::fs::read_to_string(path)
        .map(|t| t.trim().to_string())
        .map_err(|source| ClientError::TokenFile {
            path: path.display().to_string(),
            source,
        })
}

impl AdminClient {
    /// A client of the API at `base` (see [`Endpoint::parse`]), sending the token read from
    /// `token_file` (surrounding whitespace trimmed), if given. Requests time out after 10 s.
    ///
    /// # Errors
    /// [`ClientError::TokenFile`] when the file cannot be read; [`ClientError::BadUrl`].
    pub(crate) fn new(base: &str, token_file: Option<&Path>) -> Result<AdminClient, ClientError> {
        Ok(AdminClient {
            endpoint: Endpoint::parse(base)?,
            found: String::new(),
            config: None,
            token: token_file.map(read_token).transpose()?,
            timeout: TIMEOUT,
        })
    }

    /// Finds the API as the module documentation says.
    ///
    /// # Errors
    /// [`ClientError::Config`] when the named configuration file cannot be read or its
    /// `admin:` section makes no sense; [`ClientError::TokenFile`]; [`ClientError::BadUrl`].
    pub(crate) fn locate(given: &Where) -> Result<AdminClient, ClientError> {
        if let Some(admin) = given.admin {
            return AdminClient::new(admin, given.token_file);
        }
        let packaged = Path::new(PACKAGED_CONFIG);
        let config = match given.config {
            Some(c) => c,
            None if packaged.is_file() => packaged,
            None => return AdminClient::new(DEFAULT_ADMIN_URL, given.token_file),
        };
        let found = from_config(config)?;
        let token = match (given.token_file, &found.token_file) {
            (Some(f), _) => Some(read_token(f)?),
            // On the UNIX socket its file mode is the guard: no token needed.
            (None, _) if matches!(found.endpoint, Endpoint::Unix(_)) => None,
            (None, Some(f)) => Some(read_token(f)?),
            (None, None) => None,
        };
        Ok(AdminClient {
            endpoint: found.endpoint,
            found: format!(" (from {})", config.display()),
            config: Some(config.to_path_buf()),
            token,
            timeout: TIMEOUT,
        })
    }

    /// When the API was found from a configuration file, checks that the instance answering
    /// runs that file (`GET /node`'s `config`), before anything is changed through it.
    ///
    /// # Errors
    /// [`ClientError::WrongInstance`]; as [`AdminClient::get`].
    pub(crate) fn verify(&self) -> Result<(), ClientError> {
        let Some(config) = &self.config else {
            return Ok(());
        };
        let node = self.get("/node")?;
        // An older Ballast does not say which file it runs.
        let Some(serving) = node["config"].as_str() else {
            return Ok(());
        };
        let same = |a: &Path, b: &Path| match (a.canonicalize(), b.canonicalize()) {
            (Ok(a), Ok(b)) => a == b,
            _ => a == b,
        };
        if same(config, Path::new(serving)) {
            Ok(())
        } else {
            Err(ClientError::WrongInstance {
                url: self.endpoint.to_string(),
                config: config.display().to_string(),
                serving: serving.to_string(),
            })
        }
    }

    /// The same client with requests timing out after `timeout` instead.
    pub(crate) fn with_timeout(mut self, timeout: Duration) -> AdminClient {
        self.timeout = timeout;
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
        let body = body.map(Value::to_string);
        let answer = match &self.endpoint {
            Endpoint::Http(base) => self.over_tcp(method, &format!("{base}{path}"), body),
            Endpoint::Unix(socket) => self.over_unix(socket, method, path, body),
        };
        let (status, text) = answer.map_err(|message| ClientError::Transport {
            url: self.endpoint.to_string(),
            found: self.found.clone(),
            message,
        })?;
        if (200..300).contains(&status) {
            return serde_json::from_str(&text).map_err(|_| ClientError::NotJson(text));
        }
        let message = serde_json::from_str::<Value>(&text)
            .ok()
            .and_then(|v| v["error"].as_str().map(str::to_string))
            .unwrap_or(text);
        Err(ClientError::Status { status, message })
    }

    /// One request by ureq: the status and body, or why there is none.
    fn over_tcp(
        &self,
        method: &str,
        url: &str,
        body: Option<String>,
    ) -> Result<(u16, String), String> {
        let agent = ureq::AgentBuilder::new().timeout(self.timeout).build();
        // Always JSON: the API refuses changes without it when it has no token (cross-site
        // requests cannot send it).
        let mut request = agent
            .request(method, url)
            .set("Content-Type", "application/json");
        if let Some(t) = &self.token {
            request = request.set("Authorization", &format!("Bearer {t}"));
        }
        let result = match body {
            Some(b) => request.send_string(&b),
            None if method == "GET" => request.call(),
            None => request.send_string(""),
        };
        let response = match result {
            Ok(r) | Err(ureq::Error::Status(_, r)) => r,
            Err(ureq::Error::Transport(t)) => {
                // Its Display repeats the URL; the cause alone.
                use std::error::Error;
                let cause = t.source().map(|s| format!(": {s}")).unwrap_or_default();
                return Err(format!("{}{cause}", t.message().unwrap_or("")));
            }
        };
        let status = response.status();
        let text = response.into_string().map_err(|e| e.to_string())?;
        Ok((status, text))
    }

    /// One request over the UNIX socket by hyper's HTTP/1.1 client.
    fn over_unix(
        &self,
        socket: &Path,
        method: &str,
        path: &str,
        body: Option<String>,
    ) -> Result<(u16, String), String> {
        use http_body_util::{BodyExt, Full};
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        let mut request = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header("Host", "localhost")
            .header("Content-Type", "application/json");
        if let Some(t) = &self.token {
            request = request.header("Authorization", format!("Bearer {t}"));
        }
        let request = request
            .body(Full::new(bytes::Bytes::from(body.unwrap_or_default())))
            .map_err(|e| e.to_string())?;
        let exchange = async {
            let stream = tokio::net::UnixStream::connect(socket)
                .await
                .map_err(|e| crate::net::describe(&e))?;
            let (mut sender, connection) =
                hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                    .await
                    .map_err(|e| e.to_string())?;
            tokio::spawn(connection);
            let response = sender
                .send_request(request)
                .await
                .map_err(|e| e.to_string())?;
            let status = response.status().as_u16();
            let bytes = response
                .into_body()
                .collect()
                .await
                .map_err(|e| e.to_string())?
                .to_bytes();
            Ok((status, String::from_utf8_lossy(&bytes).into_owned()))
        };
        runtime.block_on(async {
            tokio::time::timeout(self.timeout, exchange)
                .await
                .unwrap_or_else(|_| Err(format!("no answer within {:?}", self.timeout)))
        })
    }
}

/// What a configuration file says of the admin API.
#[derive(Debug, PartialEq)]
struct Found {
    endpoint: Endpoint,
    token_file: Option<PathBuf>,
}

/// Reads the `admin:` section of `config` (only it: the rest need not be valid, nor its
/// certificates readable by this user), `${VAR}`s substituted as `run` does. The UNIX socket when set and this user can write to
/// it; else `bind` (an unspecified address asked on loopback); else the default.
fn from_config(config: &Path) -> Result<Found, ClientError> {
    let error = |message: String| ClientError::Config {
        path: config.display().to_string(),
        message,
    };
    let text = std::fs::read_to_string(config).map_err(|e| error(e.to_string()))?;
    let doc: serde_yaml::Value = serde_yaml::from_str(&text).map_err(|e| error(e.to_string()))?;
    let admin = &doc["admin"];
    // `${VAR}` as `run` substitutes it (the same function).
    let field = |key: &str| -> Result<Option<String>, ClientError> {
        match &admin[key] {
            serde_yaml::Value::Null => Ok(None),
            serde_yaml::Value::String(s) => {
                crate::config::expand_env(s, &crate::config::process_env)
                    .map(Some)
                    .map_err(|m| error(format!("admin.{key}: {m}")))
            }
            other => Err(error(format!("admin.{key} is not a string: {other:?}"))),
        }
    };
    // Relative paths are the config file's directory's, as `run` takes them.
    let base = config.parent().unwrap_or(Path::new(""));
    let token_file = field("token_file")?.map(|f| crate::config::beside(base, Path::new(&f)));
    if let Some(unix) = field("unix")? {
        let unix = crate::config::beside(base, Path::new(&unix));
        if may_connect(&unix) {
            return Ok(Found {
                endpoint: Endpoint::Unix(unix),
                token_file,
            });
        }
    }
    let bind = field("bind")?.unwrap_or_else(|| crate::config::DEFAULT_ADMIN_BIND.into());
    // As `run` reads it: an ip:port, or host:port resolved now.
    let addr = crate::config::parse_address(&bind)
        .map_err(|m| error(format!("admin.bind `{bind}`: {m}")))?;
    let ip = match addr.ip() {
        std::net::IpAddr::V4(ip) if ip.is_unspecified() => std::net::Ipv4Addr::LOCALHOST.into(),
        std::net::IpAddr::V6(ip) if ip.is_unspecified() => std::net::Ipv6Addr::LOCALHOST.into(),
        ip => ip,
    };
    Ok(Found {
        endpoint: Endpoint::Http(format!(
            "http://{}",
            std::net::SocketAddr::new(ip, addr.port())
        )),
        token_file,
    })
}

/// Whether this user can reach an API on the UNIX socket at `path`: it connects (a stale
/// socket file, or one this user may not open, sends the CLI to the TCP address instead).
fn may_connect(path: &Path) -> bool {
    std::os::unix::net::UnixStream::connect(path).is_ok()
}

/// What a path segment keeps as written: letters, digits and `-._~:[]` (addresses stay
/// readable); everything else is percent-encoded, so a name holding `/`, `?` or `..` stays one
/// segment.
const SEGMENT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~')
    .remove(b':')
    .remove(b'[')
    .remove(b']');

/// `/target-groups/{group}/targets/{address}` with `suffix` appended (`""`, `"/drain"`, …);
/// the group and the address percent-encoded.
pub(crate) fn target_path(group: &str, address: &str, suffix: &str) -> String {
    let enc = |s: &str| percent_encoding::utf8_percent_encode(s, SEGMENT).to_string();
    let address = match address {
        // A segment of only dots would be read as `.` or `..` by path normalizers.
        "." | ".." => address.replace('.', "%2E"),
        _ => enc(address),
    };
    format!("/target-groups/{}/targets/{address}{suffix}", enc(group))
}

/// The connections still open to target `t` (an entry of `GET /targets`): on every node of
/// its fleet when it is part of one (`fleet_active`; `None` while a node has not applied
/// the latest change, so cannot tell), else on this node (`active`).
pub(crate) fn open_connections(t: &Value) -> Option<u64> {
    match t.get("fleet_active") {
        Some(fleet) => fleet.as_u64(),
        None => t["active"].as_u64(),
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admin_addresses_in_every_spelling() {
        let http = |s: &str| Endpoint::Http(s.into());
        for (text, want) in [
            ("http://127.0.0.1:7390", http("http://127.0.0.1:7390")),
            ("http://127.0.0.1:7390/", http("http://127.0.0.1:7390")),
            ("127.0.0.1:7390", http("http://127.0.0.1:7390")),
            ("[::1]:7390", http("http://[::1]:7390")),
            (
                "unix:/run/ballast/admin.sock",
                Endpoint::Unix("/run/ballast/admin.sock".into()),
            ),
            ("unix:///run/b.sock", Endpoint::Unix("/run/b.sock".into())),
            ("/run/b.sock", Endpoint::Unix("/run/b.sock".into())),
        ] {
            assert_eq!(Endpoint::parse(text).unwrap(), want, "{text}");
        }
        for bad in [
            "unix:",
            "unix:relative",
            "https://x:1",
            "ftp://x",
            "",
            "http://",
            "a/b",
            "http://127.0.0.1:7390?a=b",
            "127.0.0.1:7390#x",
        ] {
            assert!(
                matches!(Endpoint::parse(bad), Err(ClientError::BadUrl(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn the_config_names_the_api_and_its_token() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("b.yaml");
        let write = |text: &str| std::fs::write(&file, text).unwrap();
        write("admin: {bind: '0.0.0.0:8001', token_file: /etc/t}\nlisteners: nonsense\n");
        assert_eq!(
            from_config(&file).unwrap(),
            Found {
                endpoint: Endpoint::Http("http://127.0.0.1:8001".into()),
                token_file: Some("/etc/t".into())
            }
        );
        write("listeners: []\n");
        assert_eq!(
            from_config(&file).unwrap().endpoint,
            Endpoint::Http(DEFAULT_ADMIN_URL.into())
        );
        // A socket path nobody can open: the TCP address instead.
        write("admin: {bind: '[::]:8002', unix: /nonexistent/admin.sock}\n");
        assert_eq!(
            from_config(&file).unwrap().endpoint,
            Endpoint::Http("http://[::1]:8002".into())
        );
        // `${VAR}` as `run` reads it.
        write("admin: {bind: '127.0.0.1:${BALLAST_TEST_UNSET_PORT:-8003}'}\n");
        assert_eq!(
            from_config(&file).unwrap().endpoint,
            Endpoint::Http("http://127.0.0.1:8003".into())
        );
        // A stale socket file (its process gone): the TCP address instead.
        let stale = dir.path().join("stale.sock");
        drop(std::os::unix::net::UnixListener::bind(&stale).unwrap());
        write(&format!(
            "admin: {{bind: '127.0.0.1:8005', unix: '{}'}}\n",
            stale.display()
        ));
        assert_eq!(
            from_config(&file).unwrap().endpoint,
            Endpoint::Http("http://127.0.0.1:8005".into())
        );
        // A live one: the socket.
        let live = dir.path().join("live.sock");
        let _listening = std::os::unix::net::UnixListener::bind(&live).unwrap();
        write(&format!(
            "admin: {{bind: '127.0.0.1:8005', unix: '{}'}}\n",
            live.display()
        ));
        assert_eq!(
            from_config(&file).unwrap().endpoint,
            Endpoint::Unix(live.clone())
        );
        write("admin: {bind: 'localhost:8004'}\n");
        assert!(matches!(
            from_config(&file).unwrap().endpoint,
            Endpoint::Http(url) if url.ends_with(":8004")
        ));
        write("admin: {bind: 8002}\n");
        assert!(matches!(
            from_config(&file),
            Err(ClientError::Config { .. })
        ));
        assert!(matches!(
            from_config(&dir.path().join("missing.yaml")),
            Err(ClientError::Config { .. })
        ));
    }
}
