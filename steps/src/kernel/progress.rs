//! Reading kbuild's output: what make is doing now, how much it compiled, and
//! the compiler's error lines when it fails.
//!
//! Kbuild prints one line per action, `  CC      kernel/reboot.o` (two spaces,
//! the action padded to eight columns, the target). The progress line shows the
//! latest with a count; the step log keeps everything. gcc and clang report
//! errors as `file:line:col: error: ...` followed by the source line and a caret
//! (`   12 | x`, `      | ^`); those are kept so a failure shows them rather
//! than make's `Error 2`.

/// How many error lines a failure quotes at most.
const MAX_ERROR_LINES: usize = 30;

/// One kbuild action line: (`CC`, `kernel/reboot.o`).
pub fn action(line: &str) -> Option<(&str, &str)> {
    let rest = line.strip_prefix("  ")?;
    let (verb, target) = rest.split_once(' ')?;
    let target = target.trim_start();
    let target = target
        .strip_prefix("[M]")
        .map(str::trim_start)
        .unwrap_or(target);
    let verb_ok = !verb.is_empty()
        && verb
            .chars()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_');
    (verb_ok && !target.is_empty() && !target.contains(' ')).then_some((verb, target))
}

/// The running account of one make invocation.
#[derive(Debug, Default)]
pub struct MakeProgress {
    /// Targets of `CC` lines, in order.
    pub compiled: Vec<String>,
    /// kbuild action lines seen.
    pub actions: usize,
    /// Compiler error lines, with their source and caret lines.
    pub errors: Vec<String>,
    in_error: bool,
}

impl MakeProgress {
    /// Take one output line; return the progress text to show, if any.
    pub fn line(&mut self, line: &str) -> Option<String> {
        if line.contains(": error: ")
            || line.contains(": fatal error: ")
            || line.contains(": undefined reference to ")
        {
            self.push_error(line);
            self.in_error = true;
            return None;
        }
        if self.in_error && line.contains(" | ") {
            self.push_error(line);
            return None;
        }
        self.in_error = false;
        let (verb, target) = action(line)?;
        self.actions += 1;
        if verb == "CC" {
            self.compiled.push(target.to_string());
        }
        Some(format!(
            "[{} compiled] {verb} {target}",
            self.compiled.len()
        ))
    }

    fn push_error(&mut self, line: &str) {
        if self.errors.len() < MAX_ERROR_LINES {
            self.errors.push(line.to_string());
        }
    }

    /// A one-line summary for the step log.
    pub fn summary(&self) -> String {
        const SHOWN: usize = 20;
        let mut s = format!("make compiled {} file(s)", self.compiled.len());
        if !self.compiled.is_empty() {
            let shown: Vec<&str> = self
                .compiled
                .iter()
                .take(SHOWN)
                .map(String::as_str)
                .collect();
            s.push_str(": ");
            s.push_str(&shown.join(", "));
            if self.compiled.len() > SHOWN {
                s.push_str(&format!(", ... ({} more)", self.compiled.len() - SHOWN));
            }
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kbuild_action_lines_are_recognised() {
        assert_eq!(
            action("  CC      kernel/reboot.o"),
            Some(("CC", "kernel/reboot.o"))
        );
        assert_eq!(
            action("  CC [M]  fs/ext4/inode.o"),
            Some(("CC", "fs/ext4/inode.o"))
        );
        assert_eq!(
            action("  HOSTCC  scripts/basic/fixdep"),
            Some(("HOSTCC", "scripts/basic/fixdep"))
        );
        assert_eq!(
            action("  BUILD   arch/x86/boot/bzImage"),
            Some(("BUILD", "arch/x86/boot/bzImage"))
        );
        assert_eq!(action("make[1]: Entering directory '/tmp/b'"), None);
        assert_eq!(action("Kernel: arch/x86/boot/bzImage is ready  (#1)"), None);
        assert_eq!(action("   12 |  int x"), None);
    }

    #[test]
    fn progress_counts_compiles_and_keeps_compiler_errors() {
        let mut p = MakeProgress::default();
        assert_eq!(
            p.line("  CC      init/main.o").as_deref(),
            Some("[1 compiled] CC init/main.o")
        );
        assert_eq!(
            p.line("  LD      vmlinux.o").as_deref(),
            Some("[1 compiled] LD vmlinux.o")
        );
        assert_eq!(p.line("kernel/reboot.c: In function 'reboot_init':"), None);
        p.line("kernel/reboot.c:4:17: error: expected ';' before '}' token");
        p.line("    4 |         return 6");
        p.line("      |                 ^");
        p.line("make[2]: *** [Makefile:12: kernel/reboot.o] Error 1");
        assert_eq!(
            p.errors,
            vec![
                "kernel/reboot.c:4:17: error: expected ';' before '}' token".to_string(),
                "    4 |         return 6".to_string(),
                "      |                 ^".to_string(),
            ]
        );
        assert_eq!(p.summary(), "make compiled 1 file(s): init/main.o");
    }
}
