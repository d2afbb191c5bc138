//! Credentials for a remote cache, and URLs fit to print.
//!
//! Where they come from, first found wins:
//! 1. `QFLOW_REMOTE_CACHE_HEADER`: a whole header, `Name: value` (e.g. an API key header);
//! 2. `QFLOW_REMOTE_CACHE_TOKEN`: a bearer token (`Authorization: Bearer <token>`);
//! 3. `user:password@` in the URL itself (taken out of the URL before any use);
//! 4. the netrc file (`$NETRC`, else `~/.netrc`): the `machine` entry for the URL's host, or
//!    `default`, with `login` and `password` (`Authorization: Basic ...`).
//!
//! A secret lives only in a [`Secret`], whose `Debug` prints `***` and which has no `Display`,
//! so it cannot reach a message, a log or a record by accident; [`shown_url`] masks the
//! password of a URL that carries one.

use std::fmt;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

/// The environment variable holding a whole header for the remote cache.
pub const HEADER_ENV: &str = "QFLOW_REMOTE_CACHE_HEADER";
/// The environment variable holding a bearer token for the remote cache.
pub const TOKEN_ENV: &str = "QFLOW_REMOTE_CACHE_TOKEN";

/// A value that must never be shown.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// A secret holding `value`.
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    /// The value, for the one place that sends it.
    pub(crate) fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// What to send with every request to one server: nothing, or one header.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Credentials {
    header: Option<(String, Secret)>,
    /// Where they came from, for messages ("~/.netrc", "QFLOW_REMOTE_CACHE_TOKEN").
    source: Option<String>,
}

impl Credentials {
    /// No credentials.
    pub fn none() -> Credentials {
        Credentials::default()
    }

    /// `Authorization: Bearer <token>`.
    pub fn bearer(token: Secret, source: &str) -> Credentials {
        Credentials {
            header: Some((
                "Authorization".into(),
                Secret(format!("Bearer {}", token.0)),
            )),
            source: Some(source.into()),
        }
    }

    /// `Authorization: Basic base64(login:password)`.
    pub fn basic(login: &str, password: &Secret, source: &str) -> Credentials {
        let encoded = base64(format!("{login}:{}", password.0).as_bytes());
        Credentials {
            header: Some(("Authorization".into(), Secret(format!("Basic {encoded}")))),
            source: Some(source.into()),
        }
    }

    /// A header given as `Name: value`.
    pub fn header_line(line: &Secret, source: &str) -> anyhow::Result<Credentials> {
        let Some((name, value)) = line.0.split_once(':') else {
            bail!(
                "`{source}` must hold a header like `Authorization: Bearer TOKEN` (name, colon, value)"
            );
        };
        let name = name.trim();
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
            bail!("`{source}` must start with a header name (letters, digits, `-`) and a colon");
        }
        Ok(Credentials {
            header: Some((name.to_string(), Secret(value.trim().to_string()))),
            source: Some(source.into()),
        })
    }

    /// The credentials for `url` from the environment, the URL and the netrc file (see the
    /// module docs), and the URL without any `user:password@`.
    pub fn for_url(url: &str) -> anyhow::Result<(String, Credentials)> {
        let netrc = std::env::var_os("NETRC")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".netrc")));
        Credentials::resolve(
            url,
            std::env::var(HEADER_ENV).ok().map(Secret),
            std::env::var(TOKEN_ENV).ok().map(Secret),
            netrc.as_deref(),
        )
    }

    /// [`Credentials::for_url`] with its inputs given.
    pub fn resolve(
        url: &str,
        header: Option<Secret>,
        token: Option<Secret>,
        netrc: Option<&Path>,
    ) -> anyhow::Result<(String, Credentials)> {
        let (bare, userinfo) = split_userinfo(url);
        if let Some(h) = header.filter(|h| !h.0.trim().is_empty()) {
            return Ok((bare, Credentials::header_line(&h, HEADER_ENV)?));
        }
        if let Some(t) = token.filter(|t| !t.0.trim().is_empty()) {
            return Ok((
                bare,
                Credentials::bearer(Secret(t.0.trim().into()), TOKEN_ENV),
            ));
        }
        if let Some((login, password)) = userinfo {
            return Ok((bare, Credentials::basic(&login, &password, "the URL")));
        }
        if let Some(path) = netrc
            && let Some((login, password)) = netrc_entry(path, &host_of(&bare))?
        {
            let source = path.display().to_string();
            return Ok((bare, Credentials::basic(&login, &password, &source)));
        }
        Ok((bare, Credentials::none()))
    }

    /// The header to send, if any.
    pub(crate) fn header(&self) -> Option<(&str, &str)> {
        self.header.as_ref().map(|(n, v)| (n.as_str(), v.expose()))
    }

    /// Whether any credentials are set.
    pub fn is_set(&self) -> bool {
        self.header.is_some()
    }

    /// Where the credentials came from, for messages.
    pub fn source(&self) -> Option<&str> {
        self.source.as_deref()
    }
}

/// `url` with any password replaced by `***`, fit for messages.
pub fn shown_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let (authority, path) = rest.split_at(authority_end);
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split(':').next().unwrap_or("");
            format!("{scheme}://{user}:***@{host}{path}")
        }
        None => url.to_string(),
    }
}

/// `url` without `user:password@`, and the two if present.
fn split_userinfo(url: &str) -> (String, Option<(String, Secret)>) {
    let Some((scheme, rest)) = url.split_once("://") else {
        return (url.to_string(), None);
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let (authority, path) = rest.split_at(authority_end);
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let (login, password) = userinfo.split_once(':').unwrap_or((userinfo, ""));
            (
                format!("{scheme}://{host}{path}"),
                Some((percent_decode(login), Secret(percent_decode(password)))),
            )
        }
        None => (url.to_string(), None),
    }
}

/// The host of a URL, without port and brackets (what netrc's `machine` names).
pub(crate) fn host_of(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split('/').next().unwrap_or("");
    let authority = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    if let Some(v6) = authority.strip_prefix('[') {
        return v6.split(']').next().unwrap_or("").to_string();
    }
    authority.split(':').next().unwrap_or("").to_string()
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && let (Some(hi), Some(lo)) = (hex_digit(b[i + 1]), hex_digit(b[i + 2]))
        {
            out.push((hi << 4) | lo);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex_digit(c: u8) -> Option<u8> {
    (c as char).to_digit(16).map(|d| d as u8)
}

/// The `login` and `password` of the netrc entry for `host` (or `default`); `None` when the
/// file does not exist or names neither.
fn netrc_entry(path: &Path, host: &str) -> anyhow::Result<Option<(String, Secret)>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("cannot read `{}`", path.display())),
    };
    let tokens = netrc_tokens(&text);
    let mut found: Option<(String, Secret)> = None;
    let mut default: Option<(String, Secret)> = None;
    let mut i = 0;
    while i < tokens.len() {
        let (is_default, start) = match tokens[i].as_str() {
            "machine" => (false, i + 2),
            "default" => (true, i + 1),
            "macdef" => {
                i += 2; // the macro body was dropped by the tokenizer
                continue;
            }
            _ => {
                i += 1;
                continue;
            }
        };
        let machine = if is_default {
            None
        } else {
            tokens.get(i + 1).cloned()
        };
        let (mut login, mut password) = (String::new(), None);
        let mut j = start;
        while j < tokens.len() && !matches!(tokens[j].as_str(), "machine" | "default" | "macdef") {
            match tokens[j].as_str() {
                "login" => login = tokens.get(j + 1).cloned().unwrap_or_default(),
                "password" => password = tokens.get(j + 1).cloned().map(Secret),
                _ => {
                    j += 1;
                    continue;
                }
            }
            j += 2;
        }
        if let Some(password) = password {
            if machine.as_deref() == Some(host) && found.is_none() {
                found = Some((login, password));
            } else if is_default && default.is_none() {
                default = Some((login, password));
            }
        }
        i = j;
    }
    Ok(found.or(default))
}

/// netrc's tokens: whitespace-separated, `"double quoted"` with `\` escapes allowed (as curl
/// reads them), `#` comments to the end of a line, `macdef` bodies (to a blank line) skipped.
fn netrc_tokens(text: &str) -> Vec<String> {
    let mut tokens = Vec::new();
    let mut chars = text.chars().peekable();
    let mut in_macdef = false;
    while let Some(&c) = chars.peek() {
        if in_macdef {
            // Skip to a blank line.
            let mut prev_newline = false;
            for c in chars.by_ref() {
                if c == '\n' {
                    if prev_newline {
                        break;
                    }
                    prev_newline = true;
                } else if !c.is_whitespace() {
                    prev_newline = false;
                }
            }
            in_macdef = false;
            continue;
        }
        if c.is_whitespace() {
            chars.next();
            continue;
        }
        if c == '#' {
            for c in chars.by_ref() {
                if c == '\n' {
                    break;
                }
            }
            continue;
        }
        let mut token = String::new();
        if c == '"' {
            chars.next();
            while let Some(c) = chars.next() {
                match c {
                    '"' => break,
                    '\\' => {
                        if let Some(n) = chars.next() {
                            token.push(n);
                        }
                    }
                    _ => token.push(c),
                }
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c.is_whitespace() {
                    break;
                }
                token.push(c);
                chars.next();
            }
        }
        let was_macdef = token == "macdef";
        tokens.push(token);
        if was_macdef {
            // The macro's name, then its body up to a blank line.
            let mut name = String::new();
            while let Some(&c) = chars.peek() {
                if c == '\n' {
                    break;
                }
                chars.next();
                if !c.is_whitespace() {
                    name.push(c);
                }
            }
            tokens.push(name);
            in_macdef = true;
        }
    }
    tokens
}

/// Standard base64 with padding (RFC 4648), for the Basic scheme.
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc_4648_vectors() {
        for (input, expected) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(input.as_bytes()), expected, "{input}");
        }
    }

    #[test]
    fn netrc_gives_the_entry_of_the_host_else_the_default() {
        let dir = crate::test_dir("netrc");
        let netrc = dir.join("netrc");
        std::fs::write(
            &netrc,
            "# group cache\nmachine other.example login x password y\n\
             macdef init\ncd /pub\nmachine cache.example login nope password nope\n\n\
             machine cache.example\n  login alice\n  password \"s3cret with space\"\n\
             default login anon password guest\n",
        )
        .unwrap();
        let (url, c) =
            Credentials::resolve("https://cache.example:8443/qflow", None, None, Some(&netrc))
                .unwrap();
        assert_eq!(url, "https://cache.example:8443/qflow");
        let expected = format!("Basic {}", base64(b"alice:s3cret with space"));
        assert_eq!(c.header(), Some(("Authorization", expected.as_str())));
        assert_eq!(c.source(), Some(netrc.display().to_string().as_str()));

        let (_, c) =
            Credentials::resolve("http://elsewhere:8088", None, None, Some(&netrc)).unwrap();
        let expected = format!("Basic {}", base64(b"anon:guest"));
        assert_eq!(c.header(), Some(("Authorization", expected.as_str())));

        let (_, c) =
            Credentials::resolve("http://h", None, None, Some(&dir.join("no-such-netrc"))).unwrap();
        assert!(!c.is_set());
    }

    #[test]
    fn the_environment_wins_over_the_url_and_netrc() {
        let (url, c) = Credentials::resolve(
            "http://u:p%40ss@h:1/x",
            None,
            Some(Secret::new("tok")),
            None,
        )
        .unwrap();
        assert_eq!(url, "http://h:1/x");
        assert_eq!(c.header(), Some(("Authorization", "Bearer tok")));
        let (_, c) = Credentials::resolve(
            "http://h",
            Some(Secret::new("X-Api-Key: abc")),
            Some(Secret::new("tok")),
            None,
        )
        .unwrap();
        assert_eq!(c.header(), Some(("X-Api-Key", "abc")));
        let (_, c) = Credentials::resolve("http://u:p%40ss@h:1/x", None, None, None).unwrap();
        let expected = format!("Basic {}", base64(b"u:p@ss"));
        assert_eq!(c.header(), Some(("Authorization", expected.as_str())));
        assert!(
            Credentials::resolve("http://h", Some(Secret::new("novalue")), None, None).is_err()
        );
    }

    #[test]
    fn secrets_never_show_in_debug_output_or_shown_urls() {
        let c = Credentials::basic("alice", &Secret::new("hunter2"), "netrc");
        assert!(!format!("{c:?}").contains("hunter2"));
        assert!(!format!("{c:?}").contains(&base64(b"alice:hunter2")));
        assert_eq!(
            shown_url("https://alice:hunter2@cache.example/x"),
            "https://alice:***@cache.example/x"
        );
        assert_eq!(shown_url("http://h:8088/"), "http://h:8088/");
        assert_eq!(host_of("http://[::1]:8088/x"), "::1");
        assert_eq!(host_of("https://a:b@cache.example:1/x"), "cache.example");
    }
}
