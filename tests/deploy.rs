//! The deployment: plain manifests valid against the real Kubernetes schemas, the policy they
//! ship valid for the agent, and the Helm chart in step with them.

use std::path::PathBuf;

fn deploy() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

#[test]
fn manifests_pass_strict_kubernetes_schema_validation() {
    let python = guard_tests::test_python();
    let bin = python.parent().unwrap().join("kubernetes-validate");
    let out = std::process::Command::new(&bin)
        .arg("--strict")
        .arg(deploy().join("manifests/notebook-guard.yaml"))
        .output()
        .expect("kubernetes-validate (cargo xtask test installs it in target/pyenv)");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{text}");
    for kind in ["daemonset/notebook-guard", "clusterrole/notebook-guard", "service/notebook-guard-metrics"] {
        assert!(text.contains(&format!("passed for resource {kind}")), "{text}");
    }
}

#[test]
fn shipped_policies_are_valid() {
    let text = std::fs::read_to_string(deploy().join("manifests/notebook-guard.yaml")).unwrap();
    let mut found = 0;
    for doc in serde_yaml_ng::Deserializer::from_str(&text) {
        let v = <serde_yaml_ng::Value as serde::Deserialize>::deserialize(doc).unwrap();
        if v["kind"] == "ConfigMap" {
            let policy = v["data"]["policy.yaml"].as_str().unwrap();
            guard::policy::Policy::from_str("manifests ConfigMap", policy).unwrap();
            found += 1;
        }
    }
    assert_eq!(found, 1);
    let values: serde_yaml_ng::Value =
        serde_yaml_ng::from_str(&std::fs::read_to_string(deploy().join("chart/notebook-guard/values.yaml")).unwrap())
            .unwrap();
    guard::policy::Policy::from_str("chart values", values["policy"].as_str().unwrap()).unwrap();
}

#[test]
fn chart_grants_exactly_what_the_manifests_grant() {
    let manifest = std::fs::read_to_string(deploy().join("manifests/notebook-guard.yaml")).unwrap();
    let chart = std::fs::read_to_string(deploy().join("chart/notebook-guard/templates/daemonset.yaml")).unwrap();
    let section = |t: &str, from: &str, to: &str| {
        let a = t.find(from).unwrap();
        let b = a + t[a..].find(to).unwrap();
        t[a..b].to_string()
    };
    // The privileged parts are copied, not templated: they must not drift apart.
    assert_eq!(
        section(&manifest, "securityContext:", "volumeMounts:"),
        section(&chart, "securityContext:", "volumeMounts:")
    );
    assert_eq!(section(&manifest, "volumeMounts:", "volumes:"), section(&chart, "volumeMounts:", "volumes:"));
    assert!(manifest.contains("hostPID: true") && chart.contains("hostPID: true"));
    let privileged = |t: &str| t.lines().any(|l| l.trim() == "privileged: true");
    assert!(!privileged(&manifest) && !privileged(&chart));
}
