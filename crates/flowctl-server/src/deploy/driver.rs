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
//! per driver and each method `match`es on it; no boxing and no new dependencies. The
//! `process` driver is [`ProcessInstance`], the `docker` driver [`ContainerInstance`]; which
//! one starts an instance is decided by `Desired::container`, which `desired_here` fills from
//! the spec's `driver`.

use super::container::ContainerInstance;
use super::process::ProcessInstance;
use super::supervisor::Desired;
use super::DeployOptions;

/// One started instance, of whichever driver runs it.
pub(super) enum Instance {
    /// A child process of this node (the `process` driver).
    Process(ProcessInstance),
    /// A container on this node's Docker engine (the `docker` driver).
    Container(ContainerInstance),
}

impl Instance {
    /// Starts `d` with its driver; tasks it needs while it runs (log pumps) go on `tracker`.
    pub(super) async fn start(
        d: &Desired,
        opts: &DeployOptions,
        tracker: &tokio_util::task::TaskTracker,
    ) -> std::io::Result<Instance> {
        match &d.container {
            None => ProcessInstance::start(d, opts, tracker)
                .await
                .map(Instance::Process),
            Some(run) => ContainerInstance::start(d, run, opts, tracker)
                .await
                .map(Instance::Container),
        }
    }

    /// What the instance is, for its events: `pid 42`, or `container 3f9a0c1b2d4e, pid 42`.
    pub(super) fn describe(&self) -> String {
        match self {
            Instance::Process(p) => format!("pid {}", p.pid().unwrap_or(0)),
            Instance::Container(c) => match c.pid() {
                Some(pid) => format!("container {}, pid {pid}", c.short_id()),
                None => format!("container {}", c.short_id()),
            },
        }
    }

    /// Stops the instance: asks it to exit, then forces it after `STOP_GRACE`.
    pub(super) async fn stop(&mut self) {
        match self {
            Instance::Process(p) => p.stop().await,
            Instance::Container(c) => c.stop().await,
        }
    }

    /// `Some((success, how))` once the instance has exited (or its state cannot be read: then
    /// `success` is false and `how` the error); `None` while it runs.
    pub(super) async fn exited(&mut self) -> Option<(bool, String)> {
        match self {
            Instance::Process(p) => p.exited(),
            Instance::Container(c) => c.exited().await,
        }
    }

    /// The instance's process id, if it has one.
    pub(super) fn pid(&self) -> Option<u32> {
        match self {
            Instance::Process(p) => p.pid(),
            Instance::Container(c) => c.pid(),
        }
    }
}
