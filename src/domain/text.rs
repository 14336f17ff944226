//! Checks for free text coming from outside: length in characters, no
//! control characters, nothing SQS cannot carry, required fields not blank.
//! Errors are collected so a request learns about every bad field at once.

use crate::error::FieldError;

#[derive(Default)]
pub struct Checks {
    errors: Vec<FieldError>,
}

impl Checks {
    pub fn fail(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.errors.push(FieldError::new(field, message));
    }

    /// A required single-line text of 1..=max characters.
    pub fn line(&mut self, field: &str, value: &str, max: usize) {
        if value.trim().is_empty() {
            self.fail(field, "must not be blank");
        } else {
            self.text(field, value, max, false);
        }
    }

    /// A required identifier compared byte for byte (a reference): a line
    /// without leading or trailing whitespace, which MySQL's `PAD SPACE`
    /// collations would otherwise ignore when comparing.
    pub fn identifier(&mut self, field: &str, value: &str, max: usize) {
        if value.trim().is_empty() {
            self.fail(field, "must not be blank");
        } else if value.trim() != value {
            self.fail(field, "must not start or end with whitespace");
        } else {
            self.text(field, value, max, false);
        }
    }

    /// Optional text of at most `max` characters; multi-line if `multiline`.
    pub fn text(&mut self, field: &str, value: &str, max: usize, multiline: bool) {
        if value.chars().count() > max {
            self.fail(field, format!("must be at most {max} characters"));
        } else if value
            .chars()
            .any(|c| c.is_control() && !(multiline && matches!(c, '\n' | '\r' | '\t')))
        {
            self.fail(field, "must not contain control characters");
        } else if let Some(c) = value.chars().find(|c| !sqs_can_carry(*c)) {
            self.fail(
                field,
                format!(
                    "must not contain U+{:04X}: events travel through SQS, which refuses it",
                    u32::from(c)
                ),
            );
        }
    }

    pub fn range(&mut self, field: &str, value: i64, min: i64, max: i64) {
        if !(min..=max).contains(&value) {
            self.fail(field, format!("must be between {min} and {max}"));
        }
    }

    pub fn finish(self) -> Result<(), Vec<FieldError>> {
        if self.errors.is_empty() {
            Ok(())
        } else {
            Err(self.errors)
        }
    }
}

/// The characters SQS accepts in a message body: U+0009, U+000A, U+000D,
/// U+0020–U+D7FF, U+E000–U+FFFD, U+10000–U+10FFFF (surrogates cannot occur
/// in a Rust string). An event holding any other would be refused at
/// publishing, so such text is refused at input.
pub fn sqs_can_carry(c: char) -> bool {
    matches!(c, '\t' | '\n' | '\r' | '\u{20}'..='\u{D7FF}' | '\u{E000}'..='\u{FFFD}' | '\u{10000}'..)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_sqs_refuses_is_refused() {
        for (text, ok) in [
            ("plain text", true),
            ("tab\tnew\nline\r", true),
            ("private use \u{E000} and \u{FFFD}", true),
            ("astral \u{1F69A}", true),
            ("\u{FFFE}", false),
            ("ends with \u{FFFF}", false),
        ] {
            let mut checks = Checks::default();
            checks.text("notes", text, 100, true);
            assert_eq!(checks.finish().is_ok(), ok, "{text:?}");
        }
        assert!(!sqs_can_carry('\u{0}'));
        assert!(!sqs_can_carry('\u{1F}'));
        assert!(
            sqs_can_carry('\u{7F}'),
            "SQS carries DEL; it is refused as a control character"
        );
    }
}
