//! `${{ ... }}` expressions in workflow strings.
//!
//! The syntax is GitHub Actions', chosen so it never collides with the shell's
//! own `${VAR}` inside `sh -c` scripts. Three forms:
//! `${{ NAME }}` (a var), `${{ env.NAME }}` (the environment) and
//! `${{ steps.NAME }}` / `${{ steps.NAME.OUTPUT }}` (an upstream step's output
//! directory or one declared output; creates an edge). `$${{` is a literal `${{`.
//!
//! Imports nothing of the engine.

/// One parsed expression.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expr {
    /// `${{ vars.X }}`.
    Var(String),
    /// `${{ env.X }}`.
    Env(String),
    /// `${{ steps.X }}` or `${{ steps.X.OUT }}`.
    Step {
        /// The step.
        name: String,
        /// One of its outputs, if named.
        output: Option<String>,
    },
}

impl std::fmt::Display for Expr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Expr::Var(n) => write!(f, "${{{{ {n} }}}}"),
            Expr::Env(n) => write!(f, "${{{{ env.{n} }}}}"),
            Expr::Step { name, output: None } => write!(f, "${{{{ steps.{name} }}}}"),
            Expr::Step {
                name,
                output: Some(o),
            } => write!(f, "${{{{ steps.{name}.{o} }}}}"),
        }
    }
}

fn parse_expr(body: &str) -> Result<Expr, String> {
    let body = body.trim();
    if let Some(rest) = body.strip_prefix("steps.") {
        let (name, output) = match rest.split_once('.') {
            Some((n, o)) => (n, Some(o.to_string())),
            None => (rest, None),
        };
        if name.is_empty() {
            return Err(format!(
                "`${{{{ {body} }}}}` names no step; write `${{{{ steps.NAME }}}}`"
            ));
        }
        return Ok(Expr::Step {
            name: name.to_string(),
            output,
        });
    }
    if let Some(name) = body.strip_prefix("env.") {
        if !is_identifier(name) {
            return Err(format!("`{name}` is not an environment variable name"));
        }
        return Ok(Expr::Env(name.to_string()));
    }
    if is_identifier(body) {
        return Ok(Expr::Var(body.to_string()));
    }
    Err(format!(
        "cannot read `${{{{ {body} }}}}`: expected `${{{{ VAR }}}}`, `${{{{ env.NAME }}}}` or `${{{{ steps.NAME }}}}`"
    ))
}

fn is_identifier(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// Every expression in `text`, in order.
pub fn expressions(text: &str) -> Result<Vec<Expr>, String> {
    let mut found = Vec::new();
    substitute(text, &mut |e| {
        found.push(e.clone());
        Ok(None)
    })?;
    Ok(found)
}

/// Replace each expression by what `resolve` returns; `Ok(None)` keeps it as written.
pub fn substitute(
    text: &str,
    resolve: &mut dyn FnMut(&Expr) -> Result<Option<String>, String>,
) -> Result<String, String> {
    if !text.contains("${{") {
        return Ok(text.to_string());
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("${{") {
        if start > 0 && rest[..start].ends_with('$') {
            // `$${{` is an escaped literal `${{`.
            out.push_str(&rest[..start - 1]);
            out.push_str("${{");
            rest = &rest[start + 3..];
            continue;
        }
        out.push_str(&rest[..start]);
        let after = &rest[start + 3..];
        let Some(end) = after.find("}}") else {
            return Err(format!("`${{{{` without a closing `}}}}` in `{text}`"));
        };
        if let Some(inner) = after[..end].find("${{") {
            // Show the inner expression and the outer one up to its own `}}`.
            let inner_end = after[inner..]
                .find("}}")
                .map_or(after.len(), |e| inner + e + 2);
            let outer_end = after[inner_end..]
                .find("}}")
                .map_or(after.len(), |e| inner_end + e + 2);
            return Err(format!(
                "interpolations cannot nest: `{}` is inside `${{{{{}`; write the inner value out \
                 (a step's name as `${{{{ steps.NAME }}}}`, a var's value in the var itself)",
                &after[inner..inner_end],
                &after[..outer_end]
            ));
        }
        let expr = parse_expr(&after[..end])?;
        match resolve(&expr)? {
            Some(v) => out.push_str(&v),
            None => out.push_str(&expr.to_string()),
        }
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_three_forms_and_keeps_shell_variables() {
        let e = expressions("echo ${{ greeting }} ${HOME} ${{ env.USER }} ${{steps.gen.out.txt}}")
            .unwrap();
        assert_eq!(
            e,
            vec![
                Expr::Var("greeting".into()),
                Expr::Env("USER".into()),
                Expr::Step {
                    name: "gen".into(),
                    output: Some("out.txt".into())
                },
            ]
        );
        let s = substitute("a ${{ x }} $${{ y }} ${Z}", &mut |e| {
            Ok(match e {
                Expr::Var(n) if n == "x" => Some("1".into()),
                _ => None,
            })
        })
        .unwrap();
        assert_eq!(s, "a 1 ${{ y }} ${Z}");
    }

    #[test]
    fn rejects_unclosed_and_malformed_expressions() {
        assert!(expressions("${{ x").is_err());
        assert!(expressions("${{ a b }}").is_err());
    }

    #[test]
    fn a_nested_expression_is_refused_as_nesting() {
        let err = expressions("echo ${{ steps.${{ v }} }}").unwrap_err();
        assert!(err.contains("cannot nest"), "{err}");
        assert!(
            err.contains("`${{ v }}` is inside `${{ steps.${{ v }} }}`"),
            "{err}"
        );
        assert!(!err.contains("no step"), "{err}");
    }
}
