//! Embedded backend (stub, being written).
use super::*;
/// Opens (creating and migrating) the SQLite database at `path`.
pub fn open_store(_path: &std::path::Path) -> Result<std::sync::Arc<dyn Store>> {
    Err(StoreError::Backend("todo".into()))
}
