//! The web layer: the hardened HTTP listener ([`listener`]) that faces
//! hostile clients on its own one-thread runtime, the routes it answers
//! ([`routes`]: `/metrics`, `/healthz`, the dashboard), the dashboard's
//! pages as HTML ([`dashboard`]) and who may act on them ([`auth`]).
//!
//! It reads the store through its own connection and the running daemon
//! only through [`crate::daemon::state`]; nothing below it imports it.

pub mod auth;
pub mod dashboard;
pub mod listener;
pub mod routes;

pub use routes::serve;
