//! Root's password in a customized tree's `/etc/shadow`, hashed with a salt derived
//! from what the step is keyed on, so two builds of the same step write the same
//! hash (virt-customize draws a random salt each time).
//!
//! The hash is SHA-512 crypt (`$6$`, Debian's default) made by the host's crypt(3)
//! through perl (perl-base is essential on Debian); the password travels on perl's
//! stdin, never in argv. The salt is 16 characters of blake3 over the password's
//! blake3 and the upstream image's content hash: the same password on the same base
//! image gives the same hash, which is the point, and also what it costs (two images
//! built from one base with one password show that they share it; the salt is no
//! longer secret-random, though still unique per base image and password, so generic
//! precomputed tables do not apply).

use std::io::Write as _;
use std::path::Path;
use std::process::Stdio;

use anyhow::{Context as _, bail};

use crate::secret::SecretValue;

/// What root's password becomes.
pub enum RootPassword<'a> {
    /// Nobody logs in with a password (`*`, as virt-customize's `disabled`).
    Locked,
    /// This password, hashed with a salt derived from `salt_material`.
    Set {
        password: &'a SecretValue,
        salt_material: &'a str,
    },
}

/// Set root's password field in `tree`'s `/etc/shadow`.
pub fn set(tree: &Path, password: RootPassword) -> anyhow::Result<()> {
    let field = match password {
        RootPassword::Locked => "*".to_string(),
        RootPassword::Set {
            password,
            salt_material,
        } => sha512_crypt(password, &derived_salt(password, salt_material))?,
    };
    let shadow = tree.join("etc/shadow");
    let text = std::fs::read_to_string(&shadow)
        .with_context(|| format!("cannot read the guest's {}", shadow.display()))?;
    let Some(updated) = with_root_field(&text, &field) else {
        bail!("the guest's /etc/shadow has no `root` entry; cannot set root's password");
    };
    std::fs::write(&shadow, updated)
        .with_context(|| format!("cannot write the guest's {}", shadow.display()))
}

/// 16 salt characters from crypt's alphabet, from the password and `material`.
fn derived_salt(password: &SecretValue, material: &str) -> String {
    const ALPHABET: &[u8; 64] = b"./0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    let mut h = blake3::Hasher::new();
    h.update(b"qflow root password salt\0");
    h.update(password.blake3_hex().as_bytes());
    h.update(b"\0");
    h.update(material.as_bytes());
    h.finalize().as_bytes()[..16]
        .iter()
        .map(|b| ALPHABET[(b & 63) as usize] as char)
        .collect()
}

/// `crypt(password, "$6$salt$")` by the host's libcrypt, through perl.
fn sha512_crypt(password: &SecretValue, salt: &str) -> anyhow::Result<String> {
    let mut child = std::process::Command::new("perl")
        .args([
            "-e",
            "local $/; my $pw = <STDIN>; print crypt($pw, $ARGV[0]) // ''",
            &format!("$6${salt}$"),
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("cannot run perl to hash root's password; install perl-base")?;
    let written = child
        .stdin
        .take()
        .context("perl's stdin")?
        .write_all(password.expose());
    let out = child.wait_with_output().context("cannot run perl")?;
    written.context("cannot hand the password to perl")?;
    let hash = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() || !hash.starts_with(&format!("$6${salt}$")) {
        bail!("the host's crypt(3) did not make a SHA-512 password hash");
    }
    Ok(hash)
}

/// `text` (an `/etc/shadow`) with root's password field replaced, if root is there.
fn with_root_field(text: &str, field: &str) -> Option<String> {
    let mut found = false;
    let lines: Vec<String> = text
        .split_inclusive('\n')
        .map(|line| match line.strip_prefix("root:") {
            Some(rest) if !found => {
                found = true;
                let after = rest.split_once(':').map_or("\n", |(_, a)| a);
                format!("root:{field}:{after}")
            }
            _ => line.to_string(),
        })
        .collect();
    found.then(|| lines.concat())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_roots_password_field_changes() {
        let text = "root:*:19700:0:99999:7:::\ndaemon:*:19700:0:99999:7:::\n";
        assert_eq!(
            with_root_field(text, "$6$s$h").unwrap(),
            "root:$6$s$h:19700:0:99999:7:::\ndaemon:*:19700:0:99999:7:::\n"
        );
        assert!(with_root_field("daemon:*:1::::::\n", "x").is_none());
    }

    #[test]
    fn the_same_password_and_base_give_the_same_verifiable_hash() {
        let dir = std::env::temp_dir().join(format!("qflow-root-pw-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("etc")).unwrap();
        let shadow = "root:*:19700:0:99999:7:::\n";
        std::fs::write(dir.join("etc/shadow"), shadow).unwrap();
        let pw = crate::secret::Secret::File(dir.join("pw").display().to_string());
        std::fs::write(dir.join("pw"), "s3cret: 'x\"\n").unwrap();
        let value = pw.read(&dir).unwrap().unwrap();
        let hash_with = |material: &str| {
            std::fs::write(dir.join("etc/shadow"), shadow).unwrap();
            set(
                &dir,
                RootPassword::Set {
                    password: &value,
                    salt_material: material,
                },
            )
            .unwrap();
            std::fs::read_to_string(dir.join("etc/shadow")).unwrap()
        };
        let a = hash_with("base-1");
        assert_eq!(a, hash_with("base-1"));
        assert_ne!(a, hash_with("base-2"));
        let hash = a.split(':').nth(1).unwrap();
        assert!(hash.starts_with("$6$"), "{hash}");
        // The host's crypt(3) verifies it.
        let check = std::process::Command::new("perl")
            .args([
                "-e",
                "print crypt($ARGV[0], $ARGV[1]) eq $ARGV[1] ? 'yes' : 'no'",
            ])
            .arg(String::from_utf8_lossy(value.expose()).as_ref())
            .arg(hash)
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&check.stdout), "yes");
        set(&dir, RootPassword::Locked).unwrap();
        assert!(
            std::fs::read_to_string(dir.join("etc/shadow"))
                .unwrap()
                .starts_with("root:*:19700:")
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
