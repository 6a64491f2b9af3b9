//! The typed grants of one plugin, from the text of the pipeline file to what `inspect` and the
//! admin API show: pattern parsing (host names resolved once, here), matching, display and JSON.
//! One place: the config layer hands the file's strings to these parsers and attaches the
//! location to their errors; the enforcement (`wasi`, `net`, `http`, `fs`) matches with them.

use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Access to a granted directory.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum DirMode {
    /// Read-only.
    #[default]
    Ro,
    /// Read and write, create and delete.
    Rw,
}

impl DirMode {
    /// `ro` or `rw`, as written in the file.
    pub fn as_str(self) -> &'static str {
        match self {
            DirMode::Ro => "ro",
            DirMode::Rw => "rw",
        }
    }
}

/// Checked grants. Empty means deny all.
#[derive(Debug, Clone, Default)]
pub struct Grants {
    /// Directory preopens.
    pub dirs: Vec<DirGrant>,
    /// Inherit the runtime's stdin.
    pub stdin: bool,
    /// Inherit the runtime's stdout.
    pub stdout: bool,
    /// Outbound TCP targets.
    pub tcp: Vec<NetPattern>,
    /// UDP targets.
    pub udp: Vec<NetPattern>,
    /// Listen addresses.
    pub listen: Vec<NetPattern>,
    /// Outbound HTTP destinations.
    pub http: Vec<HttpPattern>,
    /// Name lookup allowed.
    pub dns: bool,
    /// Environment variable names.
    pub env: Vec<String>,
    /// TLS settings (CA, client identity) for `wasi:tls`; `None`: the system's roots.
    pub tls: Option<super::TlsGrant>,
}

/// A checked directory grant.
#[derive(Debug, Clone)]
pub struct DirGrant {
    /// Host directory (exists).
    pub host: PathBuf,
    /// Guest mount point.
    pub guest: String,
    /// Access mode.
    pub mode: DirMode,
}

impl DirGrant {
    /// Check a directory grant: `host` as written and as resolved against the pipeline file,
    /// `guest` as written. Each error says what to change.
    pub fn check(
        host_text: &str,
        host: PathBuf,
        guest: &str,
        mode: DirMode,
    ) -> Result<DirGrant, Vec<GrantProblem>> {
        let mut problems = Vec::new();
        if !host.is_dir() {
            problems.push(GrantProblem::Host(format!(
                "granted directory `{host_text}` does not exist (resolved to `{}`); create it or fix `host`",
                absolute(&host).display()
            )));
        }
        if !guest.starts_with('/') || guest.split('/').any(|part| part == "..") {
            problems.push(GrantProblem::Guest(format!(
                "guest path `{guest}` must be absolute without `..`, e.g. \"/data\""
            )));
        }
        if problems.is_empty() {
            Ok(DirGrant {
                host,
                guest: guest.to_owned(),
                mode,
            })
        } else {
            Err(problems)
        }
    }
}

/// What is wrong with a directory grant, by the field to fix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GrantProblem {
    /// `host`.
    Host(String),
    /// `guest`.
    Guest(String),
}

/// An absolute form of `path` for messages (the path itself when that fails).
pub fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}

/// A `HOST:PORT` network grant, host names resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetPattern {
    /// As written.
    pub text: String,
    /// Allowed addresses; `None` means any.
    pub ips: Option<Vec<IpAddr>>,
    /// Allowed port; `None` means any.
    pub port: Option<u16>,
}

impl NetPattern {
    /// Parse and resolve `HOST:PORT`.
    pub fn parse(text: &str) -> Result<NetPattern, String> {
        let hint = "write HOST:PORT, e.g. \"127.0.0.1:5432\", \"localhost:4222\", \"[::1]:*\"";
        let Some((host, port)) = text.rsplit_once(':') else {
            return Err(format!("network grant `{text}` has no port; {hint}"));
        };
        let port = match port {
            "*" => None,
            p => Some(
                p.parse::<u16>()
                    .map_err(|_| format!("network grant `{text}`: bad port `{p}`; {hint}"))?,
            ),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let ips = match host {
            "*" => None,
            h => match h.parse::<IpAddr>() {
                Ok(ip) => Some(vec![ip]),
                Err(_) => {
                    let resolved: Vec<IpAddr> = (h, 0)
                        .to_socket_addrs()
                        .map_err(|e| format!("network grant `{text}`: cannot resolve `{h}`: {e}"))?
                        .map(|a| a.ip())
                        .collect();
                    Some(resolved)
                }
            },
        };
        Ok(NetPattern {
            text: text.to_owned(),
            ips,
            port,
        })
    }

    /// Whether an address matches.
    pub fn allows(&self, addr: &SocketAddr) -> bool {
        self.port.is_none_or(|p| p == addr.port())
            && self.ips.as_ref().is_none_or(|ips| ips.contains(&addr.ip()))
    }
}

/// An outbound HTTP grant: `[SCHEME://]HOST[:PORT]`, where HOST may start with `*.` to allow
/// every subdomain. Matched against the authority of each request the plugin sends, before any
/// connection is made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpPattern {
    /// As written.
    pub text: String,
    /// `http` or `https`; `None` means either.
    pub scheme: Option<String>,
    /// Lowercase host, or `*.domain` for subdomains of `domain`.
    pub host: String,
    /// Allowed port; `None` means any.
    pub port: Option<u16>,
}

impl HttpPattern {
    /// Parse `[SCHEME://]HOST[:PORT]`.
    pub fn parse(text: &str) -> Result<HttpPattern, String> {
        let hint = "write [http://|https://]HOST[:PORT], e.g. \"api.example.com\", \
                    \"https://*.example.com\", \"127.0.0.1:8080\"";
        let (scheme, rest) = match text.split_once("://") {
            Some((s, rest)) if s == "http" || s == "https" => (Some(s.to_owned()), rest),
            Some((s, _)) => {
                return Err(format!(
                    "http grant `{text}`: scheme `{s}` is not http or https; {hint}"
                ));
            }
            None => (None, text),
        };
        if rest.contains('/') || rest.contains('?') || rest.contains('@') {
            return Err(format!(
                "http grant `{text}` has a path, query or user; grants name hosts only; {hint}"
            ));
        }
        let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
            match v6.split_once(']') {
                Some((h, "")) => (format!("[{h}]"), None),
                Some((h, p)) => match p.strip_prefix(':') {
                    Some(p) => (format!("[{h}]"), Some(p)),
                    None => return Err(format!("http grant `{text}`: bad address; {hint}")),
                },
                None => return Err(format!("http grant `{text}`: unclosed `[`; {hint}")),
            }
        } else {
            match rest.rsplit_once(':') {
                Some((h, p)) => (h.to_owned(), Some(p)),
                None => (rest.to_owned(), None),
            }
        };
        let port = match port {
            None | Some("*") => None,
            Some(p) => Some(
                p.parse::<u16>()
                    .map_err(|_| format!("http grant `{text}`: bad port `{p}`; {hint}"))?,
            ),
        };
        let bare = host.strip_prefix("*.").unwrap_or(&host);
        if bare.is_empty()
            || bare.contains('*')
            || !bare
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-.:[]_".contains(c))
        {
            return Err(format!("http grant `{text}`: bad host `{host}`; {hint}"));
        }
        Ok(HttpPattern {
            text: text.to_owned(),
            scheme,
            host: host.to_ascii_lowercase(),
            port,
        })
    }

    /// Whether a request to `scheme://host:port` matches.
    pub fn allows(&self, scheme: &str, host: &str, port: u16) -> bool {
        let host = host.to_ascii_lowercase();
        let host_ok = match self.host.strip_prefix("*.") {
            Some(domain) => host
                .strip_suffix(domain)
                .is_some_and(|sub| sub.len() > 1 && sub.ends_with('.')),
            None => host == self.host,
        };
        host_ok
            && self.port.is_none_or(|p| p == port)
            && self.scheme.as_deref().is_none_or(|s| s == scheme)
    }
}

fn texts<'a>(items: impl Iterator<Item = &'a str>) -> Vec<String> {
    items.map(str::to_owned).collect()
}

impl Grants {
    /// One `(capability, what is granted)` row per capability, as `patchbay inspect` prints them.
    pub fn rows(&self) -> Vec<(&'static str, String)> {
        let list = |items: Vec<String>| {
            if items.is_empty() {
                "none".to_owned()
            } else {
                items.join(", ")
            }
        };
        let yes = |b: bool| if b { "yes" } else { "no" }.to_owned();
        vec![
            (
                "filesystem",
                list(
                    self.dirs
                        .iter()
                        .map(|d| {
                            format!("{} → {} ({})", d.guest, d.host.display(), d.mode.as_str())
                        })
                        .collect(),
                ),
            ),
            ("tcp", list(texts(self.tcp.iter().map(|p| p.text.as_str())))),
            ("udp", list(texts(self.udp.iter().map(|p| p.text.as_str())))),
            (
                "listen",
                list(texts(self.listen.iter().map(|p| p.text.as_str()))),
            ),
            (
                "http",
                list(texts(self.http.iter().map(|p| p.text.as_str()))),
            ),
            ("dns", yes(self.dns)),
            ("env", list(self.env.clone())),
            ("tls", self.tls_text()),
            ("stdin", yes(self.stdin)),
            (
                "stdout",
                if self.stdout {
                    "yes"
                } else {
                    "no (to the log)"
                }
                .to_owned(),
            ),
        ]
    }

    /// What `grants.tls` sets, for `inspect`.
    fn tls_text(&self) -> String {
        let Some(tls) = &self.tls else {
            return "system roots".to_owned();
        };
        let roots = match &tls.ca {
            Some(ca) => format!("CA {}", ca.display()),
            None => "system roots".to_owned(),
        };
        match &tls.cert {
            Some(cert) => format!("{roots}, client certificate {}", cert.display()),
            None => roots,
        }
    }

    /// Whether the capability an import stands for (see [`capability`]) is granted at all.
    /// Whether a granted TCP or UDP address is a host name (which the plugin must look up,
    /// so needs `dns`), not an IP address.
    pub fn names_a_host(&self) -> bool {
        self.tcp.iter().chain(&self.udp).any(|p| {
            let host = p.text.rsplit_once(':').map_or(p.text.as_str(), |(h, _)| h);
            let host = host.trim_start_matches('[').trim_end_matches(']');
            host != "*" && host.parse::<IpAddr>().is_err()
        })
    }

    pub fn grants_capability(&self, capability: &str) -> bool {
        match capability {
            "filesystem" => !self.dirs.is_empty(),
            "network" => !self.tcp.is_empty() || !self.udp.is_empty() || !self.listen.is_empty(),
            "dns" => self.dns,
            "http" => !self.http.is_empty(),
            // TLS runs over a granted TCP connection.
            "tls" => !self.tcp.is_empty(),
            // Rust's std imports stdin in every program; an ungranted stdin reads as empty.
            _ => true,
        }
    }

    /// The grants as the admin API shows them (`/v1/plugins`).
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "dirs": self.dirs.iter().map(|d| serde_json::json!({
                "host": d.host.display().to_string(),
                "guest": d.guest,
                "mode": d.mode.as_str(),
            })).collect::<Vec<_>>(),
            "tcp": texts(self.tcp.iter().map(|p| p.text.as_str())),
            "udp": texts(self.udp.iter().map(|p| p.text.as_str())),
            "listen": texts(self.listen.iter().map(|p| p.text.as_str())),
            "http": texts(self.http.iter().map(|p| p.text.as_str())),
            "dns": self.dns,
            "env": self.env,
            "tls": self.tls.as_ref().map(|t| serde_json::json!({
                "ca": t.ca.as_ref().map(|p| p.display().to_string()),
                "cert": t.cert.as_ref().map(|p| p.display().to_string()),
            })),
            "stdin": self.stdin,
            "stdout": self.stdout,
        })
    }
}

/// The capability an import stands for, as operators think of it.
pub fn capability(import: &str) -> &'static str {
    let name = import.split('@').next().unwrap_or(import);
    match name {
        n if n.starts_with("patchbay:connector/logging") => "log",
        n if n.starts_with("patchbay:connector/metrics") => "metrics",
        n if n.starts_with("patchbay:connector/state") => "state",
        n if n.starts_with("patchbay:connector/types") => "contract",
        n if n.starts_with("wasi:filesystem") => "filesystem",
        n if n.starts_with("wasi:sockets/ip-name-lookup") => "dns",
        n if n.starts_with("wasi:sockets") => "network",
        n if n.starts_with("wasi:http") => "http",
        n if n.starts_with("wasi:tls") => "tls",
        "wasi:cli/environment" => "env",
        n if n.starts_with("wasi:cli/stdin") || n.starts_with("wasi:cli/terminal-stdin") => "stdin",
        n if n.starts_with("wasi:cli/stdout")
            || n.starts_with("wasi:cli/stderr")
            || n.starts_with("wasi:cli/terminal") =>
        {
            "stdio"
        }
        "wasi:cli/exit" => "exit",
        n if n.starts_with("wasi:clocks") => "clocks",
        n if n.starts_with("wasi:random") => "random",
        n if n.starts_with("wasi:io") => "io",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_grants() {
        let exact = HttpPattern::parse("api.example.com").unwrap();
        assert!(exact.allows("https", "API.example.com", 443));
        assert!(exact.allows("http", "api.example.com", 8080));
        assert!(!exact.allows("https", "evil.com", 443));
        assert!(!exact.allows("https", "x.api.example.com", 443));
        let sub = HttpPattern::parse("https://*.example.com:443").unwrap();
        assert!(sub.allows("https", "a.b.example.com", 443));
        assert!(!sub.allows("https", "example.com", 443));
        assert!(!sub.allows("https", "badexample.com", 443));
        assert!(!sub.allows("http", "a.example.com", 443));
        assert!(!sub.allows("https", "a.example.com", 8443));
        let local = HttpPattern::parse("127.0.0.1:8080").unwrap();
        assert!(local.allows("http", "127.0.0.1", 8080));
        assert!(!local.allows("http", "127.0.0.1", 8081));
        let v6 = HttpPattern::parse("[::1]:80").unwrap();
        assert!(v6.allows("http", "[::1]", 80));
        for bad in [
            "ftp://x",
            "x.com/path",
            "x.com:port",
            "*",
            "a.*.com",
            "u@x.com",
            "",
        ] {
            assert!(HttpPattern::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn net_grants() {
        let p = NetPattern::parse("127.0.0.1:5432").unwrap();
        assert!(p.allows(&"127.0.0.1:5432".parse().unwrap()));
        assert!(!p.allows(&"127.0.0.1:5433".parse().unwrap()));
        let any_port = NetPattern::parse("[::1]:*").unwrap();
        assert!(any_port.allows(&"[::1]:1".parse().unwrap()));
        assert_eq!(
            NetPattern::parse("localhost").unwrap_err(),
            "network grant `localhost` has no port; write HOST:PORT, e.g. \"127.0.0.1:5432\", \
             \"localhost:4222\", \"[::1]:*\""
        );
    }
}
