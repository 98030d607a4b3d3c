//! End-to-end tests against a real kube-apiserver and etcd (see `e2e/controlplane.sh`).
//! Each test works in its own namespace of one shared control plane.

mod support;

mod acquire;
mod bad_input;
mod chart;
mod cost;
mod crd;
mod examples;
mod foreign;
mod forged;
mod holder;
mod interop;
mod leader;
mod leaks;
mod metrics;
mod namespaces;
mod plugin;
mod process_tree;
mod reclaim;
mod tamper;
mod work;
