//! A parser for the Prometheus text exposition format (0.0.4, and the OpenMetrics text that
//! prometheus-client writes): what `ringws top` reads from `/metrics`.
//!
//! Sample lines are `name{label="value",...} value [timestamp]`; `#` lines (`# HELP`, `# TYPE`,
//! `# EOF`, other comments) and blank lines carry no sample. Label values may escape `\\`, `\"` and
//! `\n`; values may be `NaN`, `+Inf`, `-Inf` or any decimal or scientific number; an OpenMetrics
//! exemplar (`# {...} 1.0` after the value) is ignored. Written by hand rather than with a crate:
//! `top` needs samples, not types or metadata, and the format fits in a page.
//!
//! Nothing here panics on bad input: a malformed line is a [`LineError`] and the other lines are
//! still read, so one line a newer server writes differently does not blind the whole view.

use std::borrow::Cow;
use std::fmt;

/// One sample line: a series (name and labels) and its value.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample<'a> {
    /// The metric name, e.g. `ringws_messages_received_total`.
    pub name: &'a str,
    /// The labels in the order written; values unescaped (borrowed when they had no escapes).
    pub labels: Vec<(&'a str, Cow<'a, str>)>,
    /// The value (`NaN` and infinities included).
    pub value: f64,
}

impl Sample<'_> {
    /// The value of label `name`, if the sample has it.
    pub fn label(&self, name: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_ref())
    }
}

/// Why a line is not a sample (1-based line numbers, as an editor shows them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineError {
    /// The line's number in the text.
    pub line: usize,
    /// What is wrong with it.
    pub kind: LineErrorKind,
}

/// What is wrong with a line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LineErrorKind {
    /// The line does not start with a metric name (`[a-zA-Z_:][a-zA-Z0-9_:]*`).
    BadName,
    /// A label is not `name="value"` (bad name, no `=`, no opening quote, no `,` or `}` after it).
    BadLabel,
    /// A label value ends before its closing quote.
    UnterminatedValue,
    /// A backslash in a label value followed by something other than `\`, `"` or `n`.
    BadEscape,
    /// No value after the series.
    NoValue,
    /// The value is not a number, `NaN`, `+Inf` or `-Inf`.
    BadValue,
    /// Something other than an integer timestamp (or an exemplar) after the value.
    TrailingText,
}

impl fmt::Display for LineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match self.kind {
            LineErrorKind::BadName => "no metric name",
            LineErrorKind::BadLabel => "malformed label",
            LineErrorKind::UnterminatedValue => "unterminated label value",
            LineErrorKind::BadEscape => "unknown escape in a label value",
            LineErrorKind::NoValue => "no value",
            LineErrorKind::BadValue => "value is not a number",
            LineErrorKind::TrailingText => "unexpected text after the value",
        };
        write!(f, "line {}: {what}", self.line)
    }
}

impl std::error::Error for LineError {}

/// The samples of `text`, one item per sample line or malformed line, in order; comment and blank
/// lines are skipped.
pub fn samples(text: &str) -> impl Iterator<Item = Result<Sample<'_>, LineError>> {
    text.lines().enumerate().filter_map(|(i, line)| {
        let line = line.trim_matches([' ', '\t', '\r']);
        if line.is_empty() || line.starts_with('#') {
            return None;
        }
        Some(sample(line).map_err(|kind| LineError { line: i + 1, kind }))
    })
}

/// Parses one sample line (trimmed, not a comment).
fn sample(line: &str) -> Result<Sample<'_>, LineErrorKind> {
    let name_len = name_len(line, true);
    if name_len == 0 {
        return Err(LineErrorKind::BadName);
    }
    let (name, mut rest) = line.split_at(name_len);
    let mut labels = Vec::new();
    if let Some(after) = rest.strip_prefix('{') {
        rest = labels_into(after, &mut labels)?;
    }
    let mut fields = rest.split([' ', '\t']).filter(|f| !f.is_empty());
    let value = fields.next().ok_or(LineErrorKind::NoValue)?;
    let value = number(value).ok_or(LineErrorKind::BadValue)?;
    match fields.next() {
        None => {}
        Some(ts) if ts.starts_with('#') => {}
        Some(ts) => {
            let ts = ts.strip_prefix('-').unwrap_or(ts);
            // OpenMetrics timestamps may have a fraction; 0.0.4 ones are integer milliseconds.
            if ts.parse::<f64>().is_err() || ts.starts_with(['+', 'i', 'I', 'n', 'N']) {
                return Err(LineErrorKind::TrailingText);
            }
            match fields.next() {
                None => {}
                Some(exemplar) if exemplar.starts_with('#') => {}
                Some(_) => return Err(LineErrorKind::TrailingText),
            }
        }
    }
    Ok(Sample {
        name,
        labels,
        value,
    })
}

/// The length of the metric name (`metric`: `:` allowed) or label name at the start of `s`; 0 when
/// there is none.
fn name_len(s: &str, metric: bool) -> usize {
    let ok_first = |b: u8| b.is_ascii_alphabetic() || b == b'_' || (metric && b == b':');
    let ok_next = |b: u8| ok_first(b) || b.is_ascii_digit();
    match s.as_bytes().split_first() {
        Some((&first, rest)) if ok_first(first) => {
            1 + rest.iter().take_while(|&&b| ok_next(b)).count()
        }
        _ => 0,
    }
}

/// Reads `name="value",...}` (the text after `{`) into `labels`; the text after the `}`.
fn labels_into<'a>(
    mut s: &'a str,
    labels: &mut Vec<(&'a str, Cow<'a, str>)>,
) -> Result<&'a str, LineErrorKind> {
    // Each pass consumes one label or the closing brace, so the loop ends within the line.
    loop {
        s = s.trim_start_matches([' ', '\t']);
        if let Some(rest) = s.strip_prefix('}') {
            return Ok(rest);
        }
        let len = name_len(s, false);
        if len == 0 {
            return Err(LineErrorKind::BadLabel);
        }
        let (name, rest) = s.split_at(len);
        let rest = rest.trim_start_matches([' ', '\t']);
        let rest = rest.strip_prefix('=').ok_or(LineErrorKind::BadLabel)?;
        let rest = rest.trim_start_matches([' ', '\t']);
        let rest = rest.strip_prefix('"').ok_or(LineErrorKind::BadLabel)?;
        let (value, rest) = label_value(rest)?;
        labels.push((name, value));
        let rest = rest.trim_start_matches([' ', '\t']);
        s = match rest.strip_prefix(',') {
            Some(rest) => rest,
            None if rest.starts_with('}') => rest,
            None => return Err(LineErrorKind::BadLabel),
        };
    }
}

/// Reads a label value (the text after its opening quote) up to the closing quote, unescaping it;
/// the value and the text after the quote.
fn label_value(s: &str) -> Result<(Cow<'_, str>, &str), LineErrorKind> {
    let Some(end) = s.find(['"', '\\']) else {
        return Err(LineErrorKind::UnterminatedValue);
    };
    if s.as_bytes()[end] == b'"' {
        return Ok((Cow::Borrowed(&s[..end]), &s[end + 1..]));
    }
    let mut value = String::from(&s[..end]);
    let mut chars = s[end..].char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return Ok((Cow::Owned(value), &s[end + i + 1..])),
            '\\' => match chars.next() {
                Some((_, '\\')) => value.push('\\'),
                Some((_, '"')) => value.push('"'),
                Some((_, 'n')) => value.push('\n'),
                Some(_) => return Err(LineErrorKind::BadEscape),
                None => return Err(LineErrorKind::UnterminatedValue),
            },
            c => value.push(c),
        }
    }
    Err(LineErrorKind::UnterminatedValue)
}

/// A sample value: a decimal or scientific number, `NaN`, `+Inf`, `-Inf` (also `Inf`, and the
/// case-insensitive spellings Go's parser accepts); `None` for anything else.
pub fn number(s: &str) -> Option<f64> {
    let unsigned = s.strip_prefix(['+', '-']).unwrap_or(s);
    if unsigned.eq_ignore_ascii_case("inf") || unsigned.eq_ignore_ascii_case("nan") {
        let v = if unsigned.eq_ignore_ascii_case("nan") {
            f64::NAN
        } else {
            f64::INFINITY
        };
        return Some(if s.starts_with('-') { -v } else { v });
    }
    // Rust's parser also takes "infinity"; only digits, signs, '.', 'e' and 'E' are numbers here.
    if !unsigned.starts_with(|c: char| c.is_ascii_digit() || c == '.') {
        return None;
    }
    s.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(line: &str) -> Result<Sample<'_>, LineErrorKind> {
        let mut all = samples(line);
        let first = all.next().expect("a sample line");
        assert!(all.next().is_none());
        first.map_err(|e| e.kind)
    }

    #[test]
    fn reads_names_labels_and_values() {
        let s = one(r#"ringws_messages_received_total{worker="0",kind="text"} 42"#).unwrap();
        assert_eq!(s.name, "ringws_messages_received_total");
        assert_eq!(s.label("worker"), Some("0"));
        assert_eq!(s.label("kind"), Some("text"));
        assert_eq!(s.label("side"), None);
        assert_eq!(s.value, 42.0);

        let s = one("ringws_topics 7").unwrap();
        assert!(s.labels.is_empty());
        assert_eq!(s.value, 7.0);

        // Empty braces, a trailing comma, spaces and tabs, a timestamp.
        let s = one("up{} 1 1712345678000").unwrap();
        assert_eq!((s.name, s.value), ("up", 1.0));
        let s = one("a:b_c{ x = \"1\" ,\ty=\"\", }\t 2.5  -17").unwrap();
        assert_eq!(s.labels.len(), 2);
        assert_eq!(s.label("y"), Some(""));
        assert_eq!(s.value, 2.5);
        // An OpenMetrics exemplar after the value.
        let s = one(r#"h_bucket{le="0.5"} 3 # {trace_id="ab"} 0.4 1.7e9"#).unwrap();
        assert_eq!(s.value, 3.0);
    }

    #[test]
    fn unescapes_label_values() {
        let s = one(r#"m{path="C:\\dir\\\"x\"\nnext",plain="é"} 1"#).unwrap();
        assert_eq!(s.label("path"), Some("C:\\dir\\\"x\"\nnext"));
        assert!(matches!(s.labels[0].1, Cow::Owned(_)));
        assert!(matches!(s.labels[1].1, Cow::Borrowed("é")));
        // A comma and braces inside a value are part of it.
        let s = one(r#"m{a="x,}{y",b="2"} 1"#).unwrap();
        assert_eq!(s.label("a"), Some("x,}{y"));
        assert_eq!(s.label("b"), Some("2"));
    }

    #[test]
    fn reads_special_and_scientific_values() {
        let value = |line| one(line).unwrap().value;
        assert_eq!(value("m +Inf"), f64::INFINITY);
        assert_eq!(value("m -Inf"), f64::NEG_INFINITY);
        assert_eq!(value("m Inf"), f64::INFINITY);
        assert!(value("m NaN").is_nan());
        assert!(value("m nan").is_nan());
        assert_eq!(value("m 1.5e-06"), 1.5e-6);
        assert_eq!(value("m 2E3"), 2000.0);
        assert_eq!(value("m -0.25"), -0.25);
        assert_eq!(value("m .5"), 0.5);
        assert_eq!(value("m 18446744073709551615"), 18446744073709551615.0);
        assert_eq!(
            one(r#"m_bucket{le="+Inf"} 9"#).unwrap().label("le"),
            Some("+Inf")
        );
    }

    #[test]
    fn skips_comments_and_blank_lines() {
        let text = "# HELP m Some help with \\\\ and \"quotes\".\n# TYPE m counter\n\n\
                    m_total 3\r\n   \n# EOF\n";
        let all: Vec<_> = samples(text).collect();
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].as_ref().unwrap().value, 3.0);
    }

    #[test]
    fn malformed_lines_are_errors_with_their_number() {
        let cases = [
            ("{a=\"1\"} 1", LineErrorKind::BadName),
            ("1m 1", LineErrorKind::BadName),
            ("m{a=1} 1", LineErrorKind::BadLabel),
            ("m{a} 1", LineErrorKind::BadLabel),
            ("m{1a=\"x\"} 1", LineErrorKind::BadLabel),
            ("m{a=\"1\" b=\"2\"} 1", LineErrorKind::BadLabel),
            ("m{a=\"1\"", LineErrorKind::BadLabel),
            ("m{a=\"1", LineErrorKind::UnterminatedValue),
            ("m{a=\"1\\", LineErrorKind::UnterminatedValue),
            ("m{a=\"x\\ty\"} 1", LineErrorKind::BadEscape),
            ("m", LineErrorKind::NoValue),
            ("m{a=\"1\"}", LineErrorKind::NoValue),
            ("m one", LineErrorKind::BadValue),
            ("m infinity", LineErrorKind::BadValue),
            ("m 1.2.3", LineErrorKind::BadValue),
            ("m 0x10", LineErrorKind::BadValue),
            ("m 1 2 3", LineErrorKind::TrailingText),
            ("m 1 soon", LineErrorKind::TrailingText),
            ("m 1 +Inf", LineErrorKind::TrailingText),
        ];
        for (line, kind) in cases {
            assert_eq!(one(line), Err(kind), "{line:?}");
        }
        let text = "good 1\nbad{ 2\ngood 3\n";
        let lines: Vec<_> = samples(text).map(|r| r.map(|s| s.value)).collect();
        assert_eq!(
            lines,
            [
                Ok(1.0),
                Err(LineError {
                    line: 2,
                    kind: LineErrorKind::BadLabel
                }),
                Ok(3.0)
            ]
        );
    }

    #[test]
    fn never_panics_on_any_prefix_or_byte_soup() {
        // Every prefix of a line with every construct (cuts inside escapes and multi-byte
        // characters included), and lines of arbitrary punctuation.
        let line = r#"m_x:y{a="é\\\"\n",b = "}" , } -1.5e+3 1700000000000 # {t="1"} 1"#;
        for end in (0..=line.len()).filter(|&i| line.is_char_boundary(i)) {
            let _ = samples(&line[..end]).count();
        }
        let alphabet = [
            'm', '{', '}', '"', '\\', '=', ',', ' ', '1', 'e', '#', '+', '.', 'é',
        ];
        let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
        for _ in 0..20_000 {
            let mut s = String::new();
            for _ in 0..(seed % 24) {
                seed = seed
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                s.push(alphabet[(seed >> 33) as usize % alphabet.len()]);
            }
            let _ = samples(&s).count();
        }
    }
}
