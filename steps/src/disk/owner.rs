//! The owner a `disk` step gives every file: a numeric `uid:gid`, the recipe's `chown -R`.

/// A numeric `uid:gid`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Owner {
    pub uid: u32,
    pub gid: u32,
}

impl Owner {
    pub fn parse(text: &str) -> Result<Owner, String> {
        let bad = || format!("`{text}` is not an owner; write numeric `uid:gid`, e.g. `1000:1000`");
        let (u, g) = text.split_once(':').ok_or_else(bad)?;
        let num = |s: &str| {
            (!s.is_empty() && s.chars().all(|c| c.is_ascii_digit()))
                .then(|| s.parse::<u32>().ok())
                .flatten()
        };
        Ok(Owner {
            uid: num(u).ok_or_else(bad)?,
            gid: num(g).ok_or_else(bad)?,
        })
    }
}

impl std::fmt::Display for Owner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.uid, self.gid)
    }
}
