//! `reload_getter` version 1, a test plugin for hot reload: answers `KEY@v1` (see getter.rs).

const VERSION: &str = "1";

include!("getter.rs");
