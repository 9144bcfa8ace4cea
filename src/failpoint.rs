//! Named crash points for the crash matrix (tests/crash.rs). Compiled in only with the `failpoints`
//! feature; without it `failpoint!` expands to nothing.
//!
//! `CANARYD_FAILPOINT=NAME[:QUALIFIER][@N]` makes the daemon exit at once (status 137, no cleanup)
//! at the N-th hit (default 1) of point NAME whose qualifier equals QUALIFIER (any, if none is given).
//! `CANARYD_FAILPOINT_TRACE=1` prints every hit to stderr as `failpoint hit: NAME:QUALIFIER`.

/// Mark a crash point: `failpoint!("after-weights", canary_weight)`; the qualifier is any Display.
#[cfg(feature = "failpoints")]
#[macro_export]
macro_rules! failpoint {
    ($name:literal) => {
        $crate::failpoint::hit($name, "")
    };
    ($name:literal, $qualifier:expr) => {
        $crate::failpoint::hit($name, &$qualifier.to_string())
    };
}

/// Without the `failpoints` feature a crash point is nothing at all.
#[cfg(not(feature = "failpoints"))]
#[macro_export]
macro_rules! failpoint {
    ($($ignored:tt)*) => {};
}

#[cfg(feature = "failpoints")]
mod armed {
    use std::sync::OnceLock;
    use std::sync::atomic::{AtomicU64, Ordering};

    /// The point armed by the environment.
    #[derive(Debug, PartialEq)]
    pub struct Armed {
        pub name: String,
        pub qualifier: Option<String>,
        pub nth: u64,
    }

    /// `NAME[:QUALIFIER][@N]`; None when empty or malformed (a typo must not arm anything else).
    pub fn parse(spec: &str) -> Option<Armed> {
        let (point, nth) = match spec.rsplit_once('@') {
            Some((p, n)) => (p, n.parse().ok().filter(|n| *n > 0)?),
            None => (spec, 1),
        };
        let (name, qualifier) = match point.split_once(':') {
            Some((n, q)) => (n, Some(q.to_string())),
            None => (point, None),
        };
        (!name.is_empty()).then(|| Armed {
            name: name.to_string(),
            qualifier,
            nth,
        })
    }

    struct Config {
        armed: Option<Armed>,
        trace: bool,
        hits: AtomicU64,
    }

    fn config() -> &'static Config {
        static CONFIG: OnceLock<Config> = OnceLock::new();
        CONFIG.get_or_init(|| {
            let spec = std::env::var("CANARYD_FAILPOINT").unwrap_or_default();
            let armed = parse(&spec);
            if !spec.is_empty() && armed.is_none() {
                eprintln!("failpoint: ignoring malformed CANARYD_FAILPOINT={spec:?}");
            }
            Config {
                armed,
                trace: std::env::var_os("CANARYD_FAILPOINT_TRACE").is_some(),
                hits: AtomicU64::new(0),
            }
        })
    }

    pub fn hit(name: &str, qualifier: &str) {
        let c = config();
        if c.trace {
            eprintln!("failpoint hit: {name}:{qualifier}");
        }
        let Some(a) = &c.armed else { return };
        if a.name != name || a.qualifier.as_deref().is_some_and(|q| q != qualifier) {
            return;
        }
        if c.hits.fetch_add(1, Ordering::SeqCst) + 1 == a.nth {
            eprintln!("failpoint {name}:{qualifier}@{}: exiting", a.nth);
            // A crash: no destructors, no flushing of anything but this line.
            std::process::exit(137);
        }
    }
}

#[cfg(feature = "failpoints")]
pub use armed::hit;

/// The qualifier of a verdict point: `fail` if any metric failed, `pass` if all passed, else `other`.
#[cfg(feature = "failpoints")]
pub fn verdict(results: &[crate::resources::policy::MetricResult]) -> &'static str {
    use crate::resources::policy::Verdict;
    if results.iter().any(|r| r.verdict == Verdict::Fail) {
        "fail"
    } else if results.iter().all(|r| r.verdict == Verdict::Pass) {
        "pass"
    } else {
        "other"
    }
}

#[cfg(all(test, feature = "failpoints"))]
mod tests {
    use super::armed::{Armed, parse};

    #[test]
    fn specs_parse() {
        let a = |name: &str, q: Option<&str>, nth| Armed {
            name: name.into(),
            qualifier: q.map(Into::into),
            nth,
        };
        assert_eq!(parse("after-weights:0@2"), Some(a("after-weights", Some("0"), 2)));
        assert_eq!(parse("before-status"), Some(a("before-status", None, 1)));
        assert_eq!(
            parse("after-status:RolledBack/0"),
            Some(a("after-status", Some("RolledBack/0"), 1))
        );
        assert_eq!(parse(""), None);
        assert_eq!(parse("x@0"), None);
        assert_eq!(parse("x@y"), None);
    }
}
