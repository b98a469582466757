use super::*;

#[test]
fn a_last_double_star_stands_for_any_further_arguments() {
    let m = ArgMatcher::new(&Some(vec![vec!["python3".into(), REST_ARGS.into()]]));
    let a = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    assert!(m.matches(&a(&["python3", "/home/u/tool.py"])));
    assert!(m.matches(&a(&["python3", "/home/u/tool.py", "-v", "x"])));
    assert!(m.matches(&a(&["python3"])), "none further is any too");
    assert!(!m.matches(&a(&["bash", "-c", "id"])));
    let e = Policy::from_str("p.yaml", "helpers:\n  - name: x\n    paths: [/bin/x]\n    args: [[\"**\", a]]\n")
        .unwrap_err();
    assert_eq!(e.key, "helpers[0].args[0][0]", "{e}");
}

#[test]
fn embedded_default_is_valid_and_complete() {
    let p = Policy::default_policy();
    assert_eq!(p.mode, Mode::Monitor);
    assert!(p.helpers.iter().any(|h| h.name == "platform-uname"));
    assert!(p.shells.contains("bash") && p.network_tools.contains("curl"));
    assert!(!p.allowances.terminals && p.allowances.pip_magic);
}

#[test]
fn partial_file_overlays_the_default_by_section() {
    let p = Policy::from_str("t.yaml", "mode: enforce\nallowances: {terminals: true}\n").unwrap();
    assert_eq!(p.mode, Mode::Enforce);
    assert!(p.allowances.terminals && p.allowances.pip_magic);
    assert_eq!(p.helpers, Policy::default_policy().helpers);
}

#[test]
fn unknown_key_is_an_error_with_location_and_key() {
    let e = Policy::from_str("p.yaml", "mode: monitor\nallowances:\n  terminal: true\n").unwrap_err();
    assert_eq!((e.origin.as_str(), e.line, e.column), ("p.yaml", Some(3), Some(3)));
    assert_eq!(e.key, "allowances.terminal");
    assert!(e.message.contains("unknown field `terminal`"), "{e}");
    assert!(e.to_string().starts_with("p.yaml:3:3: allowances.terminal: unknown field `terminal`"), "{e}");

    let e = Policy::from_str("p.yaml", "modes: enforce\n").unwrap_err();
    assert_eq!(e.line, Some(1));
    assert!(e.message.contains("unknown field `modes`"), "{e}");
}

#[test]
fn bad_values_name_the_key() {
    let e = Policy::from_str("p.yaml", "mode: enforcing\n").unwrap_err();
    assert_eq!(e.key, "mode");
    assert_eq!(e.line, Some(1));
    let e =
        Policy::from_str("p.yaml", "helpers:\n  - name: x\n    paths: [/bin/x]\n    parent: kernel0\n").unwrap_err();
    assert_eq!(e.key, "helpers[0].parent");
    assert_eq!(e.line, Some(4));
    let e = Policy::from_str("p.yaml", "rules:\n  disabled: [notebook.nope]\n").unwrap_err();
    assert_eq!((e.key.as_str(), e.line), ("rules.disabled[0]", Some(2)));
    let e =
        Policy::from_str("p.yaml", "rules:\n  disabled: [notebook.package_manager, guard.events_lost]\n").unwrap_err();
    assert_eq!(e.key, "rules.disabled[1]");
    assert!(e.to_string().contains("always goes out"), "{e}");
    let e = Policy::from_str("p.yaml", "python:\n  interpreters: [python3]\n").unwrap_err();
    assert_eq!(e.key, "python.interpreters[0]");
    let e = Policy::from_str("p.yaml", "overrides:\n  - name: o\n    match: {}\n").unwrap_err();
    assert_eq!(e.key, "overrides[0].match");
    let e = Policy::from_str("p.yaml", "outputs: [\"carrier-pigeon://x\"]\n").unwrap_err();
    assert_eq!(e.key, "outputs[0]");
}

#[test]
fn overrides_and_mode_flag() {
    let p = Policy::from_str(
        "p.yaml",
        "overrides:\n  - name: prod\n    match: {namespaces: [prod], labels: {tier: gold}}\n    mode: enforce\n    allowances: {terminals: true}\n",
    )
    .unwrap();
    let mut a = Attribution {
        user: Some("alice".into()),
        namespace: Some("prod".into()),
        labels: [("tier".to_string(), "gold".to_string())].into(),
        ..Attribution::new(crate::discovery::attribution::Source::Kubernetes, "/".into())
    };
    assert_eq!(
        p.effective(Some(&a), None),
        Effective {
            mode: Mode::Enforce,
            allowances: Allowances { terminals: true, pip_magic: true },
            egress_policy: 1,
            seccomp_profile: 0,
        }
    );
    assert_eq!(p.effective(Some(&a), Some(Mode::Monitor)).mode, Mode::Monitor);
    a.labels.clear();
    assert_eq!(p.effective(Some(&a), None).mode, Mode::Monitor);
    assert!(p.any_enforce(None));
    assert!(!p.any_enforce(Some(Mode::Monitor)));
}

#[test]
fn overrides_can_carry_their_own_egress_policy() {
    let p = Policy::from_str(
        "p.yaml",
        "overrides:\n  - name: db\n    match: {labels: {team: data}}\n    egress: {privateIPs: true}\n  - name: other\n    match: {users: [bob]}\n    mode: enforce\n",
    )
    .unwrap();
    let ids: Vec<u32> = p.egress_policies().iter().map(|(id, _)| *id).collect();
    assert_eq!(ids, vec![1, 2]);
    let mut a = Attribution {
        user: Some("bob".into()),
        namespace: Some("ns".into()),
        labels: [("team".to_string(), "data".to_string())].into(),
        ..Attribution::new(crate::discovery::attribution::Source::Kubernetes, "/".into())
    };
    assert_eq!(p.effective(Some(&a), None).egress_policy, 2);
    a.labels.clear();
    assert_eq!(p.effective(Some(&a), None).egress_policy, 1, "bob's override has no egress section");
    let e = Policy::from_str("p.yaml", "egress:\n  privateIps: true\n").unwrap_err();
    assert_eq!((e.key.as_str(), e.line), ("egress.privateIps", Some(2)));
}

#[test]
fn helper_argument_patterns() {
    let m = ArgMatcher::new(&Some(vec![vec!["-p".into()], vec![]]));
    assert!(m.matches(&["-p".into()]) && m.matches(&[]));
    assert!(!m.matches(&["-p".into(), "x".into()]) && !m.matches(&["-a".into()]));
    let m = ArgMatcher::new(&Some(vec![vec!["-Wl,-t".into(), "-o".into(), "*".into(), "-l*".into()]]));
    assert!(m.matches(&["-Wl,-t".into(), "-o".into(), "/tmp/tmpab".into(), "-lc".into()]));
    assert!(ArgMatcher::new(&None).matches(&["anything".into()]));
}

#[test]
fn seccomp_profiles_are_read_checked_and_assigned_by_override() {
    let dir = std::env::temp_dir().join(format!("nbg-policy-sc-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let good = dir.join("good.json");
    std::fs::write(&good, r#"{"defaultAction": "SCMP_ACT_ERRNO", "architectures": ["SCMP_ARCH_X86_64"], "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ALLOW"}]}"#).unwrap();
    let bad = dir.join("bad.json");
    std::fs::write(
        &bad,
        r#"{"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"names": ["reed"], "action": "SCMP_ACT_ALLOW"}]}"#,
    )
    .unwrap();
    let text =
        format!("overrides:\n  - name: ds\n    match: {{users: [alice]}}\n    seccomp_profile: {}\n", good.display());
    let p = Policy::from_str("p.yaml", &text).unwrap();
    let alice = Attribution {
        user: Some("alice".into()),
        ..Attribution::new(crate::discovery::attribution::Source::Tljh, "/x".into())
    };
    let bob = Attribution { user: Some("bob".into()), ..alice.clone() };
    let id = p.effective(Some(&alice), None).seccomp_profile;
    let (path, profile) = p.seccomp_profile_by_id(id).unwrap();
    assert_eq!(path, good.display().to_string());
    assert_eq!(profile.syscalls[0].names, ["read"]);
    assert_eq!(p.effective(Some(&bob), None).seccomp_profile, 0, "no global profile");

    let e = Policy::from_str("p.yaml", &text.replace("good.json", "bad.json")).unwrap_err();
    assert_eq!((e.key.as_str(), e.line), ("overrides[0].seccomp_profile", Some(4)), "{e}");
    assert!(e.message.contains("reed"), "{e}");
    let e = Policy::from_str("p.yaml", "seccomp_profile: profiles/x.json\n").unwrap_err();
    assert_eq!(e.key, "seccomp_profile");
    let e = Policy::from_str("p.yaml", &format!("seccomp_profile: {}/missing.json\n", dir.display())).unwrap_err();
    assert!(e.message.contains("missing.json"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}
