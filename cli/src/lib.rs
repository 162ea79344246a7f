//! resin-cli: the pieces of the `resin` command-line client that are worth
//! testing on their own: the stored login, the HTTP client of the cloud API,
//! compose-file parsing and table output.

pub mod api;
pub mod args;
pub mod compose;
pub mod config;
pub mod docs;
pub mod since;
pub mod table;
