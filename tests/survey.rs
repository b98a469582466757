//! The library survey: real packages (from PyPI and Debian, installed by `cargo xtask test` in
//! the hub venv and on the system) doing their ordinary work in a real notebook — a Jupyter
//! server in a TLJH-shaped unit, running as uid 1000, whose sessions API starts the kernel —
//! under the default policy. Every program they run is a helper (by name and location class)
//! or Python, so nothing alerts and, under enforcement, nothing is killed; the attack at the
//! end still is. The test prints a table: library, programs run, alerts.
//!
//! Not surveyed here: matplotlib's `usetex` (TeX is not installed here); the R kernel's start,
//! cell and stop are `tests/kernels.rs`.

use std::{collections::BTreeSet, fs, os::unix::fs::PermissionsExt, path::Path, time::Duration};

use guard_tests::{
    pod::open_session,
    unit::{hub_env, jupyter_server, unit_policy, Unit, NB_UID},
    *,
};
use serde_json::Value;

const TOKEN: &str = "survey-server-token-7d1e";

/// (library, cell). Each cell prints `ok` last when the library did its work.
const ITEMS: &[(&str, &str)] = &[
    (
        "joblib/loky physical cores",
        "from joblib import cpu_count\nprint('ok' if cpu_count(only_physical_cores=True) >= 1 else 'no')",
    ),
    (
        "GitPython",
        "import git, os, tempfile\nd = tempfile.mkdtemp()\nr = git.Repo.init(d)\n\
         with r.config_writer() as c:\n    c.set_value('user', 'name', 'n').set_value('user', 'email', 'n@example.org')\n\
         open(os.path.join(d, 'a.txt'), 'w').write('x')\nr.git.add('a.txt')\nr.git.commit('-m', 'first')\n\
         print('ok' if 'first' in r.git.log('--oneline') else 'no')",
    ),
    (
        "matplotlib (font cache, savefig)",
        "import matplotlib\nmatplotlib.use('Agg')\nimport matplotlib.pyplot as plt, tempfile, os\n\
         plt.plot([1, 2, 3])\np = os.path.join(tempfile.mkdtemp(), 'f.png')\nplt.savefig(p)\n\
         print('ok' if os.path.getsize(p) > 0 else 'no')",
    ),
    (
        "nbconvert via pandoc",
        "from nbconvert.utils.pandoc import pandoc\nout = pandoc('# Title', 'markdown', 'rst')\n\
         print('ok' if 'Title' in out else 'no')",
    ),
    (
        "imageio-ffmpeg (ffmpeg inside site-packages)",
        "import imageio_ffmpeg\nprint('ok' if imageio_ffmpeg.get_ffmpeg_version() else 'no')",
    ),
    (
        "graphviz dot",
        "import graphviz\nsvg = graphviz.Digraph(body=['a -> b']).pipe(format='svg')\nprint('ok' if b'<svg' in svg else 'no')",
    ),
    (
        "%pip install of an sdist (C compiler)",
        "import os, sys\ntarget = os.path.expanduser('~/pylib')\n\
         get_ipython().run_line_magic('pip', f'install --quiet --no-build-isolation --no-index --no-deps --target {target} SDIST')\n\
         sys.path.insert(0, target)\nimport survey_ext\nprint('ok' if survey_ext.answer() == 42 else 'no')",
    ),
    (
        "multiprocessing spawn and forkserver",
        "import multiprocessing as mp\nres = []\nfor m in ('spawn', 'forkserver'):\n\
         \x20   with mp.get_context(m).Pool(2) as p:\n        res.append(p.map(abs, [-1, -2]))\n\
         print('ok' if res == [[1, 2], [1, 2]] else 'no')",
    ),
    (
        "dask LocalCluster",
        "from dask.distributed import LocalCluster, Client\n\
         with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None) as c, Client(c) as cl:\n\
         \x20   v = cl.submit(sum, [1, 2]).result()\nprint('ok' if v == 3 else 'no')",
    ),
    (
        "a user's #!/usr/bin/env python3 script",
        "import os, subprocess, tempfile\np = os.path.join(tempfile.mkdtemp(), 'tool.py')\n\
         open(p, 'w').write('#!/usr/bin/env python3\\nprint(6 * 7)\\n')\nos.chmod(p, 0o755)\n\
         print('ok' if subprocess.run([p], capture_output=True, text=True).stdout.strip() == '42' else 'no')",
    ),
];

/// The attack after the survey: it must still alert, and be killed under enforcement.
const ATTACK: (&str, &str) = ("attack: os.system", "import os\nprint('status', os.system('id -u'))");

/// Marks where an item starts in the exec feed: Python running Python, which raises nothing.
fn marked(name: &str, code: &str) -> String {
    format!("import subprocess as _s, sys as _y\n_s.run([_y.executable, '-c', 'pass', 'survey-item', {name:?}], check=True)\n{code}")
}

/// A package built from source: a C extension, as an sdist tarball in `dir`.
fn sdist(dir: &Path) -> std::path::PathBuf {
    let src = dir.join("survey_ext-0.1");
    fs::create_dir_all(&src).unwrap();
    fs::write(
        src.join("setup.py"),
        "from setuptools import setup, Extension\n\
         setup(name='survey_ext', version='0.1', ext_modules=[Extension('survey_ext', ['survey_ext.c'])])\n",
    )
    .unwrap();
    fs::write(
        src.join("survey_ext.c"),
        "#include <Python.h>\n\
         static PyObject *answer(PyObject *s, PyObject *a) { return PyLong_FromLong(42); }\n\
         static PyMethodDef m[] = {{\"answer\", answer, METH_NOARGS, \"\"}, {0}};\n\
         static struct PyModuleDef d = {PyModuleDef_HEAD_INIT, \"survey_ext\", \"\", -1, m};\n\
         PyMODINIT_FUNC PyInit_survey_ext(void) { return PyModule_Create(&d); }\n",
    )
    .unwrap();
    let tar = dir.join("survey_ext-0.1.tar.gz");
    let ok = std::process::Command::new("tar")
        .arg("czf")
        .arg(&tar)
        .arg("-C")
        .arg(dir)
        .arg("survey_ext-0.1")
        .status()
        .unwrap()
        .success();
    assert!(ok, "tar");
    fs::set_permissions(&tar, fs::Permissions::from_mode(0o644)).unwrap();
    tar
}

/// One row per item: (library, programs its cell ran, its alerts).
fn rows<'a>(execs: &[Value], alerts: &'a [Value], user: &str) -> Vec<(String, BTreeSet<String>, Vec<&'a Value>)> {
    let unit = format!("jupyter-{user}.service");
    let mut rows: Vec<(String, BTreeSet<String>, BTreeSet<u64>)> = Vec::new();
    for e in execs.iter().filter(|e| e["cgroup"].as_str().is_some_and(|c| c.contains(&unit))) {
        let argv: Vec<&str> =
            e["argv"].as_array().map(|a| a.iter().filter_map(Value::as_str).collect()).unwrap_or_default();
        if argv.get(3) == Some(&"survey-item") {
            rows.push((argv.get(4).unwrap_or(&"?").to_string(), BTreeSet::new(), BTreeSet::new()));
            continue;
        }
        let Some(row) = rows.last_mut() else { continue };
        let prog = e["filename"].as_str().unwrap_or("?").rsplit('/').next().unwrap_or("?").to_string();
        row.1.insert(prog);
        row.2.insert(e["pid"].as_u64().unwrap_or(0));
    }
    rows.into_iter()
        .map(|(name, progs, pids)| {
            let mine = alerts
                .iter()
                .filter(|a| a["rule"].as_str().is_some_and(|r| r.starts_with("notebook.")))
                .filter(|a| field(a, "jupyterhub.user") == user)
                .filter(|a| field(a, "proc.pid").as_u64().is_some_and(|p| pids.contains(&p)))
                .collect();
            (name, progs, mine)
        })
        .collect()
}

#[test]
fn real_libraries_doing_their_ordinary_work_raise_nothing_and_are_not_killed() {
    privileged!();
    let net = TestNet::new().unwrap();
    let work = TempDir::new("survey").unwrap();
    let tarball = sdist(&work.0);
    let (enforced, monitored) = (Unit::new_user(), Unit::new_user());
    // The hub venv's interpreter path makes its bin dir and site-packages location classes.
    let mut interpreters = guard::policy::Policy::default_policy().python.interpreters;
    interpreters.push(format!("{}/bin/python3*", hub_env().display()));
    let policy = format!(
        "{}python:\n  interpreters: {}\n",
        unit_policy(Some(&enforced)),
        serde_json::to_string(&interpreters).unwrap()
    );
    let g = GuardProcess::start(&policy, &["--events"]).unwrap();
    let cells: Vec<String> = ITEMS
        .iter()
        .chain([&ATTACK])
        .map(|(n, c)| marked(n, &c.replace("SDIST", &tarball.display().to_string())))
        .collect();
    let mut results = Vec::new();
    for (user, port) in [(&enforced, 8894u16), (&monitored, 8895)] {
        let dir = TempDir::new("survey-server").unwrap();
        let unit = jupyter_server(user, port, TOKEN, &net.notebook, &dir);
        let spec = serde_json::json!({
            "url": format!("http://127.0.0.1:{port}"), "token": TOKEN, "notebook": "survey.ipynb",
            "cells": cells, "runtime_dir": dir.0.join("runtime"),
        });
        let (_, out) = open_session(&net.notebook, spec, &dir.0).unwrap_or_else(|e| panic!("{e:#}\n{}", unit.log()));
        results.push((user.clone(), out));
        drop(unit);
    }
    std::thread::sleep(Duration::from_millis(500));
    let log = g.log();
    let execs = g.exec_events();
    let alerts = g.stop().unwrap();

    for (user, out) in &results {
        let mode = if *user == enforced { "enforce" } else { "monitor" };
        let rows = rows(&execs, &alerts, user);
        println!("\nsurvey, {mode} mode ({user}):");
        println!("{:<46} | {:<60} | alerts", "library", "programs run");
        for (name, progs, mine) in &rows {
            let progs: Vec<&str> = progs.iter().map(String::as_str).collect();
            println!("{name:<46} | {:<60} | {}", progs.join(" "), mine.len());
        }
        // Every library did its work, in both modes.
        for (i, (name, _)) in ITEMS.iter().enumerate() {
            let last = out[i].stdout.trim().lines().last().unwrap_or("");
            assert_eq!(last, "ok", "{mode}: {name}: {:?}\n{log}", out[i]);
        }
        assert_eq!(rows.len(), ITEMS.len() + 1, "{mode}: an item's marker is missing from the feed: {rows:?}");
        for (name, progs, mine) in &rows[..ITEMS.len()] {
            let said: Vec<String> = mine
                .iter()
                .map(|a| format!("{} {} (parent {})", a["rule"], field(a, "proc.cmdline"), field(a, "proc.pcmdline")))
                .collect();
            assert!(mine.is_empty(), "{mode}: {name} alerted:\n{}", said.join("\n"));
            assert!(!progs.is_empty(), "{mode}: {name} ran no program (the survey would prove nothing)");
        }
        // The attack still alerts, and is killed under enforcement.
        let (_, _, attack) = &rows[ITEMS.len()];
        assert!(!attack.is_empty(), "{mode}: os.system raised nothing");
        let action = if mode == "enforce" { "killed" } else { "alert" };
        assert!(attack.iter().all(|a| field(a, "guard.action") == action), "{mode}: {attack:#?}");
        // `id -u` prints the notebook user's uid from a child process; ipykernel forwards that
        // fd output as it comes, so it can land inside the cell's own `status N` line.
        let flat = out[ITEMS.len()].stdout.replace('\n', "").replace(&NB_UID.to_string(), "");
        assert_eq!(flat.contains("status 0"), mode == "monitor", "{mode}: {:?}", out[ITEMS.len()].stdout);
    }
}
