//! `qflow completions SHELL`: the shell's completion script, which offers the
//! step names of the workflow found where the user types (for targets, `--force`,
//! `--step` and `attach`).
//!
//! clap_complete writes the script for the options and subcommands; each shell's
//! part here wraps it: at every completion the script asks the hidden
//! `qflow __complete-steps -- WORDS...` (the words after `qflow`, the last one
//! being completed), which prints the step names when the cursor is at a step
//! and nothing otherwise; with nothing, the generated completion answers. The
//! workflow is found as the command line would find it (`-C`, `-f`, a first
//! word naming a file, else the one in this directory or a parent).

use clap::CommandFactory;
use qflow_engine::Registry;

use crate::cli::{Cli, Located};

/// Print the completion script for `shell`.
pub fn print(shell: clap_complete::Shell) -> anyhow::Result<i32> {
    let mut generated = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "qflow", &mut generated);
    let generated = String::from_utf8(generated)?;
    print!("{}", with_steps(shell, &generated));
    Ok(0)
}

/// The generated script with step names offered where a step is expected.
fn with_steps(shell: clap_complete::Shell, generated: &str) -> String {
    use clap_complete::Shell;
    match shell {
        // The generated `_qflow` becomes `_qflow_generated`; a new `_qflow`
        // asks for steps first (bash's `complete -F _qflow` and zsh's
        // autoloaded `_qflow` both reach the new one).
        Shell::Bash => {
            let renamed = generated.replacen("\n_qflow() {", "\n_qflow_generated() {", 1);
            let renamed = if generated.starts_with("_qflow() {") {
                generated.replacen("_qflow() {", "_qflow_generated() {", 1)
            } else {
                renamed
            };
            format!("{BASH}{renamed}")
        }
        Shell::Zsh => {
            let renamed = generated.replacen("\n_qflow() {", "\n_qflow_generated() {", 1);
            let at = renamed.find("\n_qflow_generated() {").map_or(0, |i| i + 1);
            format!("{}{ZSH}{}", &renamed[..at], &renamed[at..])
        }
        // fish completes an option's value only from that option's own line.
        Shell::Fish => {
            let mut out = String::new();
            for line in generated.lines() {
                out.push_str(line);
                let takes_step = [" -l force ", " -l step "].iter().any(|o| line.contains(o));
                if takes_step && line.ends_with(" -r") {
                    out.push_str(" -f -a '(__fish_qflow_steps)'");
                }
                out.push('\n');
            }
            format!("{out}{FISH}")
        }
        _ => generated.to_string(),
    }
}

const BASH: &str = r#"# Step names where a step is expected (`qflow __complete-steps`), else the usual completion.
_qflow() {
    local steps
    steps="$("$1" __complete-steps -- "${COMP_WORDS[@]:1:COMP_CWORD}" 2>/dev/null)"
    if [[ -n "$steps" ]]; then
        COMPREPLY=($(compgen -W "$steps" -- "${COMP_WORDS[COMP_CWORD]}"))
        [[ ${#COMPREPLY[@]} -gt 0 ]] && return 0
    fi
    _qflow_generated "$@"
}

"#;

const ZSH: &str = r#"# Step names where a step is expected (`qflow __complete-steps`), else the usual completion.
_qflow() {
    local -a steps
    steps=(${(f)"$(${words[1]} __complete-steps -- "${(@)words[2,CURRENT]}" 2>/dev/null)"})
    (( ${#steps} )) && compadd -a steps && return 0
    _qflow_generated "$@"
}

"#;

const FISH: &str = r#"
# Step names where a step is expected (`qflow __complete-steps`).
function __fish_qflow_steps
    set -l words (commandline -opc)
    set -l current (commandline -ct)
    $words[1] __complete-steps -- $words[2..-1] "$current" 2>/dev/null
end
complete -c qflow -n '__fish_qflow_steps >/dev/null' -a '(__fish_qflow_steps)'
"#;

/// `qflow __complete-steps -- WORDS...`: the step names when the last word is
/// at a step, one per line; exit 1 (printing nothing) otherwise.
pub fn complete_steps(registry: &Registry, words: &[String]) -> anyhow::Result<i32> {
    let Some(found) = StepPosition::of(words) else {
        return Ok(1);
    };
    if let Some(dir) = &found.directory
        && std::env::set_current_dir(dir).is_err()
    {
        return Ok(1);
    }
    let file = match found.file {
        Some(f) => std::path::PathBuf::from(f),
        None => match crate::workflow_file::discover_one(std::path::Path::new(".")) {
            Ok(f) => f,
            Err(_) => return Ok(1),
        },
    };
    let located = Located {
        file,
        targets: vec![],
        force: vec![],
        cache: None,
        set: vec![],
    };
    let Ok(wf) = super::load(&located, registry) else {
        return Ok(1);
    };
    let mut out = String::new();
    for s in &wf.steps {
        out.push_str(&s.name);
        out.push('\n');
    }
    print!("{out}");
    Ok(if wf.steps.is_empty() { 1 } else { 0 })
}

/// What a command line says about where a step name would go.
#[derive(Debug, PartialEq)]
struct StepPosition {
    /// `-C DIR`.
    directory: Option<String>,
    /// `-f FILE`, or a first word naming a workflow file.
    file: Option<String>,
}

impl StepPosition {
    /// The workflow to ask when the last of `words` (those after `qflow`) is at a
    /// step: after `--force` or `--step`, or a word (not an option, not an
    /// option's value) of `apply`, `plan`, `graph` or `attach`.
    fn of(words: &[String]) -> Option<StepPosition> {
        let (current, before) = words.split_last()?;
        let root = Cli::command();
        let mut directory = None;
        let mut file = None;
        let mut sub: Option<clap::Command> = None;
        let mut positional = 0;
        let mut i = 0;
        let mut at_step = false;
        while i <= before.len() {
            let word = words[i].as_str();
            let last = i == before.len();
            let cmd = sub.as_ref().unwrap_or(&root);
            if let Some(arg) = option(cmd, &root, word) {
                let takes_value = arg.get_action().takes_values();
                if let Some((_, value)) = word.split_once('=').filter(|_| takes_value) {
                    match arg.get_id().as_str() {
                        "directory" => directory = Some(value.to_string()),
                        "file" => file = Some(value.to_string()),
                        _ => {}
                    }
                } else if takes_value && !last {
                    let value = words[i + 1].clone();
                    match arg.get_id().as_str() {
                        "directory" => directory = Some(value),
                        "file" => file = Some(value),
                        _ => {}
                    }
                    if i + 1 == before.len() {
                        // The value is the word being completed.
                        let name = arg.get_value_names().unwrap_or_default();
                        at_step = name.iter().any(|n| n == "STEP");
                    }
                    i += 2;
                    continue;
                }
                i += 1;
                continue;
            }
            if word.starts_with('-') {
                i += 1;
                continue;
            }
            match &sub {
                None => {
                    if last {
                        return None;
                    }
                    sub = root.find_subcommand(word).cloned();
                    sub.as_ref()?;
                }
                Some(cmd) => {
                    let takes_steps =
                        ["apply", "plan", "graph", "attach"].contains(&cmd.get_name());
                    if positional == 0
                        && file.is_none()
                        && !last
                        && cmd.get_name() != "attach"
                        && crate::workflow_file::looks_like_file(word)
                    {
                        file = Some(word.to_string());
                    }
                    positional += 1;
                    if last {
                        at_step = takes_steps && !current.starts_with('-');
                    }
                }
            }
            i += 1;
        }
        at_step.then_some(StepPosition { directory, file })
    }
}

/// The option `word` names (`-f`, `--file`, `--file=x`) in `cmd` or the global ones.
fn option<'c>(
    cmd: &'c clap::Command,
    root: &'c clap::Command,
    word: &str,
) -> Option<&'c clap::Arg> {
    let find = |c: &'c clap::Command| -> Option<&'c clap::Arg> {
        if let Some(long) = word.strip_prefix("--") {
            let long = long.split('=').next().unwrap_or(long);
            return c.get_arguments().find(|a| a.get_long() == Some(long));
        }
        let mut chars = word.strip_prefix('-')?.chars();
        let short = chars.next()?;
        // `-Cdir` carries its value: handled as a flag here.
        if chars.next().is_some() {
            return None;
        }
        c.get_arguments().find(|a| a.get_short() == Some(short))
    };
    find(cmd).or_else(|| find(root))
}

#[cfg(test)]
mod tests {
    use super::StepPosition;

    fn at(line: &str) -> Option<StepPosition> {
        let mut words: Vec<String> = line.split(' ').map(String::from).collect();
        if line.ends_with(' ') {
            words.pop();
            words.push(String::new());
        }
        StepPosition::of(&words)
    }

    fn plain() -> Option<StepPosition> {
        Some(StepPosition {
            directory: None,
            file: None,
        })
    }

    #[test]
    fn steps_are_offered_for_targets_force_step_and_attach_only() {
        assert_eq!(at("apply "), plain());
        assert_eq!(at("apply bu"), plain());
        assert_eq!(at("plan --force "), plain());
        assert_eq!(at("apply --force x --force "), plain());
        assert_eq!(at("clean --step "), plain());
        assert_eq!(at("attach "), plain());
        assert_eq!(at("graph a "), plain());
        assert_eq!(at("apply -j "), None, "a number goes there");
        assert_eq!(at("apply --"), None, "an option goes there");
        assert_eq!(at("status "), None);
        assert_eq!(at("ap"), None, "a subcommand goes there");
        assert_eq!(at("apply -f "), None, "a file goes there");
    }

    #[test]
    fn the_workflow_is_the_one_the_command_line_names() {
        let named = Some(StepPosition {
            directory: Some("sub".into()),
            file: Some("other.yaml".into()),
        });
        assert_eq!(at("-C sub apply -f other.yaml "), named);
        assert_eq!(at("-C sub apply other.yaml "), named);
        assert_eq!(at("-C sub apply --file=other.yaml "), named);
    }
}
