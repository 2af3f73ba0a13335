//! `reload_getter` version 2, a test plugin for hot reload: answers `KEY@v2` (see
//! `reload_getter_v1/src/getter.rs`, which it shares).

const VERSION: &str = "2";

include!("../../reload_getter_v1/src/getter.rs");
