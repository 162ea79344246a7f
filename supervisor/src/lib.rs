//! resin-supervisor: the device agent. It registers the device, polls its
//! target state, reconciles the Docker engine towards it with a pure planner
//! and an executor, reports state, forwards logs and serves a local API.

pub mod engine;
pub mod planner;
pub mod reconcile;
pub mod spec;
pub mod store;
