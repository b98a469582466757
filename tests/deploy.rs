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
    // Template lines (the chart's extra mounts and volumes) are the chart's own.
    let section = |t: &str, from: &str, to: &str| {
        let a = t.find(from).unwrap();
        let b = a + t[a..].find(to).unwrap();
        t[a..b].lines().filter(|l| !l.contains("{{")).collect::<Vec<_>>().join("\n")
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

/// The chart as helm renders it: lint clean, and its objects valid against the Kubernetes
/// schemas as strictly as the plain manifests, with the defaults and with every extra value.
#[test]
fn the_chart_lints_and_renders_objects_the_schemas_accept() {
    let helm = std::env::var_os("GUARD_HELM")
        .map(PathBuf::from)
        .unwrap_or(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/tools/helm"));
    let chart = deploy().join("chart/notebook-guard");
    let run = |cmd: &mut std::process::Command| {
        let out = cmd.output().expect("helm (cargo xtask test fetches it into target/tools)");
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success(), "{text}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    run(std::process::Command::new(&helm).args(["lint", "--strict"]).arg(&chart));
    let dir = guard_tests::TempDir::new("chart").unwrap();
    let extra = dir.0.join("extra.yaml");
    std::fs::write(
        &extra,
        r#"image: {repository: registry.example.org/team/notebook-guard, tag: "v1"}
imagePullSecrets: [{name: regcred}]
nodeSelector: {hub.jupyter.org/node-purpose: user}
affinity:
  nodeAffinity:
    requiredDuringSchedulingIgnoredDuringExecution:
      nodeSelectorTerms: [{matchExpressions: [{key: kubernetes.io/os, operator: In, values: [linux]}]}]
priorityClassName: ""
podAnnotations: {prometheus.io/scrape: "true"}
extraArgs: ["--mode=enforce"]
extraEnv:
  - name: HEC_TOKEN
    valueFrom: {secretKeyRef: {name: splunk-hec, key: token}}
extraVolumes: [{name: syslog-ca, secret: {secretName: syslog-ca}}]
extraVolumeMounts: [{name: syslog-ca, mountPath: /etc/ng-ca, readOnly: true}]
"#,
    )
    .unwrap();
    let validate = guard_tests::test_python().parent().unwrap().join("kubernetes-validate");
    let mut daemonsets = Vec::new();
    for values in [None, Some(&extra)] {
        let mut cmd = std::process::Command::new(&helm);
        cmd.args(["template", "ng"]).arg(&chart);
        if let Some(v) = values {
            cmd.arg("-f").arg(v);
        }
        let rendered = run(&mut cmd);
        let file = dir.0.join(format!("rendered-{}.yaml", daemonsets.len()));
        std::fs::write(&file, &rendered).unwrap();
        let text = run(std::process::Command::new(&validate).arg("--strict").arg(&file));
        assert!(text.contains("passed for resource daemonset/ng"), "{text}");
        let ds = serde_yaml_ng::Deserializer::from_str(&rendered)
            .map(|d| <serde_yaml_ng::Value as serde::Deserialize>::deserialize(d).unwrap())
            .find(|v| v["kind"] == "DaemonSet")
            .expect("a DaemonSet");
        daemonsets.push(ds);
    }
    let spec = |i: usize| daemonsets[i]["spec"]["template"]["spec"].clone();
    assert!(spec(0)["nodeSelector"].is_null(), "by default on every node: {:?}", spec(0)["nodeSelector"]);
    assert_eq!(spec(0)["priorityClassName"], "system-node-critical");
    let (s, c) = (spec(1), spec(1)["containers"][0].clone());
    assert_eq!(s["imagePullSecrets"][0]["name"], "regcred");
    assert_eq!(s["nodeSelector"]["hub.jupyter.org/node-purpose"], "user");
    assert!(s["affinity"]["nodeAffinity"].is_mapping());
    assert!(s["priorityClassName"].is_null(), "\"\" leaves it out");
    assert_eq!(daemonsets[1]["spec"]["template"]["metadata"]["annotations"]["prometheus.io/scrape"], "true");
    assert_eq!(c["image"], "registry.example.org/team/notebook-guard:v1");
    assert!(c["args"].as_sequence().unwrap().iter().any(|a| a == "--mode=enforce"));
    assert!(c["env"].as_sequence().unwrap().iter().any(|e| e["name"] == "HEC_TOKEN"));
    assert!(c["volumeMounts"].as_sequence().unwrap().iter().any(|m| m["mountPath"] == "/etc/ng-ca"));
    assert!(s["volumes"].as_sequence().unwrap().iter().any(|v| v["secret"]["secretName"] == "syslog-ca"));
}
