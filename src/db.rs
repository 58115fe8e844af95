//! A failed database statement, named by what it was doing: the one error
//! both stores (the message store and the wallet store) wrap, and the one
//! [`Ctx`] that makes it.

/// A statement that failed, and what it was for.
#[derive(Debug, thiserror::Error)]
#[error("{op}: {source}")]
pub struct DbError {
    /// What was being done.
    pub op: &'static str,
    /// Underlying error.
    #[source]
    pub source: sqlx::Error,
}

/// Names what a `sqlx` call was doing when it failed.
pub(crate) trait Ctx<T> {
    /// This result, its error named `op`.
    fn ctx(self, op: &'static str) -> Result<T, DbError>;
}

impl<T> Ctx<T> for Result<T, sqlx::Error> {
    fn ctx(self, op: &'static str) -> Result<T, DbError> {
        self.map_err(|source| DbError { op, source })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_error_names_what_was_being_done() {
        let r: Result<(), sqlx::Error> = Err(sqlx::Error::RowNotFound);
        let e = r.ctx("read the cursor").expect_err("an error");
        assert_eq!(e.op, "read the cursor");
        assert!(e.to_string().starts_with("read the cursor: "), "{e}");
    }
}
