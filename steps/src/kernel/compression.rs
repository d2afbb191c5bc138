//! How the bzImage is compressed (Kconfig's `KERNEL_GZIP` ... `KERNEL_ZSTD`
//! choice) and the host program make runs for it.
//!
//! The choice costs seconds twice in an edit-compile-boot loop: make compresses
//! the whole kernel after every relink, and the guest unpacks it before its first
//! line of output (under TCG, xz's unpacking alone takes about a second; LZ4's a
//! tenth). When a step's `options` choose a compression, its program is one of
//! the step's tools: checked before anything runs, named with its package, and
//! its version in the step's key (it shapes the bzImage's bytes).

use std::collections::BTreeMap;

use qflow_engine::Tool;

use super::config::{OptionValue, symbol};

/// A bzImage compression of Kconfig's choice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    Gzip,
    Bzip2,
    Lzma,
    Xz,
    Lzo,
    Lz4,
    Zstd,
}

/// Every compression Kconfig offers on x86.
pub const COMPRESSIONS: [Compression; 7] = [
    Compression::Gzip,
    Compression::Bzip2,
    Compression::Lzma,
    Compression::Xz,
    Compression::Lzo,
    Compression::Lz4,
    Compression::Zstd,
];

impl Compression {
    /// The Kconfig symbol that chooses it.
    pub fn symbol(self) -> &'static str {
        match self {
            Compression::Gzip => "CONFIG_KERNEL_GZIP",
            Compression::Bzip2 => "CONFIG_KERNEL_BZIP2",
            Compression::Lzma => "CONFIG_KERNEL_LZMA",
            Compression::Xz => "CONFIG_KERNEL_XZ",
            Compression::Lzo => "CONFIG_KERNEL_LZO",
            Compression::Lz4 => "CONFIG_KERNEL_LZ4",
            Compression::Zstd => "CONFIG_KERNEL_ZSTD",
        }
    }

    /// The program kbuild runs to compress the kernel, and its package.
    pub fn tool(self) -> Tool {
        match self {
            Compression::Gzip => Tool::new("gzip", &["--version"], "gzip"),
            Compression::Bzip2 => Tool::new("bzip2", &["--help"], "bzip2"),
            Compression::Lzma => Tool::new("lzma", &["--version"], "xz-utils"),
            Compression::Xz => Tool::new("xz", &["--version"], "xz-utils"),
            Compression::Lzo => Tool::new("lzop", &["--version"], "lzop"),
            Compression::Lz4 => Tool::new("lz4", &["--version"], "lz4"),
            Compression::Zstd => Tool::new("zstd", &["--version"], "zstd"),
        }
    }
}

/// The compression `options` set to `y`, if one is.
pub fn chosen(options: &BTreeMap<String, OptionValue>) -> Option<Compression> {
    options.iter().find_map(|(name, value)| {
        let on = matches!(value, OptionValue::Bool(true))
            || matches!(value, OptionValue::Text(t) if t == "y");
        let sym = symbol(name)?;
        COMPRESSIONS.into_iter().find(|c| on && c.symbol() == sym)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(yaml: &str) -> BTreeMap<String, OptionValue> {
        serde_yaml::from_str(yaml).unwrap()
    }

    #[test]
    fn the_compression_options_choose_is_found_by_either_spelling() {
        assert_eq!(
            chosen(&options("{ KERNEL_LZ4: y, KERNEL_XZ: n }")),
            Some(Compression::Lz4)
        );
        assert_eq!(
            chosen(&options("{ CONFIG_KERNEL_ZSTD: true }")),
            Some(Compression::Zstd)
        );
    }

    #[test]
    fn options_that_choose_no_compression_add_no_program() {
        assert_eq!(chosen(&options("{ KERNEL_XZ: n, EXT4_FS: y }")), None);
        assert_eq!(chosen(&options("{}")), None);
    }
}
