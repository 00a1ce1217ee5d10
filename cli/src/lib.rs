//! The `rmb` command line (issue #6): keys, twins, calls, bots, notifications, status and
//! a one-command demo network, built on the identity and peer libraries.
//!
//! Everything that talks to a running network goes through a local `rmb-peer`'s Redis
//! API ([`bus`]), exactly as an rmb-rs bot would, so `rmb` doubles as a reference client.

pub mod args;
pub mod bus;
pub mod cli;
pub mod commands;
pub mod demo;
pub mod personal;
pub mod signals;
