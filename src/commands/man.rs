//! `qflow man`: the manual page `qflow.1` as roff, generated from the command
//! line's own definitions (clap_mangen), so it never disagrees with `--help`.
//! `scripts/install-host-deps.sh` installs it as
//! `/usr/local/share/man/man1/qflow.1`.
//!
//! One page holds everything: qflow's synopsis, global options and list of
//! commands, then a section per command (`QFLOW APPLY`, ...) with its synopsis,
//! description and options. Hidden (internal) commands are left out.

use std::io::Write;

use clap::CommandFactory;

use crate::cli::Cli;

/// Print the manual page.
pub fn print() -> anyhow::Result<i32> {
    let page = render()?;
    std::io::stdout().lock().write_all(&page)?;
    Ok(0)
}

/// `qflow.1`, as roff.
pub fn render() -> anyhow::Result<Vec<u8>> {
    let mut root = Cli::command();
    root.build();
    let man = clap_mangen::Man::new(root.clone()).manual("qflow manual");
    let mut out = Vec::new();
    man.render_title(&mut out)?;
    man.render_name_section(&mut out)?;
    man.render_synopsis_section(&mut out)?;
    man.render_description_section(&mut out)?;
    man.render_options_section(&mut out)?;
    let shown = || root.get_subcommands().filter(|s| !s.is_hide_set());
    writeln!(out, ".SH COMMANDS")?;
    for sub in shown() {
        let about = sub.get_about().map(|a| a.to_string()).unwrap_or_default();
        writeln!(
            out,
            ".TP\n\\fBqflow {}\\fR\n{}",
            sub.get_name(),
            escape(&about)
        )?;
    }
    for sub in shown() {
        let name = sub.get_name();
        writeln!(out, ".SH \"QFLOW {}\"", name.to_uppercase())?;
        let sub_man = clap_mangen::Man::new(sub.clone());
        for part in [
            render_part(|w| sub_man.render_synopsis_section(w))?,
            render_part(|w| sub_man.render_description_section(w))?,
            render_part(|w| sub_man.render_options_section(w))?,
        ] {
            out.extend(part);
        }
    }
    man.render_version_section(&mut out)?;
    Ok(out)
}

/// `text` safe in a roff line: backslashes doubled, hyphens as `\-`, no leading dot.
fn escape(text: &str) -> String {
    let text = text.replace('\\', "\\\\").replace('-', "\\-");
    match text.starts_with(['.', '\'']) {
        true => format!("\\&{text}"),
        false => text,
    }
}

/// A section of a command's page, its `.SH` heading made a `.SS` subheading of
/// the command's section (`Synopsis`, `Description`, `Options`).
fn render_part(
    section: impl FnOnce(&mut Vec<u8>) -> std::io::Result<()>,
) -> anyhow::Result<Vec<u8>> {
    let mut raw = Vec::new();
    section(&mut raw)?;
    let text = String::from_utf8(raw)?;
    let mut out = String::new();
    for line in text.lines() {
        match line.strip_prefix(".SH ") {
            Some(heading) => {
                let heading = heading.trim_matches('"').to_lowercase();
                let mut chars = heading.chars();
                let heading: String = (chars.next().map(|c| c.to_ascii_uppercase()))
                    .into_iter()
                    .chain(chars)
                    .collect();
                out.push_str(&format!(".SS {heading}\n"));
            }
            None => {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    Ok(out.into_bytes())
}
