//! A boot's `matrix`: one step, several runs, one per combination of parameters.
//!
//! The engine schedules steps, not runs, so the expansion happens inside the boot
//! step: each run gets its own output directory named by its parameters
//! (`mode=a,size=16/`, names in sorted order), its parameters exported as guest
//! shell variables, and `{{ matrix.NAME }}` replaced in its commands, plugin
//! arguments and extra QEMU arguments. That form has no `$` so it passes through the
//! engine's own `${{ }}` interpolation, which runs before the step sees its fields.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use qflow_engine::FieldError;
use regex::Regex;

use super::Scalar;

/// The guest variable (and label part) holding a run's repeat number under `repeat: N`.
pub const REPEAT: &str = "repeat";

/// A run's parameters, `(name, value)` in name order.
pub type Params = Vec<(String, String)>;

/// The runs as `(label, params)`: one unlabelled run without a matrix, else the
/// cartesian product in a stable order, labelled `name=value,...`.
pub fn expand(matrix: &BTreeMap<String, Vec<Scalar>>) -> Vec<(Option<String>, Params)> {
    if matrix.is_empty() {
        return vec![(None, Vec::new())];
    }
    let mut combos: Vec<Params> = vec![Vec::new()];
    for (name, values) in matrix {
        let mut next = Vec::new();
        for combo in &combos {
            for v in values {
                let mut c = combo.clone();
                c.push((name.clone(), v.to_string()));
                next.push(c);
            }
        }
        combos = next;
    }
    combos
        .into_iter()
        .map(|c| {
            let label = c
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(",");
            (Some(label), c)
        })
        .collect()
}

/// Check names (shell variables), values (directory names) and every
/// `{{ matrix.NAME }}` in `texts` (`(field, text)`).
pub fn check(
    matrix: &BTreeMap<String, Vec<Scalar>>,
    texts: &[(String, &str)],
) -> Result<(), FieldError> {
    for (name, values) in matrix {
        let field = format!("matrix.{name}");
        if !is_identifier(name) {
            return Err(FieldError::new(
                field,
                format!("`{name}` must be a shell variable name (letters, digits, `_`)"),
            ));
        }
        if values.is_empty() {
            return Err(FieldError::new(field, "give at least one value"));
        }
        for v in values {
            let v = v.to_string();
            let fits = !v.is_empty()
                && !v.starts_with('.')
                && v.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "._+-@%:".contains(c));
            if !fits {
                return Err(FieldError::new(
                    field,
                    format!("`{v}` names an output directory: use letters, digits and `._+-@%:`"),
                ));
            }
        }
    }
    for (field, text) in texts {
        for caps in reference().captures_iter(text) {
            if !matrix.contains_key(&caps[1]) {
                return Err(FieldError::new(
                    field.clone(),
                    format!("`{}` names no parameter of this step's `matrix`", &caps[0]),
                ));
            }
        }
    }
    Ok(())
}

fn reference() -> &'static Regex {
    static RE: OnceLock<Regex> = OnceLock::new();
    RE.get_or_init(|| Regex::new(r"\{\{\s*matrix\.([A-Za-z_][A-Za-z0-9_]*)\s*\}\}").unwrap())
}

/// Replace every `{{ matrix.NAME }}` in `text` with the run's value of NAME.
pub fn substitute(text: &str, params: &[(String, String)]) -> String {
    reference()
        .replace_all(text, |caps: &regex::Captures| {
            params
                .iter()
                .find(|(k, _)| k == &caps[1])
                .map(|(_, v)| v.clone())
                .unwrap_or_else(|| caps[0].to_string())
        })
        .into_owned()
}

fn is_identifier(s: &str) -> bool {
    !s.is_empty()
        && !s.starts_with(|c: char| c.is_ascii_digit())
        && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}
