//! Capacity math (pure): replicas the canary needs for its traffic share, and the HPA bounds that
//! guarantee them without touching anything else of the autoscaler.

pub use crate::resources::bounds::{Bounds, DEFAULT_MIN_REPLICAS};

/// `headroom` is honoured to this fraction (1/1000), so that 1.1 means exactly 1.1 and the result
/// does not depend on binary floating point (10 × 1.1 must give 11, not 12).
const HEADROOM_SCALE: u128 = 1000;

/// Replicas the canary needs to carry `weight` % of the traffic that `stable_replicas_at_start`
/// carried at the start of the rollout: `ceil(stable × weight / 100 × headroom)`.
///
/// - `weight` 0 needs 0 replicas; any other weight at least 1, also when stable had 0 replicas.
/// - `weight` above 100 counts as 100; negative stable replicas as 0.
/// - `headroom` below 1.0 (and NaN) counts as 1.0: headroom adds spare capacity, it never takes
///   capacity away from what the share needs. It is taken to three decimals.
/// - The result saturates at `i32::MAX` instead of overflowing (the API server refuses such counts
///   anyway, with a message, which is better than a wrapped number).
pub fn canary_capacity(stable_replicas_at_start: i32, weight: u8, headroom: f64) -> i32 {
    let weight = u128::from(weight.min(100));
    if weight == 0 {
        return 0;
    }
    let stable = u128::try_from(stable_replicas_at_start).unwrap_or(0);
    // At most 2^31 × 2^7 × 2^64: no overflow in u128.
    let needed = (stable * weight * headroom_scaled(headroom)).div_ceil(100 * HEADROOM_SCALE);
    i32::try_from(needed).unwrap_or(i32::MAX).max(1)
}

/// `headroom` × 1000, rounded; 1000 for anything below 1.0 or NaN.
fn headroom_scaled(headroom: f64) -> u128 {
    if headroom.is_nan() || headroom < 1.0 {
        return HEADROOM_SCALE;
    }
    // `as` saturates: +inf and huge values become u64::MAX, and the caller clamps the result.
    ((headroom * HEADROOM_SCALE as f64).round() as u64).into()
}

/// What to do when the canary needs more replicas than its HPA's `maxReplicas`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum MaxPolicy {
    /// Raise `maxReplicas` too, until the original bounds are restored.
    RaiseTemporarily,
    /// Refuse: the owner of the HPA decides its maximum.
    #[default]
    Fail,
}

impl MaxPolicy {
    /// From a policy's yes/no switch (`spec.scaling.raiseMaxReplicas`).
    pub fn from_raise_max(raise: bool) -> Self {
        if raise {
            MaxPolicy::RaiseTemporarily
        } else {
            MaxPolicy::Fail
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CapacityError {
    // raise_min does not know the weight, so the message speaks of the canary's next share.
    #[error(
        "canary HPA maxReplicas {max} is below the {required} replicas needed for its next share of traffic; \
         raise maxReplicas or set spec.scaling.raiseMaxReplicas"
    )]
    AboveMax { required: i32, max: i32 },
}

impl CapacityError {
    /// A small fixed set of values, safe as a metric label.
    pub fn category(&self) -> &'static str {
        match self {
            CapacityError::AboveMax { .. } => "hpa_max_too_low",
        }
    }
}

/// The canary's bounds guaranteeing `required` replicas: `minReplicas = max(original, required)`.
///
/// When `required` exceeds `maxReplicas`, `RaiseTemporarily` raises it to `required` and `Fail`
/// refuses. When nothing needs raising, `original` comes back unchanged (an absent `minReplicas`
/// stays absent), so that writing the result is a no-op.
pub fn raise_min(original: Bounds, required: i32, max_policy: MaxPolicy) -> Result<Bounds, CapacityError> {
    let mut bounds = original;
    if required > original.max_replicas {
        match max_policy {
            MaxPolicy::RaiseTemporarily => bounds.max_replicas = required,
            MaxPolicy::Fail => {
                return Err(CapacityError::AboveMax {
                    required,
                    max: original.max_replicas,
                });
            }
        }
    }
    if required > original.effective_min() {
        bounds.min_replicas = Some(required);
    }
    Ok(bounds)
}

/// The stable's bounds while a rollout runs: `minReplicas = max(original, replicas_at_start)`, so
/// that the HPA cannot scale it down as its traffic drains and a rollback finds it at full size.
///
/// Never above `maxReplicas`: stable's capacity is the HPA owner's decision, and a stable running
/// above its maximum at the start is about to be scaled down to it by the HPA anyway. When nothing
/// needs pinning, `original` comes back unchanged.
pub fn pin_min(original: Bounds, replicas_at_start: i32) -> Bounds {
    let target = replicas_at_start.min(original.max_replicas);
    if target <= original.effective_min() {
        return original;
    }
    Bounds {
        min_replicas: Some(target),
        ..original
    }
}

/// The bounds canaryd writes while a rollout runs: `target` in the fields canaryd changes (those
/// where it differs from `original`), and whatever the HPA has now in the others, so that a
/// person's change of a field canaryd does not manage (an incident bump of `maxReplicas`) stays.
pub fn managed_fields(target: Bounds, original: Bounds, current: Bounds) -> Bounds {
    Bounds {
        min_replicas: if target.effective_min() == original.effective_min() {
            current.min_replicas
        } else {
            target.min_replicas
        },
        max_replicas: if target.max_replicas == original.max_replicas {
            current.max_replicas
        } else {
            target.max_replicas
        },
    }
}

/// A bound canaryd does not put back, because it no longer has a value canaryd set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeftAlone {
    pub field: &'static str,
    pub current: i32,
    pub original: i32,
}

/// Field by field, what restoring `original` writes into an HPA that has `current`, given the
/// values canaryd set (`ours`). A field goes back only when it has a value canaryd set (one that
/// differs from the original); a field with any other value was changed by someone else during
/// the rollout and is left alone, and reported. Returns the bounds to write (None: nothing) and
/// the fields left alone.
pub fn restore_fields(original: Bounds, current: Bounds, ours: &[Bounds]) -> (Option<Bounds>, Vec<LeftAlone>) {
    let mut out = current;
    let mut left = Vec::new();
    type Get = fn(&Bounds) -> i32;
    let fields: [(&'static str, Get); 2] = [
        ("minReplicas", |b| b.effective_min()),
        ("maxReplicas", |b| b.max_replicas),
    ];
    for (field, get) in fields {
        let (now, was) = (get(&current), get(&original));
        if now == was {
            continue;
        }
        // Only a value canaryd set (and so differs from the original) is canaryd's to put back.
        if ours.iter().any(|o| get(o) != was && get(o) == now) {
            match field {
                "minReplicas" => out.min_replicas = original.min_replicas,
                _ => out.max_replicas = original.max_replicas,
            }
        } else {
            left.push(LeftAlone {
                field,
                current: now,
                original: was,
            });
        }
    }
    // A restored min above a max someone raised, or the reverse, would be refused: keep it valid.
    if out.effective_min() > out.max_replicas {
        return (None, left);
    }
    ((!out.equivalent(current)).then_some(out), left)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(min: Option<i32>, max: i32) -> Bounds {
        Bounds {
            min_replicas: min,
            max_replicas: max,
        }
    }

    #[test]
    fn canary_capacity_table() {
        #[rustfmt::skip]
        let cases: &[(i32, u8, f64, i32)] = &[
            // stable, weight, headroom, expected
            (4, 10, 1.0, 1),
            (4, 25, 1.0, 1),
            (4, 50, 1.0, 2),
            (4, 51, 1.0, 3),
            (4, 100, 1.0, 4),
            (3, 50, 1.5, 3),
            (3, 50, 1.0, 2),
            (10, 100, 1.1, 11), // exact, not 12 from 10 × 1.1 = 11.000000000000002
            (10, 30, 1.2, 4),
            (100, 1, 1.0, 1),
            (100, 99, 1.0, 99),
            (7, 30, 1.0, 3),
            (20, 10, 2.0, 4),
            // weight 0: nothing, whatever the rest
            (4, 0, 1.0, 0),
            (0, 0, 1.0, 0),
            (i32::MAX, 0, f64::INFINITY, 0),
            // stable 0 (or negative): at least one replica for any traffic
            (0, 1, 1.0, 1),
            (0, 50, 3.0, 1),
            (0, 100, 1.0, 1),
            (-5, 100, 1.0, 1),
            // headroom below 1.0 and NaN count as 1.0
            (4, 100, 0.5, 4),
            (4, 100, 0.0, 4),
            (4, 100, -2.0, 4),
            (4, 100, f64::NAN, 4),
            (4, 100, f64::NEG_INFINITY, 4),
            // weights above 100 count as 100
            (4, 200, 1.0, 4),
            (4, u8::MAX, 1.0, 4),
            // saturation instead of overflow
            (i32::MAX, 100, 1.0, i32::MAX),
            (i32::MAX, 100, 2.0, i32::MAX),
            (i32::MAX, 50, 1.0, 1_073_741_824),
            (4, 100, f64::INFINITY, i32::MAX),
            (4, 100, f64::MAX, i32::MAX),
            (4, 100, 1e12, i32::MAX),
        ];
        for &(stable, weight, headroom, expected) in cases {
            assert_eq!(
                canary_capacity(stable, weight, headroom),
                expected,
                "stable {stable}, weight {weight}, headroom {headroom}"
            );
        }
    }

    #[test]
    fn restore_fields_table() {
        let none: &[&str] = &[];
        type Case<'a> = (Bounds, Bounds, &'a [Bounds], Option<Bounds>, &'a [&'a str]);
        #[rustfmt::skip]
        let cases: &[Case] = &[
            // original, current, canaryd's values, written, left alone
            (b(Some(2), 10), b(Some(4), 10), &[b(Some(4), 10)], Some(b(Some(2), 10)), none),
            (b(None, 10), b(Some(4), 10), &[b(Some(4), 10)], Some(b(None, 10)), none),
            // an incident bump of max: min back, max kept
            (b(Some(2), 10), b(Some(4), 20), &[b(Some(4), 10)], Some(b(Some(2), 20)), &["maxReplicas"]),
            // canaryd raised max too, someone raised it further: kept
            (b(Some(1), 3), b(Some(4), 8), &[b(Some(4), 4)], Some(b(Some(1), 8)), &["maxReplicas"]),
            // canaryd raised max; still canaryd's: back
            (b(Some(1), 3), b(Some(4), 4), &[b(Some(4), 4)], Some(b(Some(1), 3)), none),
            // min changed by someone: left alone; nothing else to do
            (b(Some(2), 10), b(Some(7), 10), &[b(Some(4), 10)], None, &["minReplicas"]),
            // any of canaryd's values counts (the one a crash kept out of the record)
            (b(Some(1), 10), b(Some(2), 10), &[b(Some(1), 10), b(Some(2), 10), b(Some(4), 10)], Some(b(Some(1), 10)), none),
            // canaryd never changed min: never written, even though it differs now
            (b(Some(2), 10), b(Some(5), 10), &[b(Some(2), 10)], None, &["minReplicas"]),
            // already back, or the same behaviour (absent min = 1)
            (b(Some(2), 10), b(Some(2), 10), &[b(Some(4), 10)], None, none),
            (b(None, 10), b(Some(1), 10), &[b(Some(4), 10)], None, none),
        ];
        for (original, current, ours, write, left) in cases {
            let (got, got_left) = restore_fields(*original, *current, ours);
            assert_eq!(got, *write, "{original:?} {current:?} {ours:?}");
            let fields: Vec<&str> = got_left.iter().map(|l| l.field).collect();
            assert_eq!(fields, *left, "{original:?} {current:?} {ours:?}");
        }
    }

    #[test]
    fn managed_fields_keep_what_canaryd_does_not_change() {
        // Pinning min keeps someone's max; raising max (policy) writes it.
        assert_eq!(
            managed_fields(b(Some(4), 10), b(Some(2), 10), b(Some(2), 20)),
            b(Some(4), 20)
        );
        assert_eq!(
            managed_fields(b(Some(4), 4), b(Some(1), 3), b(Some(1), 3)),
            b(Some(4), 4)
        );
        // Nothing to change: whatever is there stays.
        assert_eq!(
            managed_fields(b(Some(2), 10), b(Some(2), 10), b(Some(3), 12)),
            b(Some(3), 12)
        );
    }

    #[test]
    fn raise_min_table() {
        use MaxPolicy::{Fail, RaiseTemporarily};
        #[rustfmt::skip]
        let cases: &[(Bounds, i32, MaxPolicy, Bounds)] = &[
            // original, required, policy, expected
            (b(Some(1), 10), 3, Fail, b(Some(3), 10)),
            (b(None, 10), 3, Fail, b(Some(3), 10)),
            (b(Some(5), 10), 3, Fail, b(Some(5), 10)),       // already enough: unchanged
            (b(None, 10), 1, Fail, b(None, 10)),             // absent stays absent
            (b(None, 10), 0, Fail, b(None, 10)),             // weight 0
            (b(Some(2), 10), -1, Fail, b(Some(2), 10)),
            (b(Some(1), 4), 4, Fail, b(Some(4), 4)),         // exactly max
            (b(Some(1), 3), 4, RaiseTemporarily, b(Some(4), 4)),
            (b(None, 1), 6, RaiseTemporarily, b(Some(6), 6)),
            (b(Some(2), 10), 12, RaiseTemporarily, b(Some(12), 12)),
        ];
        for &(original, required, policy, expected) in cases {
            assert_eq!(
                raise_min(original, required, policy),
                Ok(expected),
                "{original:?}, required {required}, {policy:?}"
            );
        }
    }

    #[test]
    fn raise_min_above_max_fails_with_what_to_fix() {
        let err = raise_min(b(Some(1), 3), 4, MaxPolicy::Fail).unwrap_err();
        assert_eq!(err, CapacityError::AboveMax { required: 4, max: 3 });
        assert_eq!(
            err.to_string(),
            "canary HPA maxReplicas 3 is below the 4 replicas needed for its next share of traffic; \
             raise maxReplicas or set spec.scaling.raiseMaxReplicas"
        );
        assert_eq!(err.category(), "hpa_max_too_low");
    }

    #[test]
    fn pin_min_table() {
        #[rustfmt::skip]
        let cases: &[(Bounds, i32, Bounds)] = &[
            // original, replicas at start, expected
            (b(Some(1), 10), 4, b(Some(4), 10)),
            (b(None, 10), 4, b(Some(4), 10)),
            (b(Some(6), 10), 4, b(Some(6), 10)),  // already above: unchanged
            (b(Some(4), 10), 4, b(Some(4), 10)),
            (b(None, 10), 1, b(None, 10)),        // absent stays absent
            (b(None, 10), 0, b(None, 10)),        // scaled to zero: nothing to keep
            (b(Some(2), 10), -3, b(Some(2), 10)),
            (b(Some(1), 5), 8, b(Some(5), 5)),    // never above max
            (b(Some(5), 5), 8, b(Some(5), 5)),
        ];
        for &(original, start, expected) in cases {
            assert_eq!(pin_min(original, start), expected, "{original:?}, start {start}");
        }
    }

    #[test]
    fn raising_then_restoring_round_trips() {
        let original = b(None, 3);
        let raised = raise_min(original, 5, MaxPolicy::RaiseTemporarily).unwrap();
        assert_eq!(raised, b(Some(5), 5));
        let json = serde_json::to_value(original).unwrap();
        assert_eq!(json, serde_json::json!({"maxReplicas": 3}));
        let back: Bounds = serde_json::from_value(serde_json::json!({"maxReplicas": 3})).unwrap();
        assert_eq!(back, original);
    }

    #[test]
    fn equivalence_treats_absent_min_as_one() {
        assert!(b(None, 3).equivalent(b(Some(1), 3)));
        assert!(!b(None, 3).equivalent(b(Some(2), 3)));
        assert!(!b(Some(1), 3).equivalent(b(Some(1), 4)));
        assert_eq!(MaxPolicy::from_raise_max(true), MaxPolicy::RaiseTemporarily);
        assert_eq!(MaxPolicy::from_raise_max(false), MaxPolicy::Fail);
    }
}
