//! An error in one field of one step, found when the workflow loads: the kinds'
//! checks and the results' specs return it, and the engine turns its field path
//! into `file:line:column`. Imports nothing of the engine.

/// An error in one field of one step, found before anything runs.
///
/// `field` is the path inside the step's mapping (`size`, `copy_in[0].from`); the
/// engine turns it into `file:line:column` of the workflow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// The field's path inside the step's mapping.
    pub field: String,
    /// What is wrong and what to do.
    pub message: String,
}

impl FieldError {
    /// An error in `field`.
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        FieldError {
            field: field.into(),
            message: message.into(),
        }
    }
}

impl std::fmt::Display for FieldError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "field `{}`: {}", self.field, self.message)
    }
}
