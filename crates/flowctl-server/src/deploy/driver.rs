//! The driver interface: how the supervisor runs one instance, whatever runs it.
//!
//! The supervisor decides *what* runs and *when* (placements, restart policy and backoff,
//! rolling replacement, fencing, events and runtime reports); a driver only does it. An
//! [`Instance`] is the handle of one started instance, and it is all the supervisor holds:
//!
//! - [`Instance::start`] starts an instance from a [`Desired`] (its output going to its log
//!   file), or fails with the error the `StartFailed` event shows;
//! - [`Instance::stop`] stops it: gracefully first, forced after `STOP_GRACE` (the fence
//!   margin counts on that bound);
//! - [`Instance::exited`] polls whether it has exited, and how: `Some((success, how))`, where
//!   `how` is the text of the `Exited` event and of `last_exit`;
//! - [`Instance::pid`] is its process id, if it has one, for its status and events.
//!
//! Rust's `async fn` in traits are not object-safe, so the handle is an enum with one variant
//! per driver and each method `match`es on it; no boxing and no new dependencies. Today the
//! `process` driver ([`ProcessInstance`]) is the only one. A second driver (Docker containers
//! through the Engine API) adds a variant, one arm to each method, and the choice of the
//! driver in [`Instance::start`] (from a field of `Desired` that `desired_here` fills from the
//! spec's `driver`); the supervisor does not change.

use super::process::ProcessInstance;
use super::supervisor::Desired;
use super::DeployOptions;

/// One started instance, of whichever driver runs it.
pub(super) enum Instance {
    /// A child process of this node (the `process` driver).
    Process(ProcessInstance),
}

impl Instance {
    /// Starts `d` with its driver; tasks it needs while it runs (log pumps) go on `tracker`.
    pub(super) async fn start(
        d: &Desired,
        opts: &DeployOptions,
        tracker: &tokio_util::task::TaskTracker,
    ) -> std::io::Result<Instance> {
        ProcessInstance::start(d, opts, tracker)
            .await
            .map(Instance::Process)
    }

    /// Stops the instance: asks it to exit, then forces it after `STOP_GRACE`.
    pub(super) async fn stop(&mut self) {
        match self {
            Instance::Process(p) => p.stop().await,
        }
    }

    /// `Some((success, how))` once the instance has exited (or its state cannot be read: then
    /// `success` is false and `how` the error); `None` while it runs.
    pub(super) async fn exited(&mut self) -> Option<(bool, String)> {
        match self {
            Instance::Process(p) => p.exited(),
        }
    }

    /// The instance's process id, if it has one.
    pub(super) fn pid(&self) -> Option<u32> {
        match self {
            Instance::Process(p) => p.pid(),
        }
    }
}
