//! resin-loadgen: simulates many devices polling resin-cloud's target state (placeholder).

fn main() {}
