//! What each API request does: Firecracker's paths, verbs, JSON field names
//! and status codes, for the endpoints Ember has a meaning for. A plain
//! function of the request and the VM's handle, so it is tested without a
//! socket or a VM.

use serde::{Deserialize, Serialize};

use crate::control::VmControl;
use crate::pause::RunState;

/// One response: status code and JSON body (empty for 204).
#[derive(Debug, PartialEq, Eq)]
pub struct Reply {
    pub status: u16,
    pub body: String,
}

impl Reply {
    pub(crate) fn json(status: u16, value: &impl Serialize) -> Self {
        Self {
            status,
            body: serde_json::to_string(value).unwrap_or_default(),
        }
    }

    pub(crate) fn no_content() -> Self {
        Self {
            status: 204,
            body: String::new(),
        }
    }

    /// 400 with Firecracker's error body.
    pub fn fault(message: impl Into<String>) -> Self {
        Self::json(
            400,
            &Fault {
                fault_message: message.into(),
            },
        )
    }
}

#[derive(Serialize)]
struct Fault {
    fault_message: String,
}

#[derive(Serialize)]
pub(crate) struct InstanceInfo<'a> {
    pub app_name: &'a str,
    pub id: &'a str,
    pub state: &'a str,
    pub vmm_version: &'a str,
}

#[derive(Serialize)]
pub(crate) struct MachineConfig {
    pub vcpu_count: u8,
    pub mem_size_mib: u64,
    pub smt: bool,
    pub track_dirty_pages: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct VmState {
    state: VmStateValue,
}

#[derive(Deserialize)]
enum VmStateValue {
    Paused,
    Resumed,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SnapshotCreate {
    #[serde(default)]
    snapshot_type: Option<SnapshotType>,
    snapshot_path: std::path::PathBuf,
    mem_file_path: std::path::PathBuf,
    /// Firecracker's (deprecated) target version: accepted, not used.
    #[serde(default)]
    #[allow(dead_code)]
    version: Option<String>,
}

#[derive(Deserialize, PartialEq, Eq)]
enum SnapshotType {
    Full,
    Diff,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Action {
    action_type: ActionType,
}

#[derive(Deserialize)]
enum ActionType {
    /// Firecracker's: press Ctrl-Alt-Del on the guest's keyboard.
    SendCtrlAltDel,
    /// Firecracker's, for a VM configured through the API first.
    InstanceStart,
    /// Ember's own: end the VM now (as SIGTERM does; disks flushed).
    Stop,
}

/// The running VM's endpoints, for the server.
pub struct Running {
    pub vm: VmControl,
    pub id: String,
}

impl super::server::Handler for Running {
    fn handle(&mut self, method: &str, path: &str, body: &[u8]) -> Reply {
        route(&self.vm, &self.id, method, path, body)
    }
}

/// Serves `method path` with `body` against the VM behind `vm`, whose
/// instance id is `id`.
pub fn route(vm: &VmControl, id: &str, method: &str, path: &str, body: &[u8]) -> Reply {
    match (method, path) {
        ("GET", "/") => {
            let state = match vm.run_state() {
                Some(RunState::Running) => "Running",
                Some(RunState::Paused) => "Paused",
                // Firecracker has no word for an ended VM; its process is
                // gone by then. Ember's is about to be.
                None => "Not started",
            };
            Reply::json(
                200,
                &InstanceInfo {
                    app_name: "Ember",
                    id,
                    state,
                    vmm_version: env!("CARGO_PKG_VERSION"),
                },
            )
        }
        ("GET", "/machine-config") => Reply::json(
            200,
            &MachineConfig {
                vcpu_count: vm.cpus(),
                mem_size_mib: vm.memory() >> 20,
                smt: false,
                track_dirty_pages: false,
            },
        ),
        ("PATCH", "/vm") => match parse::<VmState>(body) {
            Err(r) => r,
            Ok(VmState { state }) => {
                let done = match state {
                    VmStateValue::Paused => vm.pause(),
                    VmStateValue::Resumed => vm.resume(),
                };
                match done {
                    Ok(()) => Reply::no_content(),
                    Err(e) => Reply::fault(format!("cannot change the VM's state: {e}")),
                }
            }
        },
        ("PUT", "/snapshot/create") => match parse::<SnapshotCreate>(body) {
            Err(r) => r,
            Ok(SnapshotCreate {
                snapshot_type: Some(SnapshotType::Diff),
                ..
            }) => Reply::fault("snapshot_type Diff: Ember makes Full snapshots only"),
            Ok(req) => match vm.snapshot(&req.snapshot_path, &req.mem_file_path) {
                Ok(info) => {
                    log::info!(
                        "snapshot: {} ({} bytes) and {} ({} bytes) in {:?}",
                        req.snapshot_path.display(),
                        info.state_bytes,
                        req.mem_file_path.display(),
                        info.memory_bytes,
                        info.took
                    );
                    Reply::no_content()
                }
                Err(e) => Reply::fault(format!("cannot create the snapshot: {}", crate::error_chain(&e))),
            },
        },
        ("PUT", "/actions") => match parse::<Action>(body) {
            Err(r) => r,
            Ok(Action { action_type }) => match action_type {
                ActionType::Stop => {
                    vm.stop();
                    Reply::no_content()
                }
                ActionType::InstanceStart => Reply::fault(
                    "InstanceStart: the VM is already running (Ember starts it from the command line)",
                ),
                ActionType::SendCtrlAltDel => match vm.ctrl_alt_del() {
                    Ok(()) => Reply::no_content(),
                    Err(e) => Reply::fault(format!("SendCtrlAltDel: {}", crate::error_chain(&e))),
                },
            },
        },
        _ => Reply::fault(format!("Invalid request method and/or path: {method} {path}")),
    }
}

/// The JSON body as `T`, or a 400 that says what is wrong with it.
pub(crate) fn parse<T: for<'de> Deserialize<'de>>(body: &[u8]) -> Result<T, Reply> {
    serde_json::from_slice(body).map_err(|e| Reply::fault(format!("bad request body: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exit::ExitSignal;
    use std::sync::Arc;

    /// A control with no vCPU thread: pausing parks 0 of 0 at once.
    fn vm() -> (VmControl, Arc<ExitSignal>) {
        let exit = Arc::new(ExitSignal::new().unwrap());
        (VmControl::new(exit.clone(), 2, 256 << 20, false), exit)
    }

    fn fault_of(r: &Reply) -> String {
        assert_eq!(r.status, 400, "{r:?}");
        let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
        v["fault_message"].as_str().unwrap().to_string()
    }

    #[test]
    fn instance_info_and_machine_config_use_firecrackers_fields() {
        let (vm, _exit) = vm();
        let r = route(&vm, "ember-1", "GET", "/", b"");
        assert_eq!(r.status, 200);
        let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
        assert_eq!(v["id"], "ember-1");
        assert_eq!(v["state"], "Running");
        assert_eq!(v["vmm_version"], env!("CARGO_PKG_VERSION"));
        let r = route(&vm, "x", "GET", "/machine-config", b"");
        let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
        assert_eq!(
            (v["vcpu_count"].as_u64(), v["mem_size_mib"].as_u64()),
            (Some(2), Some(256))
        );
    }

    #[test]
    fn patch_vm_pauses_and_resumes() {
        let (vm, _exit) = vm();
        let r = route(&vm, "x", "PATCH", "/vm", br#"{"state": "Paused"}"#);
        assert_eq!(r, Reply::no_content());
        assert_eq!(vm.run_state(), Some(RunState::Paused));
        assert!(route(&vm, "x", "GET", "/", b"")
            .body
            .contains(r#""state":"Paused""#));
        let r = route(&vm, "x", "PATCH", "/vm", br#"{"state":"Resumed"}"#);
        assert_eq!(r.status, 204);
        assert_eq!(vm.run_state(), Some(RunState::Running));
    }

    #[test]
    fn bad_bodies_name_what_is_wrong_and_change_nothing() {
        let (vm, _exit) = vm();
        for (body, want) in [
            (
                &br#"{"state": "Sleeping"}"#[..],
                "unknown variant `Sleeping`",
            ),
            (br#"{"state": "Paused", "x": 1}"#, "unknown field `x`"),
            (br#"{}"#, "missing field `state`"),
            (b"not json", "expected"),
            (b"", "EOF"),
        ] {
            let m = fault_of(&route(&vm, "x", "PATCH", "/vm", body));
            assert!(m.contains(want), "{m}");
        }
        assert_eq!(vm.run_state(), Some(RunState::Running));
        let m = fault_of(&route(&vm, "x", "DELETE", "/vm", b""));
        assert_eq!(m, "Invalid request method and/or path: DELETE /vm");
        let m = fault_of(&route(
            &vm,
            "x",
            "PUT",
            "/actions",
            br#"{"action_type":"SendCtrlAltDel"}"#,
        ));
        assert_eq!(m, "SendCtrlAltDel: the VM is not running");
    }

    #[test]
    fn snapshot_create_checks_its_body_and_the_vm_state() {
        let (vm, _exit) = vm();
        let create = |body: &[u8]| route(&vm, "x", "PUT", "/snapshot/create", body);
        let m = fault_of(&create(br#"{"snapshot_path": "s"}"#));
        assert!(m.contains("missing field `mem_file_path`"), "{m}");
        let m = fault_of(&create(
            br#"{"snapshot_type": "Diff", "snapshot_path": "s", "mem_file_path": "m"}"#,
        ));
        assert!(m.contains("Full snapshots only"), "{m}");
        let m = fault_of(&create(
            br#"{"snapshot_path": "s", "mem_file_path": "m", "bogus": 1}"#,
        ));
        assert!(m.contains("unknown field `bogus`"), "{m}");
        // This control has no machine behind it (as after the VM's end).
        let m = fault_of(&create(
            br#"{"snapshot_type": "Full", "snapshot_path": "s", "mem_file_path": "m"}"#,
        ));
        assert!(
            m.contains("cannot create the snapshot: the VM has ended"),
            "{m}"
        );
    }

    #[test]
    fn stop_ends_the_vm_and_later_state_changes_fail() {
        let (vm, exit) = vm();
        let r = route(&vm, "x", "PUT", "/actions", br#"{"action_type": "Stop"}"#);
        assert_eq!(r.status, 204);
        assert!(exit.is_set());
        let m = fault_of(&route(&vm, "x", "PATCH", "/vm", br#"{"state":"Paused"}"#));
        assert!(m.contains("the VM has ended"), "{m}");
    }
}
