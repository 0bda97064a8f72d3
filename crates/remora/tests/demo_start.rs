//! `remora demo` waits for its shop servers before starting the balancer,
//! so the main job starts without a shop logged as down.

mod serve_support;

use std::process::{Command, Stdio};
use std::time::Duration;

use serve_support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_starts_with_no_shop_logged_down() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log_path = dir.path().join("demo.log");
    let log = std::fs::File::create(&log_path).expect("log file");
    let addr = free_addr();
    let child = Command::new(BIN)
        .args(["demo", "--port", &addr.port().to_string()])
        .env("REMORA_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("spawn remora demo");
    let mut demo = Proc { child };
    let c = client();
    let url = format!("http://{addr}/api/cluster");
    let healthy = eventually(Duration::from_secs(30), || async {
        let Ok(r) = request(&c, "GET", &url, &[], "").await else {
            return false;
        };
        let Ok(v) = serde_json::from_str::<serde_json::Value>(&r.body) else {
            return false;
        };
        v["servers"].as_array().is_some_and(|s| {
            s.len() == 3 && s.iter().all(|s| s["healthy"] == serde_json::json!(true))
        })
    })
    .await;
    let text = std::fs::read_to_string(&log_path).unwrap_or_default();
    assert!(healthy, "the demo never had three healthy shops:\n{text}");
    for shop in ["b1", "b2", "b3"] {
        assert!(
            text.contains(&format!("shop listening server={shop}")),
            "{shop} did not start:\n{text}"
        );
    }
    assert!(
        !text.contains("DOWN"),
        "a shop was logged as down at start:\n{text}"
    );
    demo.signal("TERM");
    assert!(
        demo.wait_exit(Duration::from_secs(10)).is_some(),
        "the demo did not stop on SIGTERM"
    );
}
