//! The packages a customized image holds, read from its dpkg database, for the lock.
//!
//! An artifact evaluator needs to know which versions `install:` brought in: apt
//! picks whatever the mirror offers that day. The customized tree's
//! `/var/lib/dpkg/status` (at hand when the image is rebuilt from its tree, read
//! with guestfish otherwise) says what is installed; qflow records two facts in
//! `qflow.lock`: `installed`, each `install:` entry with the version the image now
//! holds, and `packages`, every installed package (`name=version`, one a line, as
//! the `debootstrap` kind records), which also covers what the entries pulled in.

use std::collections::BTreeMap;

/// One installed package's architecture and version.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Installed {
    arch: String,
    version: String,
    provides: Vec<String>,
}

/// The installed packages of a dpkg database, by name.
#[derive(Debug, Default)]
pub struct InstalledPackages {
    by_name: BTreeMap<String, Vec<Installed>>,
}

impl InstalledPackages {
    /// Parse the text of `/var/lib/dpkg/status`; packages not fully installed are left out.
    pub fn parse(status: &str) -> InstalledPackages {
        let mut by_name: BTreeMap<String, Vec<Installed>> = BTreeMap::new();
        for stanza in status.split("\n\n") {
            let mut fields: BTreeMap<&str, String> = BTreeMap::new();
            let mut last: Option<&str> = None;
            for line in stanza.lines() {
                if line.starts_with([' ', '\t']) {
                    // A continuation line (a description's): only `Provides` matters and it is one line.
                    if let Some(name) = last {
                        fields.entry(name).or_default().push_str(line);
                    }
                    continue;
                }
                if let Some((name, value)) = line.split_once(':') {
                    fields.insert(name, value.trim().to_string());
                    last = Some(name);
                }
            }
            let (Some(name), Some(version)) = (fields.get("Package"), fields.get("Version")) else {
                continue;
            };
            let installed = fields
                .get("Status")
                .is_some_and(|s| s.split_whitespace().last() == Some("installed"));
            if !installed {
                continue;
            }
            let provides = fields
                .get("Provides")
                .map(|p| {
                    p.split(',')
                        .filter_map(|e| e.split_whitespace().next())
                        .map(str::to_string)
                        .collect()
                })
                .unwrap_or_default();
            by_name.entry(name.clone()).or_default().push(Installed {
                arch: fields.get("Architecture").cloned().unwrap_or_default(),
                version: version.clone(),
                provides,
            });
        }
        InstalledPackages { by_name }
    }

    /// Every installed package as `name=version` lines, sorted (`name:arch=version`
    /// when one name is installed for several architectures).
    pub fn all(&self) -> String {
        let mut lines = Vec::new();
        for (name, list) in &self.by_name {
            for p in list {
                if list.len() > 1 {
                    lines.push(format!("{name}:{}={}", p.arch, p.version));
                } else {
                    lines.push(format!("{name}={}", p.version));
                }
            }
        }
        lines.sort();
        lines.join("\n")
    }

    /// Each `install:` entry (`NAME`, `NAME:ARCH`, `NAME=VERSION`) as `name=version`
    /// with the version installed, in the entries' order. A virtual package is
    /// written `name=provider=version`; one the database does not hold (removed
    /// again by `uninstall:` or a command) `name=(not installed)`.
    pub fn asked_for(&self, entries: &[String]) -> String {
        let mut lines = Vec::new();
        for entry in entries {
            let name_arch = entry.split_once('=').map_or(entry.as_str(), |(n, _)| n);
            let (name, arch) = match name_arch.split_once(':') {
                Some((n, a)) => (n, Some(a)),
                None => (name_arch, None),
            };
            let arch_ok = |p: &Installed| arch.is_none_or(|a| p.arch == a || p.arch == "all");
            if let Some(p) = self
                .by_name
                .get(name)
                .and_then(|list| list.iter().find(|p| arch_ok(p)))
            {
                lines.push(format!("{name_arch}={}", p.version));
                continue;
            }
            let provider = self.by_name.iter().find_map(|(pname, list)| {
                list.iter()
                    .find(|p| arch_ok(p) && p.provides.iter().any(|v| v == name))
                    .map(|p| (pname, p))
            });
            match provider {
                Some((pname, p)) => lines.push(format!("{name_arch}={pname}={}", p.version)),
                // `uninstall:` or a guest command may have removed it again: say so.
                None => lines.push(format!("{name_arch}=(not installed)")),
            }
        }
        lines.join("\n")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STATUS: &str = "Package: numactl\nStatus: install ok installed\nPriority: optional\n\
Architecture: amd64\nVersion: 2.0.16-1\nDescription: NUMA scheduling\n a longer text\n\n\
Package: mawk\nStatus: install ok installed\nArchitecture: amd64\nVersion: 1.3.4.20200120-3.1\n\
Provides: awk\n\n\
Package: less\nStatus: deinstall ok config-files\nArchitecture: amd64\nVersion: 590-2\n\n\
Package: libc6\nStatus: install ok installed\nArchitecture: amd64\nVersion: 2.36-9\n\n\
Package: libc6\nStatus: install ok installed\nArchitecture: i386\nVersion: 2.36-9\n";

    #[test]
    fn the_asked_for_packages_get_the_installed_versions() {
        let p = InstalledPackages::parse(STATUS);
        let entries = ["numactl", "awk", "libc6:i386", "numactl=2.0.16-1"].map(String::from);
        assert_eq!(
            p.asked_for(&entries),
            "numactl=2.0.16-1\nawk=mawk=1.3.4.20200120-3.1\nlibc6:i386=2.36-9\nnumactl=2.0.16-1"
        );
    }

    #[test]
    fn a_removed_package_is_recorded_as_not_installed() {
        let p = InstalledPackages::parse(STATUS);
        assert_eq!(p.asked_for(&["less".to_string()]), "less=(not installed)");
        assert_eq!(
            p.all(),
            "libc6:amd64=2.36-9\nlibc6:i386=2.36-9\nmawk=1.3.4.20200120-3.1\nnumactl=2.0.16-1"
        );
    }
}
