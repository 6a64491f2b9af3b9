//! Where a pipeline failed and why: the stage, and a cause that keeps a plugin's trap, a
//! plugin's own error, a broken contract, an open breaker and a fault of the host apart.

use std::fmt;

use crate::config::Role;
use crate::contract::WitError;
use crate::plugin::Trap;

/// Where a failure happened.
#[derive(Debug, Clone)]
pub struct StageRef {
    /// Plugin name.
    pub plugin: String,
    /// Role.
    pub role: Role,
    /// 1-based position among transforms or sinks.
    pub index: usize,
}

impl fmt::Display for StageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.role {
            Role::Source => write!(f, "source `{}`", self.plugin),
            role => write!(f, "{role} `{}` (#{})", self.plugin, self.index),
        }
    }
}

/// What went wrong in a stage.
#[derive(Debug, Clone)]
pub enum Cause {
    /// The instance trapped.
    Trap(Trap),
    /// The plugin returned an error it meant to return.
    Error {
        /// Exported function.
        function: &'static str,
        /// The error.
        error: WitError,
        /// Position of the record in its batch, when the error is about one record.
        record: Option<usize>,
    },
    /// The plugin broke a MUST rule of the contract.
    Contract(String),
    /// The stage's circuit breaker is open after repeated traps.
    CircuitOpen(String),
    /// The host failed the stage, not the plugin: the dead-letter channel could not store a
    /// record, a fresh instance could not start, a task ended abnormally.
    Host(String),
}

/// A pipeline that stopped because of a failure.
#[derive(Debug, Clone, thiserror::Error)]
pub struct PipelineFailure {
    /// Pipeline name.
    pub pipeline: String,
    /// The stage.
    pub stage: StageRef,
    /// The cause.
    pub cause: Cause,
}

impl fmt::Display for PipelineFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "pipeline `{}`: {} ", self.pipeline, self.stage)?;
        match &self.cause {
            Cause::Trap(trap) => write!(f, "trapped in `{}`: {}", trap.function, trap.reason),
            Cause::Error {
                function,
                error,
                record,
            } => {
                write!(f, "failed in `{function}`")?;
                if let Some(i) = record {
                    write!(f, " on record {i} of its batch")?;
                }
                write!(f, " with {}", crate::contract::describe(error))
            }
            Cause::Contract(text) => write!(f, "broke the plugin contract: {text}"),
            Cause::CircuitOpen(text) => write!(f, "is shut off: {text}"),
            Cause::Host(text) => write!(f, "was stopped by the host: {text}"),
        }
    }
}
