//! The adapter's private error mapping: rusqlite errors into the kinds of
//! [`sync_core::Error`], so callers match on meaning, never on the driver.

use rusqlite::ErrorCode;
use sync_core::Error;

/// Extended result codes of the constraints a write can break.
const CONSTRAINT_PRIMARYKEY: i32 = 1555;
const CONSTRAINT_UNIQUE: i32 = 2067;

/// Maps a rusqlite error met while doing `what`:
/// - busy or locked database, I/O trouble, full disk → `Unavailable` (retry later);
/// - a primary-key or unique constraint → `Conflict` (the state refuses it);
/// - any other constraint (`NOT NULL`, `CHECK`, foreign key) or a type
///   mismatch → `InvalidInput` (the values are refused);
/// - anything else → `Internal`.
pub(crate) fn map(what: &str) -> impl FnOnce(rusqlite::Error) -> Error + '_ {
    move |e| {
        let message = format!("{what}: {e}");
        match &e {
            rusqlite::Error::SqliteFailure(failure, _) => match failure.code {
                ErrorCode::DatabaseBusy
                | ErrorCode::DatabaseLocked
                | ErrorCode::SystemIoFailure
                | ErrorCode::DiskFull
                | ErrorCode::CannotOpen
                | ErrorCode::OutOfMemory => Error::unavailable(message),
                ErrorCode::ConstraintViolation
                    if matches!(failure.extended_code, CONSTRAINT_PRIMARYKEY | CONSTRAINT_UNIQUE) =>
                {
                    Error::conflict(message)
                }
                ErrorCode::ConstraintViolation | ErrorCode::TypeMismatch => Error::invalid(message),
                _ => Error::internal(message),
            },
            rusqlite::Error::InvalidColumnType(..) | rusqlite::Error::FromSqlConversionFailure(..) => {
                Error::invalid(message)
            }
            _ => Error::internal(message),
        }
    }
}
