//! Disk full: the node's data directory fills up under
//! the running node; while it is full, gRPC changes fail with UNAVAILABLE
//! and a clear message and REGISTERs get 503 (never 200); nothing
//! acknowledged before is lost; when space returns, service resumes without
//! a restart, and after a restart everything acknowledged is there and the
//! log has no gap. The node's log (stderr) is in the data directory, on the
//! same full disk: logging must not fail the node either.
//!
//! The disk is filled by an LD_PRELOAD shim (`support/fs_faults.c`) that
//! fails the node's writes, syncs and allocations under its data directory
//! with ENOSPC while a flag file exists, which runs everywhere. Where a
//! tmpfs can be mounted (root, as in the CI container), the same test then
//! runs once more on a real 16 MB tmpfs filled with a file.
//!
//! Read-only data directory: at start, the node
//! refuses to run and says the directory is read-only; while running (a file
//! system remounted read-only after errors), changes fail with UNAVAILABLE
//! saying so and REGISTERs get 500/503; once writable again, service resumes
//! and nothing acknowledged is lost. The kernel will not remount a file
//! system read-only while files on it are open for writing, so the running
//! case uses the same shim, failing the node's writes under its data
//! directory with EROFS, as the kernel would.

mod support;

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use dialtone_api::pb::CreateUserRequest;
use dialtone_sip::test_ua::{Register, TestUa};
use support::sip::{bounded, create_domain, create_user, DOMAIN, PASSWORD};
use support::{read_all, TestNode, ADMIN_TOKEN};

/// A tmpfs mounted for the test, unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, size_mb: u32) -> Option<Tmpfs> {
        std::fs::create_dir_all(at).ok()?;
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size_mb}m"), "tmpfs"])
            .arg(at)
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| Tmpfs(at.to_owned()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// A domain with alice and bob; alice registered from the returned UA.
async fn alice_registered_bob_provisioned(node: &TestNode) -> TestUa {
    create_domain(node, DOMAIN).await.unwrap();
    create_user(node, DOMAIN, "alice", PASSWORD, 0)
        .await
        .unwrap();
    create_user(node, DOMAIN, "bob", PASSWORD, 0).await.unwrap();
    let mut ua = TestUa::udp(node.sip_addr()).await.unwrap();
    let alice = Register::new("alice", DOMAIN).password(PASSWORD);
    assert_eq!(ua.register(&alice).await.unwrap().code, 200);
    ua
}

/// While the disk cannot be written: creates fail with UNAVAILABLE and a
/// message containing `reason`, bob's REGISTER gets 500 or 503 (with
/// Retry-After), never 200.
async fn changes_are_refused(node: &TestNode, ua: &mut TestUa, reason: &str) {
    let mut provisioning = node.provisioning().await.unwrap();
    for i in 0..3 {
        let err = provisioning
            .create_user(CreateUserRequest {
                domain: DOMAIN.into(),
                username: format!("refused{i}"),
                password: PASSWORD.into(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unavailable, "{err:?}");
        assert!(err.message().contains(reason), "{}", err.message());
    }
    let bob = Register::new("bob", DOMAIN).password(PASSWORD);
    let refused = ua.register(&bob).await.unwrap();
    assert!(
        matches!(refused.code, 500 | 503),
        "REGISTER ({reason}) got {}",
        refused.code
    );
    if refused.code == 503 {
        assert!(refused.header("Retry-After").is_some());
    }
}

/// Once the disk can be written again: carol is created and bob registers,
/// without a restart.
async fn service_resumes(node: &TestNode, ua: &mut TestUa) {
    create_user(node, DOMAIN, "carol", PASSWORD, 0)
        .await
        .unwrap();
    let bob = Register::new("bob", DOMAIN).password(PASSWORD);
    assert_eq!(ua.register(&bob).await.unwrap().code, 200);
}

/// Fills the file system of `dir` with `filler` until writes fail.
fn fill(filler: &Path) {
    let mut f = std::fs::File::create(filler).unwrap();
    let chunk = vec![0u8; 64 * 1024];
    while f.write_all(&chunk).is_ok() {}
    // The last bytes, one at a time.
    let one = [0u8; 1];
    while f.write_all(&one).is_ok() {}
    let _ = f.sync_all();
}

/// What fills the data directory's disk under the running node, and frees it.
enum FullDisk {
    /// The shim, switched by its flag file.
    Shim { flag: PathBuf },
    /// A real tmpfs (holding the data directory), filled with `filler`.
    Tmpfs { filler: PathBuf },
}

impl FullDisk {
    fn fill(&self) {
        match self {
            FullDisk::Shim { flag } => std::fs::write(flag, b"").unwrap(),
            FullDisk::Tmpfs { filler } => fill(filler),
        }
    }

    fn free(&self) {
        match self {
            FullDisk::Shim { flag } => std::fs::remove_file(flag).unwrap(),
            FullDisk::Tmpfs { filler } => std::fs::remove_file(filler).unwrap(),
        }
    }
}

/// The full-disk scenario on a node over `data` (started with `env`), with
/// `disk` filled and freed under it.
async fn full_disk_refuses_changes_and_resumes(data: &Path, env: &[(&str, &str)], disk: FullDisk) {
    let mut node = TestNode::start_with_env(data, &["--admin-token", ADMIN_TOKEN], env)
        .await
        .unwrap();
    node.token = Some(ADMIN_TOKEN.to_owned());
    let mut ua = alice_registered_bob_provisioned(&node).await;

    // The disk fills up.
    disk.fill();
    changes_are_refused(&node, &mut ua, "disk is full").await;

    // Space returns: service resumes without a restart.
    disk.free();
    service_resumes(&node, &mut ua).await;

    // After a restart: everything acknowledged, nothing refused, no gap.
    node.stop().await.unwrap();
    let node = TestNode::start(data, &[]).await.unwrap();
    let (created, registered) = created_and_registered(&node).await;
    assert_eq!(created, ["alice", "bob", "carol"]);
    assert_eq!(registered, 2, "alice's and bob's (after space returned)");
    node.stop().await.unwrap();
}

#[tokio::test]
async fn a_full_disk_refuses_changes_clearly_and_service_resumes_when_space_returns() {
    bounded(180, async {
        // Everywhere: the shim fills the disk.
        let dir = tempfile::tempdir().unwrap();
        let shim = build_fault_shim(dir.path());
        let data = dir.path().join("data");
        std::fs::create_dir_all(&data).unwrap();
        let data = data.canonicalize().unwrap();
        let flag = dir.path().join("disk-full-now");
        let env = [
            ("LD_PRELOAD", shim.to_str().unwrap()),
            ("DIALTONE_TEST_FAULT", "full"),
            ("DIALTONE_TEST_FAULT_DIR", data.to_str().unwrap()),
            ("DIALTONE_TEST_FAULT_FLAG", flag.to_str().unwrap()),
        ];
        let disk = FullDisk::Shim { flag: flag.clone() };
        full_disk_refuses_changes_and_resumes(&data, &env, disk).await;

        // Where a tmpfs can be mounted: a real full file system as well.
        let Some(mnt) = Tmpfs::mount(&dir.path().join("mnt"), 16) else {
            eprintln!(
                "no tmpfs (needs root / CAP_SYS_ADMIN): the disk was filled by the shim only"
            );
            return;
        };
        let data = mnt.0.join("data");
        std::fs::create_dir_all(&data).unwrap();
        let filler = mnt.0.join("filler");
        full_disk_refuses_changes_and_resumes(&data, &[], FullDisk::Tmpfs { filler }).await;
        drop(mnt);
    })
    .await
}

/// Builds the file-system fault shim (`support/fs_faults.c`) into `dir`. A
/// C compiler is always there: the bundled SQLite needs one to build.
fn build_fault_shim(dir: &Path) -> PathBuf {
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/fs_faults.c");
    let shim = dir.join("fs_faults.so");
    let status = Command::new(std::env::var("CC").unwrap_or_else(|_| "cc".to_owned()))
        .args(["-shared", "-fPIC", "-O2", "-o"])
        .arg(&shim)
        .arg(&source)
        .arg("-ldl")
        .status()
        .expect("run the C compiler");
    assert!(status.success(), "building {} failed", source.display());
    shim
}

/// Counts what the log holds after a restart: the usernames created and the
/// ContactRegistered events, checking that positions have no gap.
async fn created_and_registered(node: &TestNode) -> (Vec<String>, usize) {
    let events = read_all(node).await.unwrap();
    for (i, e) in events.iter().enumerate() {
        assert_eq!(e.position, i as u64 + 1, "position gap");
    }
    let created = events
        .iter()
        .filter(|e| e.r#type == "UserCreated")
        .map(|e| {
            let v: serde_json::Value = serde_json::from_str(&e.data_json).unwrap();
            v["username"].as_str().unwrap().to_owned()
        })
        .collect();
    let registered = events
        .iter()
        .filter(|e| e.r#type == "ContactRegistered")
        .count();
    (created, registered)
}

#[tokio::test]
async fn a_read_only_data_dir_refuses_changes_clearly_and_service_resumes_when_writable() {
    bounded(120, async {
        let dir = tempfile::tempdir().unwrap();
        let shim = build_fault_shim(dir.path());
        let data = dir.path().join("data");
        std::fs::create_dir_all(&data).unwrap();
        let data = data.canonicalize().unwrap();
        let flag = dir.path().join("read-only-now");
        let data_str = data.to_str().unwrap().to_owned();
        let env = [
            ("LD_PRELOAD", shim.to_str().unwrap()),
            ("DIALTONE_TEST_FAULT", "read-only"),
            ("DIALTONE_TEST_FAULT_DIR", data_str.as_str()),
            ("DIALTONE_TEST_FAULT_FLAG", flag.to_str().unwrap()),
        ];
        let mut node = TestNode::start_with_env(&data, &["--admin-token", ADMIN_TOKEN], &env)
            .await
            .unwrap();
        node.token = Some(ADMIN_TOKEN.to_owned());
        let mut ua = alice_registered_bob_provisioned(&node).await;

        // The file system goes read-only under the running node.
        std::fs::write(&flag, b"").unwrap();
        changes_are_refused(&node, &mut ua, "read-only").await;

        // Writable again: service resumes without a restart.
        std::fs::remove_file(&flag).unwrap();
        service_resumes(&node, &mut ua).await;
        node.stop().await.unwrap();

        // Read-only at start: the node refuses to run and says why.
        std::fs::write(&flag, b"").unwrap();
        let output = tokio::process::Command::new(support::binary())
            .arg("serve")
            .arg("--data-dir")
            .arg(&data)
            .args(["--grpc-addr", "127.0.0.1:0", "--metrics-addr", "off"])
            .args(["--sip-addr", "127.0.0.1:0", "--admin-token", ADMIN_TOKEN])
            .envs(env)
            .output()
            .await
            .unwrap();
        assert!(!output.status.success(), "started on a read-only data dir");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            stderr.contains("read-only") && stderr.contains(&data_str),
            "{stderr}"
        );
        std::fs::remove_file(&flag).unwrap();

        // After a restart: everything acknowledged, nothing refused, no gap.
        let node = TestNode::start(&data, &[]).await.unwrap();
        let (created, registered) = created_and_registered(&node).await;
        assert_eq!(created, ["alice", "bob", "carol"]);
        assert_eq!(
            registered, 2,
            "alice's and bob's (after it was writable again)"
        );
        node.stop().await.unwrap();
    })
    .await
}
