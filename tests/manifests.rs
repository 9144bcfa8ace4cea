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
        ("rolloutpolicy", canaryd::resources::crd::crd_yaml()),
        ("metricprovider", canaryd::resources::crd::provider_crd_yaml()),
        ("notificationtarget", canaryd::resources::crd::target_crd_yaml()),
        ("rolloutcommand", canaryd::resources::crd::command_crd_yaml()),
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

/// README.md and every docs/*.md, with their text.
fn doc_pages() -> Vec<(PathBuf, String)> {
    let mut pages = vec![repo().join("README.md"), repo().join("CHANGELOG.md")];
    let mut docs: Vec<PathBuf> = std::fs::read_dir(repo().join("docs"))
        .expect("docs/ exists")
        .map(|e| e.expect("directory entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    docs.sort();
    pages.extend(docs);
    pages
        .into_iter()
        .map(|p| {
            let text = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            (p, text)
        })
        .collect()
}

/// Every ```yaml block of a Markdown text, dedented to its fence, with the line it starts on.
fn yaml_blocks(markdown: &str) -> Vec<(usize, String)> {
    let mut blocks = Vec::new();
    let mut open: Option<(usize, usize, String)> = None;
    for (n, line) in markdown.lines().enumerate() {
        let trimmed = line.trim_start();
        let indent = line.len() - trimmed.len();
        match &mut open {
            None if trimmed == "```yaml" => open = Some((n + 1, indent, String::new())),
            Some((start, _, text)) if trimmed == "```" => {
                blocks.push((*start, std::mem::take(text)));
                open = None;
            }
            Some((_, indent, text)) => {
                text.push_str(line.get(*indent..).unwrap_or(""));
                text.push('\n');
            }
            None => {}
        }
    }
    blocks
}

/// A RolloutPolicy the `spec:` fragments of the docs are merged into, key by key.
const BASE_POLICY: &str = r#"{"apiVersion": "canaryd.io/v1alpha1", "kind": "RolloutPolicy",
  "metadata": {"name": "docs-example", "namespace": "dev"},
  "spec": {"service": "istio-test", "virtualServices": [{"name": "istio-test-vs"}],
    "destinationRule": "istio-test-dr", "stable": {"subset": "v1", "deployment": "istio-test-v1"},
    "canary": {"subset": "v2", "deployment": "istio-test-v2"}, "steps": [{"weight": 10}, {"weight": 100}]}}"#;

/// The problems of one YAML example: canaryd kinds are decoded with the daemon's types (unknown fields
/// are errors) and validated; a bare `spec:` fragment is checked inside a RolloutPolicy; anything
/// else must parse. Returns how many documents were checked as canaryd objects.
fn check_yaml_example(text: &str) -> Result<usize, String> {
    let docs: Vec<serde_json::Value> = serde_saphyr::from_multiple(text).map_err(|e| format!("not YAML: {e}"))?;
    let mut checked = 0;
    for doc in docs {
        let kind = doc.get("kind").and_then(|k| k.as_str());
        let policy = match kind {
            Some("RolloutPolicy" | "MetricProvider" | "NotificationTarget") => doc,
            Some("RolloutCommand") => {
                let spec = doc.get("spec").cloned().unwrap_or_default();
                serde_path_to_error::deserialize::<_, canaryd::resources::command::RolloutCommandSpec>(spec)
                    .map_err(|e| format!("RolloutCommand spec.{}: {}", e.path(), e.inner()))?;
                checked += 1;
                continue;
            }
            Some(_) => continue,
            None => {
                let Some(fragment) = doc.as_object().filter(|m| m.len() == 1).and_then(|m| m.get("spec")) else {
                    continue;
                };
                let mut base: serde_json::Value = serde_json::from_str(BASE_POLICY).expect("base policy");
                for (key, value) in fragment.as_object().ok_or("spec is not a mapping")? {
                    base["spec"][key] = value.clone();
                }
                base
            }
        };
        let yaml = serde_json::to_string(&policy).expect("JSON is YAML");
        let (_, errors) = canaryd::cli::validate::validate_text(&yaml);
        if !errors.is_empty() {
            return Err(errors.join("; "));
        }
        checked += 1;
    }
    Ok(checked)
}

#[test]
fn every_yaml_example_in_the_docs_decodes() {
    let mut checked = 0;
    let mut failures = Vec::new();
    for (path, text) in doc_pages() {
        for (line, block) in yaml_blocks(&text) {
            match check_yaml_example(&block) {
                Ok(n) => checked += n,
                Err(e) => failures.push(format!("{}:{line}: {e}", path.display())),
            }
        }
    }
    assert!(failures.is_empty(), "broken YAML examples:\n{}", failures.join("\n"));
    assert!(checked >= 12, "only {checked} canaryd examples found in the docs");
}

#[test]
fn the_docs_example_check_catches_a_broken_example() {
    let page = "text\n\n  ```yaml\n  spec:\n    steps: [{weigth: 10}, {weight: 100}]\n  ```\n";
    let blocks = yaml_blocks(page);
    assert_eq!(blocks.len(), 1, "{blocks:?}");
    let e = check_yaml_example(&blocks[0].1).expect_err("a typo must fail");
    assert!(e.contains("unknown field `weigth`"), "{e}");
    let target = "kind: NotificationTarget\napiVersion: canaryd.io/v1alpha1\nmetadata: {name: t}\n\
                  spec: {namespaceSelector: {}, slack: {chanel: C1}}\n";
    let e = check_yaml_example(target).expect_err("a typo must fail");
    assert!(e.contains("chanel"), "{e}");
    let command =
        "kind: RolloutCommand\nspec: {policy: p, command: promote, canary: h, step: 1, requestedBy: a, extra: 1}\n";
    let e = check_yaml_example(command).expect_err("an unknown field must fail");
    assert!(e.contains("extra"), "{e}");
}

#[test]
fn the_readme_is_short_and_links_every_doc() {
    let readme = std::fs::read_to_string(repo().join("README.md")).expect("README.md");
    let lines = readme.lines().count();
    assert!(
        lines < 250,
        "README.md has {lines} lines; keep it under 250 and move reference to docs/"
    );
    let ci = std::fs::read_to_string(repo().join(".ci/run")).expect(".ci/run");
    let command = ci
        .lines()
        .find_map(|l| l.strip_prefix("exec "))
        .expect(".ci/run execs the test command");
    assert!(
        readme.contains(&format!("\n{command}   #")),
        "README.md must show the test command .ci/run calls: {command}"
    );
    for (path, _) in doc_pages().iter().skip(2) {
        let name = path.file_name().expect("file name").to_string_lossy();
        assert!(
            readme.contains(&format!("](docs/{name})")),
            "docs/{name} is not linked from README.md"
        );
    }
    for (path, text) in doc_pages() {
        let first = text.lines().next().unwrap_or("");
        let intro = text.lines().nth(2).unwrap_or("");
        assert!(
            first.starts_with("# ") && !intro.is_empty() && !intro.starts_with('#'),
            "{}: open with a `# Title` and a line saying what it covers",
            path.display()
        );
    }
}

/// GitHub's anchor for a heading: lower case, punctuation dropped, spaces as dashes.
fn anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

fn anchors(markdown: &str) -> Vec<String> {
    let mut fence = false;
    let mut out = Vec::new();
    for line in markdown.lines() {
        if line.trim_start().starts_with("```") {
            fence = !fence;
        } else if !fence && line.starts_with('#') {
            out.push(anchor(line.trim_start_matches('#')));
        }
    }
    out
}

#[test]
fn every_link_between_the_docs_resolves() {
    let pages = doc_pages();
    let mut broken = Vec::new();
    for (path, text) in &pages {
        for target in text.split("](").skip(1).filter_map(|s| s.split(')').next()) {
            if target.starts_with("http") || target.starts_with('<') {
                continue;
            }
            let (file, fragment) = target.split_once('#').unwrap_or((target, ""));
            let dest = if file.is_empty() {
                path.clone()
            } else {
                path.parent().expect("parent").join(file)
            };
            let Ok(dest_text) = std::fs::read_to_string(&dest) else {
                if !dest.is_dir() {
                    broken.push(format!("{}: {target}: no such file", path.display()));
                }
                continue;
            };
            if !fragment.is_empty() && !anchors(&dest_text).iter().any(|a| a == fragment) {
                broken.push(format!("{}: {target}: no such heading", path.display()));
            }
        }
    }
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}

/// Every repository path the README and docs/ name (`src/…`, `tests/…`, `deploy/…`, …) exists, so the
/// docs follow the code when files move. CHANGELOG.md is history and keeps the paths of its time.
#[test]
fn every_path_the_docs_name_exists() {
    const ROOTS: [&str; 6] = ["src/", "tests/", "examples/", "scripts/", "deploy/", "policies/"];
    let mut missing = Vec::new();
    for (path, text) in doc_pages().into_iter().filter(|(p, _)| !p.ends_with("CHANGELOG.md")) {
        for root in ROOTS {
            for (at, _) in text.match_indices(root) {
                let before = text[..at].chars().next_back().unwrap_or(' ');
                if before.is_alphanumeric() || "/.-_~".contains(before) {
                    continue;
                }
                let named: String = text[at..]
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || "_./-".contains(*c))
                    .collect();
                let named = named.trim_end_matches('.');
                if !repo().join(named).exists() {
                    missing.push(format!("{}: {named}", path.display()));
                }
            }
        }
    }
    assert!(
        missing.is_empty(),
        "paths the docs name that do not exist:\n{}",
        missing.join("\n")
    );
}
