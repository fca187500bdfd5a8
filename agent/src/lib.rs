//! `resmon`: the agent.
pub mod config;
