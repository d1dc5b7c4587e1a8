//! Opening the database for a command: readers need one that exists with
//! the current schema; `migrate` creates or upgrades it.

use crate::config::Config;
use crate::error::Result;
use crate::store::{OpenMode, Store};

/// Opens an existing, current database: commands that only read or adjust
/// jobs never create a file in the wrong place or upgrade a schema.
pub(crate) fn open(config: &Config) -> Result<Box<dyn Store + Send>> {
    Ok(crate::store::open(
        &config.database,
        crate::store::OpenMode::Existing,
    )?)
}

/// Opens the database, creating it if needed, and returns it with the
/// schema versions before and after migrating it.
pub(crate) fn open_or_create(config: &Config) -> Result<(Box<dyn Store + Send>, (i64, i64))> {
    let mut store = crate::store::open(&config.database, OpenMode::Create)?;
    let versions = store.migrate()?;
    Ok((store, versions))
}
