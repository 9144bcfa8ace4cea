//! Checks of `spec.webhooks` the schema cannot express.

use std::time::Duration;

use crate::resources::FieldError;
use crate::resources::webhook::{MAX_HOOKS, MAX_INTERVAL, MAX_METADATA, MAX_RETRIES, MAX_TIMEOUT, Webhook};

/// Checks the schema cannot express: unique names, an http(s) URL with a host, bounded values.
pub fn validate(hooks: &[Webhook]) -> Vec<FieldError> {
    let mut errors = Vec::new();
    let mut e = |field: String, message: String| errors.push(FieldError { field, message });
    if hooks.len() > MAX_HOOKS {
        e("spec.webhooks".into(), format!("at most {MAX_HOOKS} webhooks"));
    }
    let mut names = std::collections::HashSet::new();
    for (i, h) in hooks.iter().enumerate() {
        let field = |f: &str| format!("spec.webhooks[{i}].{f}");
        if h.name.is_empty() || h.name.len() > 63 {
            e(field("name"), "must be 1-63 characters".into());
        }
        if !names.insert(h.name.as_str()) {
            e(field("name"), format!("{:?} is used by another webhook", h.name));
        }
        if let Err(why) = check_url(&h.url) {
            e(field("url"), why);
        }
        if h.timeout.is_zero() || h.timeout > MAX_TIMEOUT {
            e(
                field("timeout"),
                format!("{} is not within 1ms-5m", humantime::format_duration(h.timeout)),
            );
        }
        if h.retries > MAX_RETRIES {
            e(field("retries"), format!("{} is more than {MAX_RETRIES}", h.retries));
        }
        if h.interval < Duration::from_secs(1) || h.interval > MAX_INTERVAL {
            e(
                field("interval"),
                format!("{} is not within 1s-1h", humantime::format_duration(h.interval)),
            );
        }
        if h.metadata.len() > MAX_METADATA {
            e(field("metadata"), format!("at most {MAX_METADATA} entries"));
        }
    }
    errors
}

fn check_url(url: &str) -> Result<(), String> {
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
        .ok_or_else(|| format!("{url:?} is not an http:// or https:// URL"))?;
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    if authority.is_empty() {
        return Err(format!("{url:?} has no host"));
    }
    if authority.contains('@') {
        return Err("credentials in the URL are not allowed: it is shown in status and logs".into());
    }
    if url.len() > 2048 {
        return Err("longer than 2048 characters".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::resources::webhook::{HookType, default_interval, default_timeout};

    fn hook(url: &str) -> Webhook {
        Webhook {
            name: "smoke".into(),
            type_: HookType::PreRollout,
            url: url.into(),
            timeout: default_timeout(),
            retries: 2,
            interval: default_interval(),
            metadata: BTreeMap::new(),
            bearer_token_secret: None,
            mute_alert: false,
            disable_tls: false,
        }
    }

    #[test]
    fn urls_and_bounds_are_checked_naming_the_field() {
        assert!(validate(&[hook("http://loadtester.test/")]).is_empty());
        assert!(validate(&[hook("https://gate.example.com:8443/x")]).is_empty());
        type Change = Box<dyn Fn(&mut Webhook)>;
        let cases: Vec<(Change, &str)> = vec![
            (Box::new(|h| h.url = "ftp://x/".into()), "spec.webhooks[0].url"),
            (Box::new(|h| h.url = "http:///x".into()), "spec.webhooks[0].url"),
            (Box::new(|h| h.url = "https://u:p@x/".into()), "spec.webhooks[0].url"),
            (Box::new(|h| h.timeout = Duration::ZERO), "spec.webhooks[0].timeout"),
            (
                Box::new(|h| h.timeout = Duration::from_secs(3600)),
                "spec.webhooks[0].timeout",
            ),
            (Box::new(|h| h.retries = 11), "spec.webhooks[0].retries"),
            (
                Box::new(|h| h.interval = Duration::from_millis(10)),
                "spec.webhooks[0].interval",
            ),
        ];
        for (change, field) in cases {
            let mut h = hook("http://x/");
            change(&mut h);
            let errors = validate(&[h]);
            assert!(errors.iter().any(|e| e.field == field), "{field}: {errors:?}");
        }
        let errors = validate(&[hook("http://a/"), hook("http://b/")]);
        assert!(errors.iter().any(|e| e.field == "spec.webhooks[1].name"), "{errors:?}");
    }
}
