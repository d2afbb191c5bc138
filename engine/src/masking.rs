//! Secrets hidden wherever qflow shows or stores text: `${{ env.X }}` values
//! and credentials inside URLs.
//!
//! A value read through `${{ env.X }}` never enters the lock or the step key
//! as itself (the fields keep the template, the key and the lock a digest),
//! but the programs a step runs get it, so their command lines, the step's log
//! and messages could show it: [`Mask::apply`] puts `${{ env.X }}` back in
//! its place. Values shorter than [`MIN_MASKED`] bytes are left alone: hiding
//! every `1` or `on` in a log would hide everything and protect nothing. A URL
//! is shown without its `user:password@` and with the value of each query
//! parameter that looks like a credential (`token`, `key`, `secret`,
//! `password`, `sig`, `auth`, ...) replaced by `***` ([`shown_url`],
//! [`mask_urls`]). Imports nothing of the engine.

use serde::{Deserialize, Serialize};

/// The shortest `${{ env.X }}` value that is masked.
pub const MIN_MASKED: usize = 4;

/// Query parameter names (lowercase, as substrings) whose values are credentials.
const SECRET_PARAMS: [&str; 9] = [
    "token",
    "key",
    "secret",
    "password",
    "passwd",
    "sig",
    "auth",
    "credential",
    "session",
];

/// `${{ env.X }}` values to hide, each with the template shown instead.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Mask {
    values: Vec<(String, String)>,
}

impl Mask {
    /// A mask for the `${{ env.X }}` values a step read (name → value).
    pub fn of_env<'a>(used: impl IntoIterator<Item = (&'a String, &'a String)>) -> Mask {
        let mut values: Vec<(String, String)> = used
            .into_iter()
            .filter(|(_, v)| v.len() >= MIN_MASKED)
            .map(|(k, v)| (v.clone(), format!("${{{{ env.{k} }}}}")))
            .collect();
        // Longest first, so a value containing another is replaced whole.
        values.sort_by_key(|v| std::cmp::Reverse(v.0.len()));
        Mask { values }
    }

    /// `text` with every masked value replaced by its template and every URL's
    /// credentials hidden.
    pub fn apply(&self, text: &str) -> String {
        let mut out = mask_urls(text);
        for (value, shown) in &self.values {
            if out.contains(value.as_str()) {
                out = out.replace(value.as_str(), shown);
            }
        }
        out
    }
}

/// A URL without `user:password@` and with credential query values as `***`.
pub fn shown_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let host_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let rest = match rest[..host_end].rfind('@') {
        Some(at) => &rest[at + 1..],
        None => rest,
    };
    let Some((before, query)) = rest.split_once('?') else {
        return format!("{scheme}://{rest}");
    };
    let (query, fragment) = match query.split_once('#') {
        Some((q, f)) => (q, Some(f)),
        None => (query, None),
    };
    let params: Vec<String> = query
        .split('&')
        .map(|p| match p.split_once('=') {
            Some((name, _)) if is_secret_param(name) => format!("{name}=***"),
            _ => p.to_string(),
        })
        .collect();
    let mut out = format!("{scheme}://{before}?{}", params.join("&"));
    if let Some(f) = fragment {
        out.push('#');
        out.push_str(f);
    }
    out
}

fn is_secret_param(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    SECRET_PARAMS.iter().any(|s| name.contains(s))
}

/// `text` with every URL in it (`scheme://...` up to whitespace or a quote) passed through [`shown_url`].
pub fn mask_urls(text: &str) -> String {
    if !text.contains("://") {
        return text.to_string();
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(sep) = rest.find("://") {
        let start = rest[..sep]
            .rfind(|c: char| !(c.is_ascii_alphanumeric() || "+-.".contains(c)))
            .map_or(0, |i| i + 1);
        let end = rest[sep..]
            .find(|c: char| c.is_whitespace() || "'\"<>`".contains(c))
            .map_or(rest.len(), |i| sep + i);
        out.push_str(&rest[..start]);
        out.push_str(&shown_url(&rest[start..end]));
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
}

/// Every string inside a JSON value passed through [`mask_urls`].
pub fn mask_urls_in_json(v: &serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    match v {
        Value::String(s) => Value::String(mask_urls(s)),
        Value::Array(a) => Value::Array(a.iter().map(mask_urls_in_json).collect()),
        Value::Object(m) => Value::Object(
            m.iter()
                .map(|(k, v)| (k.clone(), mask_urls_in_json(v)))
                .collect(),
        ),
        other => other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_in_urls_and_env_values_are_hidden() {
        assert_eq!(
            shown_url("https://alice:s3cr3t@example.org/a.img?x=1&access_token=abc#f"),
            "https://example.org/a.img?x=1&access_token=***#f"
        );
        assert_eq!(
            mask_urls("curl -o x 'https://u:p@h/p?sig=zz' and http://plain/x"),
            "curl -o x 'https://h/p?sig=***' and http://plain/x"
        );
        let env = [("TOKEN".to_string(), "hunter22".to_string())];
        let mask = Mask::of_env(env.iter().map(|(k, v)| (k, v)));
        assert_eq!(mask.apply("echo hunter22!"), "echo ${{ env.TOKEN }}!");
        let short = [("N".to_string(), "1".to_string())];
        assert_eq!(
            Mask::of_env(short.iter().map(|(k, v)| (k, v))).apply("1 2"),
            "1 2"
        );
    }
}
