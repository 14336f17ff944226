//! Checks for free text coming from outside: length in characters, no
//! control characters, required fields not blank. Errors are collected so a
//! request learns about every bad field at once.

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

    /// Optional text of at most `max` characters; multi-line if `multiline`.
    pub fn text(&mut self, field: &str, value: &str, max: usize, multiline: bool) {
        if value.chars().count() > max {
            self.fail(field, format!("must be at most {max} characters"));
        } else if value
            .chars()
            .any(|c| c.is_control() && !(multiline && matches!(c, '\n' | '\r' | '\t')))
        {
            self.fail(field, "must not contain control characters");
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
