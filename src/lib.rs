//! wsplice: a WebSocket reverse proxy.
pub mod config;
pub mod core;
pub mod demo;
pub mod driver;
pub mod sys;
