//! Firecracker's pre-boot API, for `ember --api-sock PATH` started with
//! nothing else: `PUT /boot-source`, `/machine-config`, `/drives/{id}`,
//! `/network-interfaces/{id}` build a `VmConfig`, and `PUT /actions
//! {"action_type":"InstanceStart"}` starts it; or `PUT /snapshot/load`
//! restores a snapshot. The VM is started by the process's main thread
//! (which then owns and waits on it): this thread asks it through a
//! channel and answers the client with its result. From then on the
//! running VM's endpoints (routes.rs) are served.

use std::path::PathBuf;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};

use serde::Deserialize;

use super::routes::{parse, route, InstanceInfo, MachineConfig, Reply};
use super::server::Handler;
use crate::config::{
    ConsoleMode, DiskConfig, NetConfig, VmConfig, DEFAULT_CMDLINE, DEFAULT_MEMORY,
};
use crate::control::VmControl;
use crate::restore::RestoreConfig;

/// What the main thread is asked to start.
#[derive(Debug)]
pub enum Launch {
    Boot(Box<VmConfig>),
    Restore(Box<RestoreConfig>),
}

/// A start request, and where its result goes: the running VM's control
/// handle, or the error's whole message.
pub struct LaunchRequest {
    pub launch: Launch,
    pub reply: SyncSender<Result<VmControl, String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BootSource {
    kernel_image_path: PathBuf,
    #[serde(default)]
    boot_args: Option<String>,
    #[serde(default)]
    initrd_path: Option<PathBuf>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MachineConfigIn {
    vcpu_count: u8,
    mem_size_mib: u64,
    #[serde(default)]
    smt: bool,
    #[serde(default)]
    track_dirty_pages: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Drive {
    drive_id: String,
    path_on_host: PathBuf,
    is_root_device: bool,
    #[serde(default)]
    is_read_only: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NetworkInterface {
    iface_id: String,
    host_dev_name: String,
    #[serde(default)]
    guest_mac: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MemBackend {
    backend_type: MemBackendType,
    backend_path: PathBuf,
}

#[derive(Deserialize)]
enum MemBackendType {
    File,
    Uffd,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SnapshotLoad {
    snapshot_path: PathBuf,
    #[serde(default)]
    mem_backend: Option<MemBackend>,
    /// Firecracker's older spelling of a File backend.
    #[serde(default)]
    mem_file_path: Option<PathBuf>,
    #[serde(default)]
    enable_diff_snapshots: bool,
    #[serde(default)]
    resume_vm: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Action {
    action_type: String,
}

/// Serves the pre-boot endpoints until a VM runs, then the running ones.
pub struct PreBoot {
    id: String,
    boot: Option<BootSource>,
    cpus: u8,
    memory_mib: u64,
    /// In the order given; the root device goes first at the start.
    drives: Vec<Drive>,
    nets: Vec<NetworkInterface>,
    launcher: SyncSender<LaunchRequest>,
    running: Option<VmControl>,
    seccomp: bool,
}

impl PreBoot {
    /// The handler, and the receiving end the main thread waits on.
    /// `seccomp`: the VM it starts runs its threads under their filters.
    pub fn new(id: String, seccomp: bool) -> (Self, Receiver<LaunchRequest>) {
        let (launcher, requests) = sync_channel(0);
        let handler = Self {
            id,
            seccomp,
            boot: None,
            cpus: 1,
            memory_mib: DEFAULT_MEMORY >> 20,
            drives: Vec::new(),
            nets: Vec::new(),
            launcher,
            running: None,
        };
        (handler, requests)
    }

    fn config(&self) -> Result<VmConfig, Reply> {
        let boot = self.boot.as_ref().ok_or_else(|| {
            Reply::fault("InstanceStart: no boot source (PUT /boot-source first)")
        })?;
        let mut config = VmConfig::new(&boot.kernel_image_path);
        config.seccomp = self.seccomp;
        config.initrd = boot.initrd_path.clone();
        config.cmdline = boot
            .boot_args
            .clone()
            .unwrap_or_else(|| DEFAULT_CMDLINE.to_string());
        config.cpus = self.cpus;
        config.memory = self.memory_mib << 20;
        let root = self.drives.iter().filter(|d| d.is_root_device);
        let others = self.drives.iter().filter(|d| !d.is_root_device);
        config.disks = root
            .chain(others)
            .map(|d| DiskConfig {
                path: d.path_on_host.clone(),
                read_only: d.is_read_only,
            })
            .collect();
        if let Some(root) = self.drives.iter().find(|d| d.is_root_device) {
            // As Firecracker: the root device is /dev/vda.
            let mode = if root.is_read_only { "ro" } else { "rw" };
            config.cmdline = format!("{} root=/dev/vda {mode}", config.cmdline);
        }
        for n in &self.nets {
            let text = match &n.guest_mac {
                Some(mac) => format!("tap={},mac={mac}", n.host_dev_name),
                None => format!("tap={}", n.host_dev_name),
            };
            config.nets.push(
                NetConfig::parse(&text)
                    .map_err(|e| Reply::fault(format!("network interface {}: {e}", n.iface_id)))?,
            );
        }
        config.console = ConsoleMode::Terminal;
        config
            .validate()
            .map_err(|e| Reply::fault(format!("InstanceStart: {e}")))?;
        Ok(config)
    }

    /// Asks the main thread to start `launch`; 204 once the VM runs.
    fn launch(&mut self, launch: Launch) -> Reply {
        let (reply, result) = sync_channel(1);
        if self.launcher.send(LaunchRequest { launch, reply }).is_err() {
            return Reply::fault("Ember is shutting down");
        }
        match result.recv() {
            Ok(Ok(control)) => {
                self.running = Some(control);
                Reply::no_content()
            }
            Ok(Err(message)) => Reply::fault(message),
            Err(_) => Reply::fault("Ember is shutting down"),
        }
    }

    fn load(&mut self, body: &[u8]) -> Reply {
        let req = match parse::<SnapshotLoad>(body) {
            Ok(r) => r,
            Err(r) => return r,
        };
        if req.enable_diff_snapshots {
            return Reply::fault("enable_diff_snapshots: Ember makes Full snapshots only");
        }
        let memory = match (req.mem_backend, req.mem_file_path) {
            (Some(_), Some(_)) => {
                return Reply::fault("give mem_backend or mem_file_path, not both")
            }
            (
                Some(MemBackend {
                    backend_type: MemBackendType::Uffd,
                    ..
                }),
                None,
            ) => return Reply::fault("mem_backend Uffd: Ember maps the memory File only"),
            (Some(MemBackend { backend_path, .. }), None) => backend_path,
            (None, Some(path)) => path,
            (None, None) => return Reply::fault("missing field `mem_backend`"),
        };
        let mut config = RestoreConfig::new(req.snapshot_path, memory);
        config.seccomp = self.seccomp;
        config.resume = req.resume_vm;
        self.launch(Launch::Restore(Box::new(config)))
    }
}

impl Handler for PreBoot {
    fn handle(&mut self, method: &str, path: &str, body: &[u8]) -> Reply {
        if let Some(vm) = &self.running {
            return route(vm, &self.id, method, path, body);
        }
        let path_id = |prefix: &str| path.strip_prefix(prefix).filter(|id| !id.is_empty());
        match (method, path) {
            ("GET", "/") => Reply::json(
                200,
                &InstanceInfo {
                    app_name: "Ember",
                    id: &self.id,
                    state: "Not started",
                    vmm_version: env!("CARGO_PKG_VERSION"),
                },
            ),
            ("GET", "/machine-config") => Reply::json(
                200,
                &MachineConfig {
                    vcpu_count: self.cpus,
                    mem_size_mib: self.memory_mib,
                    smt: false,
                    track_dirty_pages: false,
                },
            ),
            ("PUT", "/boot-source") => match parse::<BootSource>(body) {
                Ok(b) => {
                    self.boot = Some(b);
                    Reply::no_content()
                }
                Err(r) => r,
            },
            ("PUT" | "PATCH", "/machine-config") => match parse::<MachineConfigIn>(body) {
                Ok(MachineConfigIn { smt: true, .. }) => {
                    Reply::fault("smt: Ember's vCPUs have no SMT siblings")
                }
                Ok(MachineConfigIn {
                    track_dirty_pages: true,
                    ..
                }) => Reply::fault("track_dirty_pages: Ember makes Full snapshots only"),
                Ok(m) if m.vcpu_count == 0 => Reply::fault("vcpu_count: must be at least 1"),
                Ok(m) if m.mem_size_mib == 0 || m.mem_size_mib > (1 << 24) => {
                    Reply::fault(format!("mem_size_mib {}: out of range", m.mem_size_mib))
                }
                Ok(m) => {
                    self.cpus = m.vcpu_count;
                    self.memory_mib = m.mem_size_mib;
                    Reply::no_content()
                }
                Err(r) => r,
            },
            ("PUT", _) if path_id("/drives/").is_some() => match parse::<Drive>(body) {
                Ok(d) if Some(d.drive_id.as_str()) != path_id("/drives/") => {
                    Reply::fault("drive_id: differs from the id in the path")
                }
                Ok(d)
                    if d.is_root_device
                        && self
                            .drives
                            .iter()
                            .any(|o| o.is_root_device && o.drive_id != d.drive_id) =>
                {
                    Reply::fault("is_root_device: another drive is the root device")
                }
                Ok(d) => {
                    match self.drives.iter_mut().find(|o| o.drive_id == d.drive_id) {
                        Some(old) => *old = d,
                        None => self.drives.push(d),
                    }
                    Reply::no_content()
                }
                Err(r) => r,
            },
            ("PUT", _) if path_id("/network-interfaces/").is_some() => {
                match parse::<NetworkInterface>(body) {
                    Ok(n) if Some(n.iface_id.as_str()) != path_id("/network-interfaces/") => {
                        Reply::fault("iface_id: differs from the id in the path")
                    }
                    Ok(n) => {
                        match self.nets.iter_mut().find(|o| o.iface_id == n.iface_id) {
                            Some(old) => *old = n,
                            None => self.nets.push(n),
                        }
                        Reply::no_content()
                    }
                    Err(r) => r,
                }
            }
            ("PUT", "/actions") => match parse::<Action>(body) {
                Ok(a) if a.action_type == "InstanceStart" => match self.config() {
                    Ok(config) => self.launch(Launch::Boot(Box::new(config))),
                    Err(r) => r,
                },
                Ok(a) => Reply::fault(format!(
                    "{}: the VM is not started yet (InstanceStart first)",
                    a.action_type
                )),
                Err(r) => r,
            },
            ("PUT", "/snapshot/load") => self.load(body),
            ("PATCH", "/vm") | ("PUT", "/snapshot/create") => {
                Reply::fault(format!("{method} {path}: the VM is not started yet"))
            }
            _ => Reply::fault(format!(
                "Invalid request method and/or path: {method} {path}"
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(h: &mut PreBoot, path: &str, body: &str) -> Reply {
        h.handle("PUT", path, body.as_bytes())
    }

    fn fault_of(r: &Reply) -> String {
        assert_eq!(r.status, 400, "{r:?}");
        let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
        v["fault_message"].as_str().unwrap().to_string()
    }

    /// Answers the next start request with `answer`; returns what it asked.
    fn starter(requests: Receiver<LaunchRequest>) -> std::thread::JoinHandle<Launch> {
        std::thread::spawn(move || {
            let r = requests.recv().unwrap();
            r.reply.send(Err("refused by the test".into())).unwrap();
            r.launch
        })
    }

    #[test]
    fn the_configuration_calls_make_a_vm_config() {
        let (mut h, requests) = PreBoot::new("t".into(), true);
        let info = h.handle("GET", "/", b"");
        assert!(info.body.contains(r#""state":"Not started""#), "{info:?}");
        let m = fault_of(&put(
            &mut h,
            "/actions",
            r#"{"action_type":"InstanceStart"}"#,
        ));
        assert!(m.contains("no boot source"), "{m}");
        for (path, body) in [
            (
                "/boot-source",
                r#"{"kernel_image_path":"/k","boot_args":"console=ttyS0 quiet","initrd_path":"/i"}"#,
            ),
            ("/machine-config", r#"{"vcpu_count":2,"mem_size_mib":512}"#),
            (
                "/drives/data",
                r#"{"drive_id":"data","path_on_host":"/d","is_root_device":false,"is_read_only":true}"#,
            ),
            (
                "/drives/root",
                r#"{"drive_id":"root","path_on_host":"/r","is_root_device":true,"is_read_only":false}"#,
            ),
            (
                "/network-interfaces/eth0",
                r#"{"iface_id":"eth0","host_dev_name":"tap7","guest_mac":"52:54:00:00:00:07"}"#,
            ),
        ] {
            assert_eq!(put(&mut h, path, body), Reply::no_content(), "{path}");
        }
        let conf = h.handle("GET", "/machine-config", b"");
        assert!(
            conf.body.contains(r#""vcpu_count":2,"mem_size_mib":512"#),
            "{conf:?}"
        );
        let asked = starter(requests);
        let m = fault_of(&put(
            &mut h,
            "/actions",
            r#"{"action_type":"InstanceStart"}"#,
        ));
        assert_eq!(m, "refused by the test");
        let Launch::Boot(c) = asked.join().unwrap() else {
            panic!("not a boot")
        };
        assert_eq!((c.cpus, c.memory), (2, 512 << 20));
        assert!(c.seccomp);
        assert_eq!(c.kernel, PathBuf::from("/k"));
        assert_eq!(c.initrd, Some(PathBuf::from("/i")));
        assert_eq!(c.cmdline, "console=ttyS0 quiet root=/dev/vda rw");
        let disks: Vec<_> = c
            .disks
            .iter()
            .map(|d| (d.path.clone(), d.read_only))
            .collect();
        assert_eq!(
            disks,
            [(PathBuf::from("/r"), false), (PathBuf::from("/d"), true)]
        );
        assert_eq!(c.nets[0].tap, "tap7");
        assert_eq!(c.nets[0].mac, Some([0x52, 0x54, 0, 0, 0, 7]));
    }

    #[test]
    fn bad_configuration_calls_name_the_field() {
        let (mut h, _requests) = PreBoot::new("t".into(), true);
        for (path, body, want) in [
            (
                "/boot-source",
                r#"{"kernel_image_path":"/k","x":1}"#,
                "unknown field `x`",
            ),
            (
                "/machine-config",
                r#"{"vcpu_count":0,"mem_size_mib":64}"#,
                "vcpu_count",
            ),
            (
                "/machine-config",
                r#"{"vcpu_count":1,"mem_size_mib":64,"smt":true}"#,
                "smt",
            ),
            (
                "/drives/a",
                r#"{"drive_id":"b","path_on_host":"/d","is_root_device":false}"#,
                "drive_id: differs",
            ),
            ("/drives/", r#"{}"#, "Invalid request"),
            (
                "/network-interfaces/eth0",
                r#"{"iface_id":"eth0","host_dev_name":"tap0","guest_mac":"nope"}"#,
                "",
            ),
            (
                "/snapshot/load",
                r#"{"snapshot_path":"/s","mem_backend":{"backend_type":"Uffd","backend_path":"/u"}}"#,
                "Uffd",
            ),
            ("/snapshot/load", r#"{"snapshot_path":"/s"}"#, "mem_backend"),
            (
                "/actions",
                r#"{"action_type":"SendCtrlAltDel"}"#,
                "not started yet",
            ),
        ] {
            let r = put(&mut h, path, body);
            if want.is_empty() {
                // A bad MAC is found when the VM is configured.
                assert_eq!(r.status, 204);
                continue;
            }
            let m = fault_of(&r);
            assert!(m.contains(want), "{path} {body}: {m}");
        }
        let m = fault_of(&h.handle("PATCH", "/vm", br#"{"state":"Paused"}"#));
        assert!(m.contains("not started yet"), "{m}");
        put(&mut h, "/boot-source", r#"{"kernel_image_path":"/k"}"#);
        let m = fault_of(&put(
            &mut h,
            "/actions",
            r#"{"action_type":"InstanceStart"}"#,
        ));
        assert!(m.contains("network interface eth0"), "{m}");
    }

    #[test]
    fn snapshot_load_asks_for_a_restore() {
        let (mut h, requests) = PreBoot::new("t".into(), true);
        let asked = starter(requests);
        let r = put(
            &mut h,
            "/snapshot/load",
            r#"{"snapshot_path":"/s","mem_backend":{"backend_type":"File","backend_path":"/m"},"resume_vm":true}"#,
        );
        assert_eq!(fault_of(&r), "refused by the test");
        let Launch::Restore(c) = asked.join().unwrap() else {
            panic!("not a restore")
        };
        assert_eq!(
            (c.snapshot.as_path(), c.memory.as_path()),
            (std::path::Path::new("/s"), std::path::Path::new("/m"))
        );
        assert!(c.resume);
    }
}
