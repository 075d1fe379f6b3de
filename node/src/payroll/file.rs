//! A payroll file (F12), read and checked as a whole before anything is stored or paid.
//!
//! Two forms carry the same lines:
//! - CSV (`text/csv`): a header `employee,amount,account`, then one line per employee. Fields
//!   may be quoted (RFC 4180: `"a,b"`, `""` for a quote inside); spaces around a field are
//!   dropped; blank lines are skipped; a UTF-8 byte-order mark is ignored. A line's number is
//!   its line in the file (the header is line 1), so that the report points at the file.
//! - JSON: `{"batch_id", "lines": [{"employee", "amount", "account"}]}`; a line's number is
//!   its position in `lines`, from 1.
//!
//! Amounts are decimal strings parsed exactly ([`Amount::parse`]), never a float: a JSON
//! number is refused for that reason. `account` is `wallet` or `bank`.
//!
//! Checking names **every** bad line with its number and reason ([`Problem`]); a file with
//! any problem is refused whole. Problems of the whole batch (empty, too many lines, a total
//! too large) have no line number.

use std::collections::HashMap;

use onecard_engine::money::AmountError;
use onecard_engine::Amount;
use serde::{Deserialize, Serialize};

use crate::records::PayAccount;

/// The most lines a batch may have: bounds the batch's one commit (about 100 bytes a line),
/// its validation (one consumer lookup a line) and its report.
pub const MAX_LINES: usize = 10_000;

/// The longest batch id: it is a path segment of the batch's URL.
pub const MAX_BATCH_ID_CHARS: usize = 64;

/// The longest employee id (the engine's bound on account ids).
pub const MAX_EMPLOYEE_CHARS: usize = 128;

/// The largest salary and the largest batch total, in cents: the bound of an order's amount
/// (16 digits before the point).
pub const MAX_CENTS: i128 = 999_999_999_999_999_999;

/// Why a line (or the batch) is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProblemCode {
    /// Not readable as a line: bad quoting, not UTF-8, not a JSON object of strings.
    Malformed,
    /// The CSV's first line is not `employee,amount,account`.
    BadHeader,
    WrongColumnCount,
    /// Empty, too long or with control characters.
    InvalidEmployee,
    /// No consumer of that id.
    UnknownEmployee,
    /// The employee is on an earlier line already.
    DuplicateEmployee,
    /// Not a decimal amount.
    InvalidAmount,
    /// Zero or negative.
    AmountNotPositive,
    /// More than two decimals.
    TooManyDecimals,
    AmountTooLarge,
    /// Neither `wallet` nor `bank`.
    UnknownAccountKind,
    TooManyLines,
    EmptyBatch,
    TotalTooLarge,
}

/// One thing wrong with a payroll file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Problem {
    /// The line (CSV: in the file; JSON: in `lines`, from 1); `None` for the whole batch.
    pub line: Option<u32>,
    pub code: ProblemCode,
    pub message: String,
}

impl Problem {
    fn at(line: u32, code: ProblemCode, message: impl Into<String>) -> Problem {
        Problem {
            line: Some(line),
            code,
            message: message.into(),
        }
    }
    fn batch(code: ProblemCode, message: impl Into<String>) -> Problem {
        Problem {
            line: None,
            code,
            message: message.into(),
        }
    }
}

/// A line as read, its fields not yet checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawLine {
    pub line: u32,
    pub employee: String,
    pub amount: String,
    pub account: String,
}

/// A line that passed every check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PayLine {
    pub line: u32,
    pub employee: String,
    pub amount: Amount,
    pub account: PayAccount,
}

/// A batch that passed every check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckedBatch {
    pub lines: Vec<PayLine>,
    pub total: Amount,
}

/// A payroll file refused: every problem found, in line order.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the payroll has {} problem(s)", .problems.len())]
pub struct Refused {
    pub problems: Vec<Problem>,
}

/// Lines read from a file, and what could not be read.
#[derive(Debug, Default)]
pub struct Read {
    pub lines: Vec<RawLine>,
    pub problems: Vec<Problem>,
}

/// A batch id: 1 to [`MAX_BATCH_ID_CHARS`] of `A-Z a-z 0-9 . _ - :`, so that it is one path
/// segment of the batch's URL as it is, with nothing to escape.
pub fn check_batch_id(id: &str) -> Result<(), String> {
    let ok_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | ':');
    if id.is_empty() || id.len() > MAX_BATCH_ID_CHARS || !id.chars().all(ok_char) {
        return Err(format!(
            "batch_id must be 1 to {MAX_BATCH_ID_CHARS} characters of A-Z, a-z, 0-9, '.', '_', '-', ':'"
        ));
    }
    Ok(())
}

/// The fields of one CSV line (RFC 4180 quoting, within the line).
fn split_csv(line: &str) -> Result<Vec<String>, String> {
    let mut fields = Vec::new();
    let mut chars = line.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| *c == ' ' || *c == '\t') {
            chars.next();
        }
        let mut field = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            loop {
                match chars.next() {
                    None => return Err("a quoted field is not closed".into()),
                    Some('"') if chars.peek() == Some(&'"') => {
                        chars.next();
                        field.push('"');
                    }
                    Some('"') => break,
                    Some(c) => field.push(c),
                }
            }
            while chars.peek().is_some_and(|c| *c == ' ' || *c == '\t') {
                chars.next();
            }
            match chars.next() {
                None => {
                    fields.push(field);
                    return Ok(fields);
                }
                Some(',') => fields.push(field),
                Some(_) => return Err("text after a quoted field's closing quote".into()),
            }
        } else {
            loop {
                match chars.next() {
                    None => {
                        fields.push(field.trim_end().to_string());
                        return Ok(fields);
                    }
                    Some(',') => break,
                    Some('"') => return Err("a quote inside an unquoted field".into()),
                    Some(c) => field.push(c),
                }
            }
            fields.push(field.trim_end().to_string());
        }
    }
}

/// Reads a CSV payroll file into lines. The header is checked here; the fields are checked by
/// [`check`]. Stops reading (with [`ProblemCode::TooManyLines`]) past [`MAX_LINES`] lines.
pub fn read_csv(body: &[u8]) -> Read {
    let body = body.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(body);
    let mut out = Read::default();
    let mut header_seen = false;
    for (i, raw) in body.split(|b| *b == b'\n').enumerate() {
        let line = u32::try_from(i + 1).unwrap_or(u32::MAX);
        let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
        let text = match std::str::from_utf8(raw) {
            Ok(t) => t,
            Err(_) => {
                out.problems.push(Problem::at(
                    line,
                    ProblemCode::Malformed,
                    "the line is not UTF-8 text",
                ));
                header_seen = true;
                continue;
            }
        };
        if text.trim().is_empty() {
            continue;
        }
        let fields = match split_csv(text) {
            Ok(f) => f,
            Err(why) => {
                out.problems
                    .push(Problem::at(line, ProblemCode::Malformed, why));
                header_seen = true;
                continue;
            }
        };
        if !header_seen {
            header_seen = true;
            let is_header = fields.len() == 3
                && ["employee", "amount", "account"]
                    .iter()
                    .zip(&fields)
                    .all(|(want, got)| got.trim().eq_ignore_ascii_case(want));
            if !is_header {
                out.problems.push(Problem::at(
                    line,
                    ProblemCode::BadHeader,
                    "the first line must be the header `employee,amount,account`",
                ));
            }
            // A data line in place of the header is still checked as a line.
            if is_header || fields.len() != 3 {
                continue;
            }
        }
        if fields.len() != 3 {
            out.problems.push(Problem::at(
                line,
                ProblemCode::WrongColumnCount,
                format!(
                    "{} columns; a line has 3: employee,amount,account",
                    fields.len()
                ),
            ));
            continue;
        }
        if out.lines.len() >= MAX_LINES {
            out.problems.push(too_many_lines());
            return out;
        }
        let mut f = fields.into_iter();
        out.lines.push(RawLine {
            line,
            employee: f.next().unwrap_or_default(),
            amount: f.next().unwrap_or_default(),
            account: f.next().unwrap_or_default(),
        });
    }
    out
}

fn too_many_lines() -> Problem {
    Problem::batch(
        ProblemCode::TooManyLines,
        format!("a batch has at most {MAX_LINES} lines; split it into several batches"),
    )
}

/// A JSON payroll: the batch id and the lines as values, each checked on its own so that
/// every bad one is named.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JsonPayroll {
    pub batch_id: String,
    pub lines: Vec<serde_json::Value>,
}

/// Reads the lines of a JSON payroll.
pub fn read_json(lines: &[serde_json::Value]) -> Read {
    let mut out = Read::default();
    if lines.len() > MAX_LINES {
        out.problems.push(too_many_lines());
        return out;
    }
    for (i, v) in lines.iter().enumerate() {
        let line = u32::try_from(i + 1).unwrap_or(u32::MAX);
        let Some(obj) = v.as_object() else {
            out.problems.push(Problem::at(
                line,
                ProblemCode::Malformed,
                "a line is an object {\"employee\", \"amount\", \"account\"}",
            ));
            continue;
        };
        let mut bad = Vec::new();
        if let Some(k) = obj
            .keys()
            .find(|k| !matches!(k.as_str(), "employee" | "amount" | "account"))
        {
            bad.push(format!("unknown field {k:?}"));
        }
        let mut field = |name: &str| match obj.get(name) {
            Some(serde_json::Value::String(s)) => s.clone(),
            Some(serde_json::Value::Number(_)) if name == "amount" => {
                bad.push(
                    "amount must be a string such as \"1250.00\": money is exact, never a JSON number"
                        .into(),
                );
                String::new()
            }
            Some(_) => {
                bad.push(format!("{name} must be a string"));
                String::new()
            }
            None => {
                bad.push(format!("{name} is missing"));
                String::new()
            }
        };
        let (employee, amount, account) = (field("employee"), field("amount"), field("account"));
        if bad.is_empty() {
            out.lines.push(RawLine {
                line,
                employee,
                amount,
                account,
            });
        } else {
            out.problems
                .push(Problem::at(line, ProblemCode::Malformed, bad.join("; ")));
        }
    }
    out
}

/// A salary: a positive amount with at most two decimals, within [`MAX_CENTS`].
pub fn parse_amount(text: &str) -> Result<Amount, (ProblemCode, String)> {
    let shown: String = text.chars().take(40).collect();
    let digits_with_point = |t: &str| {
        let (i, f) = t.split_once('.').unwrap_or((t, ""));
        !i.is_empty()
            && i.bytes().all(|b| b.is_ascii_digit())
            && f.bytes().all(|b| b.is_ascii_digit())
    };
    if let Some(rest) = text.strip_prefix('-') {
        if digits_with_point(rest) {
            return Err((
                ProblemCode::AmountNotPositive,
                format!("amount {shown:?} is negative: a salary is greater than zero"),
            ));
        }
    }
    match Amount::parse(text) {
        Ok(a) if a.is_zero() => Err((
            ProblemCode::AmountNotPositive,
            format!("amount {shown:?} is zero: a salary is greater than zero"),
        )),
        Ok(a) if a.cents() > MAX_CENTS => Err((
            ProblemCode::AmountTooLarge,
            "amount: at most 9999999999999999.99 (16 digits before the point)".to_string(),
        )),
        Ok(a) => Ok(a),
        Err(AmountError::Overflow) => Err((
            ProblemCode::AmountTooLarge,
            "amount: at most 9999999999999999.99 (16 digits before the point)".to_string(),
        )),
        Err(_)
            if digits_with_point(text)
                && text.split_once('.').is_some_and(|(_, f)| f.len() > 2) =>
        {
            Err((
                ProblemCode::TooManyDecimals,
                format!("amount {shown:?} has more than 2 decimals"),
            ))
        }
        Err(_) => Err((
            ProblemCode::InvalidAmount,
            format!("amount {shown:?} is not a decimal amount such as \"1250.00\""),
        )),
    }
}

/// `wallet` or `bank`.
pub fn parse_account(text: &str) -> Result<PayAccount, String> {
    match text {
        "wallet" => Ok(PayAccount::Wallet),
        "bank" => Ok(PayAccount::Bank),
        other => {
            let shown: String = other.chars().take(40).collect();
            Err(format!(
                "account {shown:?} is neither \"wallet\" nor \"bank\""
            ))
        }
    }
}

fn check_employee(id: &str) -> Result<(), String> {
    if id.is_empty() || id.chars().count() > MAX_EMPLOYEE_CHARS || id.chars().any(char::is_control)
    {
        return Err(format!(
            "employee must be 1 to {MAX_EMPLOYEE_CHARS} characters with no control characters"
        ));
    }
    Ok(())
}

/// Checks what was read: every field of every line, duplicates, unknown employees (`known`
/// answers whether a consumer exists; it is asked once per well-formed, distinct employee),
/// the batch's size and total. Any problem refuses the whole batch, with every problem found.
pub fn check<E>(
    read: Read,
    mut known: impl FnMut(&str) -> Result<bool, E>,
) -> Result<Result<CheckedBatch, Refused>, E> {
    // A batch over the bound is refused for that alone: its lines are not looked at (nor
    // their employees looked up).
    if let Some(p) = read
        .problems
        .iter()
        .find(|p| p.code == ProblemCode::TooManyLines)
    {
        return Ok(Err(Refused {
            problems: vec![p.clone()],
        }));
    }
    let mut problems = read.problems;
    let mut lines = Vec::with_capacity(read.lines.len());
    let mut first_line: HashMap<String, u32> = HashMap::new();
    let mut total = Amount::ZERO;
    let mut total_ok = true;
    for raw in read.lines {
        let mut ok = true;
        let employee_ok = match check_employee(&raw.employee) {
            Ok(()) => true,
            Err(why) => {
                problems.push(Problem::at(raw.line, ProblemCode::InvalidEmployee, why));
                false
            }
        };
        if employee_ok {
            if let Some(first) = first_line.get(&raw.employee) {
                problems.push(Problem::at(
                    raw.line,
                    ProblemCode::DuplicateEmployee,
                    format!("employee {:?} is on line {first} already", raw.employee),
                ));
                ok = false;
            } else {
                first_line.insert(raw.employee.clone(), raw.line);
                if !known(&raw.employee)? {
                    problems.push(Problem::at(
                        raw.line,
                        ProblemCode::UnknownEmployee,
                        format!("no consumer {:?}", raw.employee),
                    ));
                    ok = false;
                }
            }
        } else {
            ok = false;
        }
        let amount = match parse_amount(&raw.amount) {
            Ok(a) => Some(a),
            Err((code, why)) => {
                problems.push(Problem::at(raw.line, code, why));
                None
            }
        };
        let account = match parse_account(&raw.account) {
            Ok(a) => Some(a),
            Err(why) => {
                problems.push(Problem::at(raw.line, ProblemCode::UnknownAccountKind, why));
                None
            }
        };
        if let Some(a) = amount {
            match total.checked_add(a) {
                Ok(t) if t.cents() <= MAX_CENTS => total = t,
                _ => total_ok = false,
            }
        }
        if let (true, Some(amount), Some(account)) = (ok, amount, account) {
            lines.push(PayLine {
                line: raw.line,
                employee: raw.employee,
                amount,
                account,
            });
        }
    }
    if !total_ok {
        problems.push(Problem::batch(
            ProblemCode::TotalTooLarge,
            "the batch's total is above 9999999999999999.99; split it into several batches",
        ));
    }
    if lines.is_empty() && problems.is_empty() {
        problems.push(Problem::batch(
            ProblemCode::EmptyBatch,
            "the batch has no lines",
        ));
    }
    if problems.is_empty() {
        Ok(Ok(CheckedBatch { lines, total }))
    } else {
        problems.sort_by_key(|p| p.line.map_or(0, u64::from));
        Ok(Err(Refused { problems }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn known(id: &str) -> Result<bool, std::convert::Infallible> {
        Ok(id != "ghost")
    }

    fn csv(text: &str) -> Result<CheckedBatch, Refused> {
        check(read_csv(text.as_bytes()), known).unwrap()
    }

    fn codes(r: &Refused) -> Vec<(Option<u32>, ProblemCode)> {
        r.problems.iter().map(|p| (p.line, p.code)).collect()
    }

    #[test]
    fn a_good_csv_file_gives_its_lines_and_total() {
        let b = csv("\u{feff}employee,amount,account\r\nalice,1250.00,wallet\r\n\r\n bob , \"99.5\" ,bank\n").unwrap();
        assert_eq!(b.lines.len(), 2);
        assert_eq!(b.lines[0].line, 2);
        assert_eq!(
            b.lines[1].line, 4,
            "blank lines are skipped, numbers are the file's"
        );
        assert_eq!(b.lines[1].employee, "bob");
        assert_eq!(b.lines[1].amount.to_string(), "99.50");
        assert_eq!(b.lines[1].account, PayAccount::Bank);
        assert_eq!(b.total.to_string(), "1349.50");
        // Quoted fields may hold commas and quotes.
        let b = csv("Employee,Amount,Account\n\"o\"\"brien,jr\",1,wallet\n").unwrap();
        assert_eq!(b.lines[0].employee, "o\"brien,jr");
    }

    #[test]
    fn every_bad_csv_line_is_named_with_its_reason() {
        let file = "employee,amount,account\n\
                    alice,100.00,wallet\n\
                    bob,100.00\n\
                    carol,\"100.00,wallet\n\
                    ghost,10.00,wallet\n\
                    alice,5.00,bank\n\
                    dave,-5.00,wallet\n\
                    erin,0.00,bank\n\
                    frank,1.005,wallet\n\
                    gina,12abc,wallet\n\
                    hank,10.00,savings\n\
                    ,10.00,wallet\n\
                    ivy,99999999999999999.00,bank\n\
                    jo,1,2,3\n";
        let r = csv(file).unwrap_err();
        use ProblemCode::*;
        assert_eq!(
            codes(&r),
            vec![
                (Some(3), WrongColumnCount),
                (Some(4), Malformed),
                (Some(5), UnknownEmployee),
                (Some(6), DuplicateEmployee),
                (Some(7), AmountNotPositive),
                (Some(8), AmountNotPositive),
                (Some(9), TooManyDecimals),
                (Some(10), InvalidAmount),
                (Some(11), UnknownAccountKind),
                (Some(12), InvalidEmployee),
                (Some(13), AmountTooLarge),
                (Some(14), WrongColumnCount),
            ]
        );
        assert!(
            r.problems[3].message.contains("line 2"),
            "{:?}",
            r.problems[3]
        );
        // A line with two bad fields is named twice.
        let r = csv("employee,amount,account\nalice,1.234,cash\n").unwrap_err();
        assert_eq!(
            codes(&r),
            vec![(Some(2), TooManyDecimals), (Some(2), UnknownAccountKind)]
        );
    }

    #[test]
    fn the_header_an_empty_file_and_bytes_that_are_not_text() {
        use ProblemCode::*;
        let r = csv("alice,1.00,wallet\nbob,2.00,bank\n").unwrap_err();
        assert_eq!(codes(&r), vec![(Some(1), BadHeader)]);
        let r = csv("").unwrap_err();
        assert_eq!(codes(&r), vec![(None, EmptyBatch)]);
        let r = csv("employee,amount,account\n\n").unwrap_err();
        assert_eq!(codes(&r), vec![(None, EmptyBatch)]);
        let r = check(
            read_csv(b"employee,amount,account\nal\xffce,1.00,wallet\nbob,1.00,wallet\n"),
            known,
        )
        .unwrap()
        .unwrap_err();
        assert_eq!(codes(&r), vec![(Some(2), Malformed)]);
        let r = csv("employee,amount,account\n\"bob\" x,1.00,wallet\n").unwrap_err();
        assert_eq!(codes(&r), vec![(Some(2), Malformed)]);
        let r = csv("employee,amount,account\nb\"ob,1.00,wallet\n").unwrap_err();
        assert_eq!(codes(&r), vec![(Some(2), Malformed)]);
    }

    #[test]
    fn too_many_lines_and_a_total_too_large_are_the_batchs_problems() {
        let mut file = String::from("employee,amount,account\n");
        for i in 0..=MAX_LINES {
            file.push_str(&format!("e{i},1.00,wallet\n"));
        }
        let r = csv(&file).unwrap_err();
        assert_eq!(codes(&r), vec![(None, ProblemCode::TooManyLines)]);
        let mut file = String::from("employee,amount,account\n");
        for i in 0..MAX_LINES {
            file.push_str(&format!("e{i},1.00,wallet\n"));
        }
        assert_eq!(csv(&file).unwrap().lines.len(), MAX_LINES);
        let r =
            csv("employee,amount,account\na,9999999999999999.99,bank\nb,1.00,bank\n").unwrap_err();
        assert_eq!(codes(&r), vec![(None, ProblemCode::TotalTooLarge)]);
    }

    #[test]
    fn every_bad_json_line_is_named_with_its_reason() {
        use ProblemCode::*;
        let lines: Vec<serde_json::Value> = serde_json::from_str(
            r#"[
                {"employee": "alice", "amount": "10.00", "account": "wallet"},
                {"employee": "bob", "amount": 10.5, "account": "bank"},
                "carol,1.00,bank",
                {"employee": "dave", "amount": "1.00"},
                {"employee": "erin", "amount": "1.00", "account": "bank", "note": "x"},
                {"employee": "alice", "amount": "1.00", "account": "bank"},
                {"employee": "frank", "amount": "-1", "account": "bank"},
                {"employee": "gina", "amount": "1.001", "account": "wallet"},
                {"employee": "ghost", "amount": "1.00", "account": "wallet"},
                {"employee": "hank", "amount": "1.00", "account": "Wallet"}
            ]"#,
        )
        .unwrap();
        let r = check(read_json(&lines), known).unwrap().unwrap_err();
        assert_eq!(
            codes(&r),
            vec![
                (Some(2), Malformed),
                (Some(3), Malformed),
                (Some(4), Malformed),
                (Some(5), Malformed),
                (Some(6), DuplicateEmployee),
                (Some(7), AmountNotPositive),
                (Some(8), TooManyDecimals),
                (Some(9), UnknownEmployee),
                (Some(10), UnknownAccountKind),
            ]
        );
        assert!(r.problems[0].message.contains("never a JSON number"));
        let r = check(read_json(&[]), known).unwrap().unwrap_err();
        assert_eq!(codes(&r), vec![(None, EmptyBatch)]);
        let many = vec![serde_json::json!({}); MAX_LINES + 1];
        let r = check(read_json(&many), known).unwrap().unwrap_err();
        assert_eq!(codes(&r), vec![(None, TooManyLines)]);
    }

    #[test]
    fn amounts_are_exact_and_batch_ids_are_one_path_segment() {
        assert_eq!(parse_amount("0.01").unwrap().to_string(), "0.01");
        assert_eq!(parse_amount("7").unwrap().to_string(), "7.00");
        for (text, code) in [
            ("-0.01", ProblemCode::AmountNotPositive),
            ("0", ProblemCode::AmountNotPositive),
            ("1.999", ProblemCode::TooManyDecimals),
            ("1e3", ProblemCode::InvalidAmount),
            ("+1.00", ProblemCode::InvalidAmount),
            ("1.", ProblemCode::InvalidAmount),
            ("", ProblemCode::InvalidAmount),
            ("NaN", ProblemCode::InvalidAmount),
        ] {
            assert_eq!(parse_amount(text).unwrap_err().0, code, "{text:?}");
        }
        assert!(check_batch_id("2026-11_run.2:a").is_ok());
        for bad in ["", "a/b", "a b", "ü", &"x".repeat(MAX_BATCH_ID_CHARS + 1)] {
            assert!(check_batch_id(bad).is_err(), "{bad:?}");
        }
    }
}
