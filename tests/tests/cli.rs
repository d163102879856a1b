//! The CLI client against a real node: human and JSON output, exit codes.

mod support;

use support::TestNode;

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[tokio::test]
async fn cli_provisions_and_reports_errors() {
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::start(dir.path(), &[]).await.unwrap();

    let out = node
        .cli(&["domain", "create", "example.com"])
        .await
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("example.com"));

    let out = node
        .cli(&[
            "user",
            "create",
            "alice@example.com",
            "--password",
            "secret123",
            "--display-name",
            "Alice",
        ])
        .await
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));

    let out = node
        .cli(&["--json", "user", "get", "alice@example.com"])
        .await
        .unwrap();
    assert!(out.status.success());
    let user: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(user["address"], "alice@example.com");
    assert_eq!(user["display_name"], "Alice");
    assert_eq!(user["enabled"], true);

    let out = node
        .cli(&["user", "disable", "alice@example.com"])
        .await
        .unwrap();
    assert!(out.status.success());
    assert!(stdout(&out).contains("disabled"));

    let out = node
        .cli(&["--json", "user", "list", "--domain", "example.com"])
        .await
        .unwrap();
    let list: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 1);

    let out = node
        .cli(&[
            "user",
            "set-password",
            "alice@example.com",
            "--password",
            "other-secret",
        ])
        .await
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));

    let out = node
        .cli(&["history", "user", "alice@example.com"])
        .await
        .unwrap();
    let text = stdout(&out);
    assert!(
        text.contains("UserCreated")
            && text.contains("UserDisabled")
            && text.contains("PasswordChanged"),
        "{text}"
    );
    assert!(
        !text.contains("ha1"),
        "history must not show HA1 values: {text}"
    );

    let out = node
        .cli(&["--json", "history", "user", "alice@example.com"])
        .await
        .unwrap();
    let events: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(events.as_array().unwrap().len(), 3);

    // Errors: non-zero exit, a clear message naming the problem.
    let out = node
        .cli(&["domain", "create", "example.com"])
        .await
        .unwrap();
    assert!(!out.status.success());
    assert!(stderr(&out).contains("already exists"), "{}", stderr(&out));
    let out = node
        .cli(&["user", "create", "bob@example.com", "--password", "x"])
        .await
        .unwrap();
    assert!(!out.status.success());
    assert!(stderr(&out).contains("password"), "{}", stderr(&out));
    let out = node
        .cli(&["user", "get", "nobody@example.com"])
        .await
        .unwrap();
    assert!(!out.status.success());
    assert!(stderr(&out).contains("not found"));

    let out = node.cli(&["domain", "list"]).await.unwrap();
    assert!(stdout(&out).contains("example.com"));
    node.stop().await.unwrap();

    // No server: a clear connection error.
    let out = tokio::process::Command::new(support::binary())
        .args(["--server", "http://127.0.0.1:1", "domain", "list"])
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    assert!(stderr(&out).contains("cannot connect"), "{}", stderr(&out));
}

#[tokio::test]
async fn help_documents_every_serve_option() {
    let out = tokio::process::Command::new(support::binary())
        .args(["serve", "--help"])
        .output()
        .await
        .unwrap();
    let help = stdout(&out);
    for option in [
        "--data-dir",
        "--grpc-addr",
        "--metrics-addr",
        "--config",
        "--min-password-length",
        "--demo",
        "DIALTONE_DATA_DIR",
    ] {
        assert!(help.contains(option), "serve --help lacks {option}");
    }
}

#[tokio::test]
async fn cli_lists_calls_and_refuses_unknown_domains() {
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::start(dir.path(), &[]).await.unwrap();
    let out = node
        .cli(&["domain", "create", "example.com"])
        .await
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));

    // A fresh domain has no calls, in progress or recorded.
    for args in [
        &["calls", "example.com"][..],
        &["calls", "example.com", "--active"][..],
    ] {
        let out = node.cli(args).await.unwrap();
        assert!(out.status.success(), "{args:?}: {}", stderr(&out));
        assert_eq!(stdout(&out).trim(), "(none)", "{args:?}");
        let json_args: Vec<&str> = std::iter::once("--json")
            .chain(args.iter().copied())
            .collect();
        let out = node.cli(&json_args).await.unwrap();
        assert!(out.status.success(), "{json_args:?}: {}", stderr(&out));
        let list: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
        assert_eq!(list, serde_json::json!([]), "{json_args:?}");
    }
    let out = node
        .cli(&[
            "calls",
            "example.com",
            "--from",
            "2026-11-26T00:00:00Z",
            "--to",
            "2026-11-27T00:00:00Z",
        ])
        .await
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));

    // Errors: non-zero exit with a message saying what is wrong.
    for (args, says) in [
        (&["calls", "nowhere.example"][..], "NotFound"),
        (&["calls", "nowhere.example", "--active"][..], "NotFound"),
        (
            &["calls", "example.com", "--from", "yesterday"][..],
            "--from",
        ),
        (
            &[
                "calls",
                "example.com",
                "--from",
                "2026-11-27T00:00:00Z",
                "--to",
                "2026-11-26T00:00:00Z",
            ][..],
            "from_time",
        ),
    ] {
        let out = node.cli(args).await.unwrap();
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(stderr(&out).contains(says), "{args:?}: {}", stderr(&out));
    }
    node.stop().await.unwrap();
}
