//! Schema pieces the derive cannot express: durations are checked by the API server, so a typo is
//! refused at `kubectl apply` instead of breaking the daemon's watch.

use schemars::{Schema, SchemaGenerator, json_schema};

/// humantime durations such as `30s`, `5m`, `1h 30m`.
pub const DURATION_PATTERN: &str = r"^\s*([0-9]+\s*(ns|us|ms|s|m|h|d|w|nsec|usec|msec|sec|secs|second|seconds|min|mins|minute|minutes|hr|hrs|hour|hours|day|days|week|weeks)\s*)+$";

pub fn duration(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "string",
        "pattern": DURATION_PATTERN,
        "description": "A duration such as 30s, 5m or 1h 30m."
    })
}

pub fn optional_duration(generator: &mut SchemaGenerator) -> Schema {
    duration(generator)
}
