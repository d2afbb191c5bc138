//! CSV as RFC 4180 writes it: a field holding a comma, a quote or a line break is
//! quoted and its quotes doubled, so every table qflow writes reads back cell for
//! cell, in qflow (metrics from a guest's CSV file) and in a spreadsheet.

/// One record as a CSV line, with its `\n`.
pub fn write_record<S: AsRef<str>>(fields: &[S]) -> String {
    let mut line = fields
        .iter()
        .map(|f| quote(f.as_ref()))
        .collect::<Vec<_>>()
        .join(",");
    line.push('\n');
    line
}

/// A field, quoted when it must be.
pub fn quote(field: &str) -> String {
    if field.contains([',', '"', '\n', '\r']) || field.starts_with(' ') || field.ends_with(' ') {
        format!("\"{}\"", field.replace('"', "\"\""))
    } else {
        field.to_string()
    }
}

/// Parse CSV text into records. Quoted fields may hold commas, doubled quotes and
/// line breaks; `\r\n` and `\n` both end a record; a final line break adds no
/// empty record.
pub fn parse(text: &str) -> Result<Vec<Vec<String>>, String> {
    let mut records = Vec::new();
    let mut record = Vec::new();
    let mut field = String::new();
    let mut chars = text.chars().peekable();
    let mut line = 1;
    let mut in_record = false;
    while let Some(c) = chars.next() {
        in_record = true;
        match c {
            '"' if field.is_empty() => {
                let start = line;
                loop {
                    match chars.next() {
                        None => {
                            return Err(format!("line {start}: a quoted field is never closed"));
                        }
                        Some('"') if chars.peek() == Some(&'"') => {
                            chars.next();
                            field.push('"');
                        }
                        Some('"') => break,
                        Some(ch) => {
                            if ch == '\n' {
                                line += 1;
                            }
                            field.push(ch);
                        }
                    }
                }
                match chars.peek() {
                    None | Some(',') | Some('\n') | Some('\r') => {}
                    Some(other) => {
                        return Err(format!(
                            "line {line}: `{other}` after a closing quote; quote the whole field"
                        ));
                    }
                }
            }
            ',' => record.push(std::mem::take(&mut field)),
            '\r' if chars.peek() == Some(&'\n') => {}
            '\n' => {
                record.push(std::mem::take(&mut field));
                records.push(std::mem::take(&mut record));
                in_record = false;
                line += 1;
            }
            other => field.push(other),
        }
    }
    if in_record {
        record.push(field);
        records.push(record);
    }
    Ok(records)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_with_commas_quotes_and_line_breaks_read_back_as_written() {
        let records = vec![
            vec!["run".to_string(), "note".into(), "ops".into()],
            vec![
                "size=16,mode=a".into(),
                "said \"fast\"".into(),
                "12.5".into(),
            ],
            vec!["".into(), "two\nlines".into(), " padded ".into()],
        ];
        let text: String = records.iter().map(|r| write_record(r)).collect();
        assert!(text.contains("\"size=16,mode=a\""), "{text}");
        assert!(text.contains("\"said \"\"fast\"\"\""), "{text}");
        assert_eq!(parse(&text).unwrap(), records);
    }

    #[test]
    fn crlf_and_a_missing_final_line_break_are_read() {
        assert_eq!(
            parse("a,b\r\n1,2").unwrap(),
            vec![vec!["a", "b"], vec!["1", "2"]]
        );
    }

    #[test]
    fn an_unclosed_quote_names_its_line() {
        let e = parse("a,b\n\"x,1\n").unwrap_err();
        assert!(e.contains("line 2"), "{e}");
    }
}
