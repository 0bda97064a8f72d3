//! What every benchmark shares for reporting: the progress bar on stderr,
//! notes printed above it, and the final JSON line with its keys in a fixed
//! order (the required keys first).

use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use serde_json::Value;

/// A progress bar on stderr counting `units` (each benchmark picks its own,
/// e.g. 100 per phase); it ticks by itself so it moves during long waits.
pub fn progress(units: u64) -> ProgressBar {
    let bar = ProgressBar::new(units);
    bar.set_style(
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {bar:40} {percent:>3}% {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

/// Prints a line on stderr above the progress bar (also when the bar is
/// hidden because stderr is not a terminal).
pub fn note(bar: &ProgressBar, line: String) {
    bar.suspend(|| eprintln!("{line}"));
}

/// A number rounded to two decimals, or `null`.
pub fn num(value: Option<f64>) -> Value {
    value.map_or(Value::Null, |f| Value::from((f * 100.0).round() / 100.0))
}

/// One JSON object on one line, keys in the order given (a `serde_json`
/// map would sort them).
pub fn json_line(fields: Vec<(&str, Value)>) -> String {
    let body: Vec<String> = fields
        .into_iter()
        .map(|(k, v)| format!("{}:{v}", Value::from(k)))
        .collect();
    format!("{{{}}}", body.join(","))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_line_keeps_order_and_escapes() {
        let line = json_line(vec![
            ("z", Value::from(1)),
            ("a\"b", Value::from("x")),
            ("n", num(None)),
            ("r", num(Some(1.23456))),
        ]);
        assert_eq!(line, r#"{"z":1,"a\"b":"x","n":null,"r":1.23}"#);
        let parsed: Value = serde_json::from_str(&line).expect("valid JSON");
        assert_eq!(parsed["r"], 1.23);
    }
}
