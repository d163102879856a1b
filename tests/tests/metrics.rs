//! The Prometheus endpoint of a real node.

mod support;

use dialtone_api::pb::CreateDomainRequest;
use support::TestNode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn scrape(addr: &str) -> String {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(
            format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await
        .unwrap();
    let mut body = String::new();
    stream.read_to_string(&mut body).await.unwrap();
    body
}

#[tokio::test]
async fn metrics_endpoint_reports_event_log_and_actor_figures() {
    let dir = tempfile::tempdir().unwrap();
    let (node, addr) = TestNode::start_with_metrics(dir.path(), &[]).await.unwrap();
    let mut p = node.provisioning().await.unwrap();
    p.create_domain(CreateDomainRequest {
        name: "example.com".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    let text = scrape(&addr).await;
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    for metric in [
        "dialtone_eventlog_appends_total",
        "dialtone_eventlog_append_seconds",
        "dialtone_actors_live",
        // The media plane's health (voicemail's calls), from the start.
        "dialtone_media_sessions_live 0",
        "dialtone_media_rtp_packets_lost_total 0",
        "dialtone_media_late_packets_total 0",
        "dialtone_media_concealed_frames_total 0",
        "dialtone_media_recorded_frames_total 0",
        "dialtone_media_tick_lateness_us_bucket{le=\"1000\"} 0",
        "dialtone_media_tick_lateness_us_bucket{le=\"+Inf\"} 0",
        "dialtone_media_tick_lateness_us_count 0",
        "dialtone_media_tick_lateness_max_us 0",
    ] {
        assert!(text.contains(metric), "missing {metric} in:\n{text}");
    }
    // Each projection says how far behind the log's head it is, once it
    // read the domain's event: caught up, nothing else written.
    let caught_up = "dialtone_projection_lag_events{projection=\"calls\"} 0";
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let mut text = scrape(&addr).await;
    while !text.contains(caught_up) && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        text = scrape(&addr).await;
    }
    assert!(text.contains(caught_up), "missing {caught_up} in:\n{text}");
    node.stop().await.unwrap();
}
