//! Schema pieces the derive cannot express: durations are checked by the API server, so a typo is
//! refused at `kubectl apply` instead of breaking the daemon's watch.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    JSONSchemaProps, JSONSchemaPropsOrArray, JSONSchemaPropsOrBool,
};
use schemars::{Schema, SchemaGenerator, json_schema};

/// humantime durations such as `30s`, `5m`, `1h 30m`. At most 4 parts of at most 9 digits each, so
/// that every accepted value can be decoded (no overflow); the daemon's validation sets the maxima.
pub const DURATION_PATTERN: &str = r"^\s*([0-9]{1,9}\s*(ns|us|ms|s|m|h|d|w|nsec|usec|msec|sec|secs|second|seconds|min|mins|minute|minutes|hr|hrs|hour|hours|day|days|week|weeks)\s*){1,4}$";

/// Longest duration text the CRD accepts.
pub const DURATION_MAX_LENGTH: u32 = 64;

pub fn duration(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "string",
        "pattern": DURATION_PATTERN,
        "maxLength": DURATION_MAX_LENGTH,
        "description": "A duration such as 30s, 5m or 1h 30m."
    })
}

/// At least one part of a whole second or more (`1s`, `5m`): an interval the API server lets
/// through at 0 s (or in milliseconds) would be a check every tick of the daemon's loops. Stricter
/// than the daemon's own "at least 1s" (`1000ms` is refused here), never looser.
pub const INTERVAL_RULE: &str = "self.matches('[1-9][0-9]* *(s|sec|secs|second|seconds|m|min|mins|minute|minutes|h|hr|hrs|hour|hours|d|day|days|w|week|weeks)([^a-z]|$)')";

pub fn interval(generator: &mut SchemaGenerator) -> Schema {
    let mut schema = duration(generator);
    schema.insert(
        "x-kubernetes-validations".into(),
        serde_json::json!([{"rule": INTERVAL_RULE, "message": "must be at least 1s (e.g. 1s, 30s, 5m)"}]),
    );
    schema
}

pub fn optional_duration(generator: &mut SchemaGenerator) -> Schema {
    duration(generator)
}

/// The values of each fixed-width integer format schemars writes. The API server checks
/// `minimum`/`maximum`, not `format`: without them it stores a number the daemon cannot decode.
fn format_range(format: &str) -> Option<(f64, f64)> {
    Some(match format {
        "uint8" => (0.0, f64::from(u8::MAX)),
        "uint16" => (0.0, f64::from(u16::MAX)),
        "uint32" => (0.0, f64::from(u32::MAX)),
        "int8" => (f64::from(i8::MIN), f64::from(i8::MAX)),
        "int16" => (f64::from(i16::MIN), f64::from(i16::MAX)),
        "int32" => (f64::from(i32::MIN), f64::from(i32::MAX)),
        _ => return None,
    })
}

/// Give every fixed-width integer of a CRD schema the bounds of its width, where the type did
/// not set tighter ones (spec and status alike).
pub fn bound_integers(s: &mut JSONSchemaProps) {
    if s.type_.as_deref() == Some("integer")
        && let Some((min, max)) = s.format.as_deref().and_then(format_range)
    {
        s.minimum = Some(s.minimum.map_or(min, |m| m.max(min)));
        s.maximum = Some(s.maximum.map_or(max, |m| m.min(max)));
    }
    let nested = s.properties.iter_mut().flat_map(|p| p.values_mut());
    let listed = [&mut s.all_of, &mut s.any_of, &mut s.one_of]
        .into_iter()
        .flat_map(|l| l.iter_mut().flatten());
    for child in nested.chain(listed) {
        bound_integers(child);
    }
    match &mut s.items {
        Some(JSONSchemaPropsOrArray::Schema(item)) => bound_integers(item),
        Some(JSONSchemaPropsOrArray::Schemas(items)) => items.iter_mut().for_each(bound_integers),
        None => {}
    }
    if let Some(JSONSchemaPropsOrBool::Schema(values)) = &mut s.additional_properties {
        bound_integers(values);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The largest value the pattern accepts (4 parts of 9 digits, in weeks) still decodes.
    #[test]
    fn largest_accepted_duration_decodes() {
        let largest = "999999999w 999999999w 999999999w 999999999w";
        assert!(largest.len() <= DURATION_MAX_LENGTH as usize);
        assert!(humantime::parse_duration(largest).is_ok());
        assert!(humantime::parse_duration("99999999999999999999s").is_err());
        assert!(DURATION_PATTERN.contains("[0-9]{1,9}") && DURATION_PATTERN.ends_with("{1,4}$"));
    }
}
