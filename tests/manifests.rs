//! The committed manifests: the generated CRD is current, every YAML parses, and `canaryd validate`
//! accepts the examples and names one clear error per broken file.

use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn yaml_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("readable directory") {
        let path = entry.expect("directory entry").path();
        if path.is_dir() {
            yaml_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            out.push(path);
        }
    }
}

#[test]
fn deploy_crd_is_not_stale() {
    let crds = [
        ("rolloutpolicy", canaryd::policy::crd_yaml()),
        ("metricprovider", canaryd::policy::provider_crd_yaml()),
        ("notificationtarget", canaryd::policy::target_crd_yaml()),
        ("rolloutcommand", canaryd::policy::command_crd_yaml()),
    ];
    for (name, generated) in crds {
        let generated = generated.expect("CRD renders");
        let path = format!("deploy/crds/{name}.yaml");
        let committed = std::fs::read_to_string(repo().join(&path)).expect("deploy/crds exists");
        assert!(
            generated == committed,
            "{path} is stale: run `cargo run -- crd {name} > {path}`"
        );
    }
}

#[test]
fn kustomization_lists_every_manifest() {
    let deploy = repo().join("deploy");
    let kustomization = std::fs::read_to_string(deploy.join("kustomization.yaml")).expect("kustomization");
    let mut files = Vec::new();
    yaml_files(&deploy, &mut files);
    for file in files {
        let rel = file
            .strip_prefix(&deploy)
            .expect("under deploy")
            .to_string_lossy()
            .into_owned();
        if rel != "kustomization.yaml" {
            assert!(
                kustomization.contains(&format!("- {rel}\n")),
                "{rel} is not in deploy/kustomization.yaml"
            );
        }
    }
}

#[test]
fn every_manifest_parses() {
    let mut files = Vec::new();
    yaml_files(&repo().join("policies"), &mut files);
    yaml_files(&repo().join("deploy"), &mut files);
    assert!(files.len() >= 8, "found only {files:?}");
    for file in files {
        let text = std::fs::read_to_string(&file).expect("readable");
        let docs: Vec<serde_json::Value> =
            serde_saphyr::from_multiple(&text).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        assert!(!docs.is_empty(), "{} is empty", file.display());
        for doc in docs {
            assert!(
                doc.get("apiVersion").and_then(|v| v.as_str()).is_some(),
                "{}: no apiVersion",
                file.display()
            );
            assert!(
                doc.get("kind").and_then(|v| v.as_str()).is_some(),
                "{}: no kind",
                file.display()
            );
        }
    }
}

fn validate(path: &Path) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_canaryd"))
        .arg("validate")
        .arg(path)
        .output()
        .expect("canaryd runs");
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned())
}

#[test]
fn validate_accepts_the_examples() {
    let (ok, out) = validate(&repo().join("policies"));
    assert!(ok, "{out}");
    assert!(out.contains("0 with errors"), "{out}");
}

#[test]
fn validate_names_one_error_per_broken_file() {
    let dir = repo().join("tests/data/broken-policies");
    let (ok, out) = validate(&dir);
    assert!(!ok, "broken policies must fail: {out}");
    let expected = [
        (
            "bad-cron.yaml",
            "spec.schedule.windows[0].cron: \"0 9-16 * * 1-5 *\" has 6 fields",
        ),
        (
            "unknown-time-zone.yaml",
            "spec.schedule.windows[0].timeZone: \"Europe/Berln\" is not a known IANA time zone",
        ),
        ("bad-duration.yaml", "spec.steps[1].pause.duration"),
        (
            "decreasing-weights.yaml",
            "spec.steps[1].weight: weights must not decrease",
        ),
        ("last-step-not-100.yaml", "the last weight step must be 100"),
        ("typo-field.yaml", "spec.steps[0].weigth: unknown field `weigth`"),
        (
            "unknown-hook-type.yaml",
            "spec.webhooks[0].type: unknown variant `before-rollout`",
        ),
        (
            "unknown-event.yaml",
            "spec.notifications[0].events[1]: unknown event \"RoledBack\"",
        ),
        (
            "weight-and-pause.yaml",
            "spec.steps[0]: a step has exactly one of weight or pause",
        ),
    ];
    for (file, message) in expected {
        let lines: Vec<&str> = out.lines().filter(|l| l.contains(file)).collect();
        assert_eq!(lines.len(), 1, "{file}: want one error line, got {lines:?}\n{out}");
        assert!(lines[0].contains(message), "{file}: want {message:?} in {:?}", lines[0]);
    }
}

#[test]
fn validate_prints_the_next_three_openings_of_each_window() {
    let (ok, out) = validate(&repo().join("policies/schedule"));
    assert!(ok, "{out}");
    for (i, header) in [
        "spec.schedule.windows[0] \"0 9-16 * * 1-5\" for 1h (Europe/Berlin) opens next at:",
        "spec.schedule.windows[1] \"0 22 * * 1-4\" for 4h (America/New_York) opens next at:",
    ]
    .iter()
    .enumerate()
    {
        let lines: Vec<&str> = out.lines().collect();
        let at = lines
            .iter()
            .position(|l| l.contains(header))
            .unwrap_or_else(|| panic!("window {i}: no {header:?} in\n{out}"));
        let zone = if i == 0 { "Europe/Berlin" } else { "America/New_York" };
        let openings = &lines[at + 1..at + 4];
        for line in openings {
            assert!(
                line.contains(&format!("({zone}) = ")) && line.ends_with('Z'),
                "{line:?}\n{out}"
            );
        }
    }
}
