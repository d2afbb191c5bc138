//! Debian package names, checked before anything runs.
//!
//! Debian Policy §5.6.1: a package name is at least two characters of lowercase
//! letters, digits and `+ - .`, starting with a letter or digit. qflow also accepts
//! apt's `NAME:ARCH` (architecture qualifier) and `NAME=VERSION` (version pin) forms,
//! whose extra parts are checked just as strictly, because the names travel to apt
//! inside the guest. A name that passes can carry no shell syntax.

use qflow_engine::FieldError;

/// Whether `name` is a valid Debian package name (no architecture, no version).
pub fn is_package_name(name: &str) -> bool {
    let b = name.as_bytes();
    b.len() >= 2
        && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
        && b.iter()
            .all(|&c| c.is_ascii_lowercase() || c.is_ascii_digit() || b"+.-".contains(&c))
}

/// Whether `v` is a valid Debian version (Policy §5.6.12): `[epoch:]upstream[-revision]`,
/// letters, digits and `. + ~ - :`, starting with a digit.
fn is_version(v: &str) -> bool {
    let upstream = match v.split_once(':') {
        Some((epoch, rest)) => {
            if epoch.is_empty() || !epoch.bytes().all(|c| c.is_ascii_digit()) {
                return false;
            }
            rest
        }
        None => v,
    };
    upstream
        .as_bytes()
        .first()
        .is_some_and(|c| c.is_ascii_digit())
        && upstream
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || b".+~-:".contains(&c))
}

/// Check one entry of a package list: `NAME`, `NAME:ARCH` or `NAME=VERSION`.
/// `field` is the entry's path (`install[1]`) for the error.
pub fn check_package(field: &str, entry: &str) -> Result<(), FieldError> {
    let (name_arch, version) = match entry.split_once('=') {
        Some((n, v)) => (n, Some(v)),
        None => (entry, None),
    };
    let (name, arch) = match name_arch.split_once(':') {
        Some((n, a)) => (n, Some(a)),
        None => (name_arch, None),
    };
    let arch_ok = arch.is_none_or(|a| {
        !a.is_empty()
            && a.bytes()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
    });
    let version_ok = version.is_none_or(is_version);
    if is_package_name(name) && arch_ok && version_ok {
        return Ok(());
    }
    Err(FieldError::new(
        field,
        format!(
            "`{entry}` is not a Debian package name: a name is lowercase letters, digits and `+ - .`, \
             at least two characters, starting with a letter or digit (optionally `:ARCH` or `=VERSION`)"
        ),
    ))
}

/// Check every entry of the list in `field` (`install`), naming the bad entry (`install[1]`).
pub fn check_packages(field: &str, entries: &[String]) -> Result<(), FieldError> {
    for (i, entry) in entries.iter().enumerate() {
        check_package(&format!("{field}[{i}]"), entry)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn real_package_names_pass() {
        for name in [
            "build-essential",
            "numactl",
            "g++",
            "libstdc++6",
            "python3.11",
            "0ad",
            "linux-image-amd64",
        ] {
            assert!(check_package("install[0]", name).is_ok(), "{name}");
        }
        assert!(check_package("install[0]", "libc6:amd64").is_ok());
        assert!(check_package("install[0]", "bash=5.2.15-2+b7").is_ok());
        assert!(check_package("install[0]", "foo=1:2.3~rc1-1").is_ok());
    }

    #[test]
    fn shell_syntax_and_bad_names_are_refused_naming_the_entry() {
        for bad in [
            "foo; rm -rf /",
            "Foo",
            "a",
            "-x",
            "+x",
            "$(id)",
            "foo bar",
            "",
            "foo=",
            "foo:",
            "foo=abc",
            "foo:amd64;x",
        ] {
            assert!(check_package("install[1]", bad).is_err(), "{bad:?}");
        }
        let err =
            check_packages("install", &["numactl".into(), "foo; rm -rf /".into()]).unwrap_err();
        assert_eq!(err.field, "install[1]");
        assert!(err.message.contains("`foo; rm -rf /`"), "{}", err.message);
    }
}
