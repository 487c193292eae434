//! Every metric the Grafana dashboard (`packaging/grafana-ringchat.json`)
//! queries is exported by a running server's `/metrics`.
//!
//! All metrics are exported on every node, cluster-only ones included
//! (`ringchat_cluster_bus_lag_seconds` is an empty histogram on a single
//! node), so the check needs no exceptions.

mod common;

use common::TestServer;
use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};

const DASHBOARD: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/packaging/grafana-ringchat.json"
);

/// Every PromQL query in the dashboard: panel targets (rows may nest
/// panels) and templating queries.
fn queries(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, x) in m {
                match (k.as_str(), x) {
                    ("expr" | "definition", serde_json::Value::String(s)) => out.push(s.clone()),
                    ("query", serde_json::Value::String(s)) if s.contains('(') => {
                        out.push(s.clone())
                    }
                    _ => queries(x, out),
                }
            }
        }
        serde_json::Value::Array(a) => a.iter().for_each(|x| queries(x, out)),
        _ => {}
    }
}

/// Metric names in a PromQL expression: our metrics all start `ringchat_`.
fn metric_names(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = expr;
    while let Some(i) = rest.find("ringchat_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        // Not the tail of a longer identifier.
        let before = rest[..i].chars().next_back();
        if !before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') {
            names.push(tail[..end].to_string());
        }
        rest = &tail[end..];
    }
    names
}

fn scrape(addr: SocketAddr) -> String {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(s, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    out
}

/// Names of the samples in a Prometheus text exposition.
fn exported(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty() && l.starts_with("ringchat_"))
        .map(|l| l.split(['{', ' ']).next().unwrap().to_string())
        .collect()
}

#[test]
fn metric_names_are_extracted_from_promql() {
    assert_eq!(
        metric_names(
            "histogram_quantile(0.99, sum by (le) (rate(ringchat_send_ack_seconds_bucket{instance=~\"$i\"}[5m]))) / ringchat_x"
        ),
        vec!["ringchat_send_ack_seconds_bucket", "ringchat_x"]
    );
    assert!(metric_names("rate(my_ringchat_x[1m])").is_empty());
}

#[test]
fn every_dashboard_metric_is_exported() {
    let dash: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(DASHBOARD).unwrap()).unwrap();
    let mut qs = Vec::new();
    queries(&dash, &mut qs);
    let used: BTreeSet<String> = qs.iter().flat_map(|q| metric_names(q)).collect();
    assert!(
        used.len() >= 10,
        "too few metrics found in the dashboard: {used:?}"
    );
    // The latencies an operator pages on are histograms.
    for h in [
        "ringchat_send_ack_seconds_bucket",
        "ringchat_store_batch_duration_seconds_bucket",
        "ringchat_cluster_bus_lag_seconds_bucket",
    ] {
        assert!(used.contains(h), "the dashboard does not use {h}");
    }

    let metrics = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let s = TestServer::start_with(&["--metrics", &metrics.to_string()]);
    // Some traffic, so the histograms have observations too.
    let (a, b) = (
        s.user(&common::uname("dasha")),
        s.user(&common::uname("dashb")),
    );
    common::befriend(&a, &b);
    a.c.send_direct(b.id, "hello").unwrap();
    common::wait_msg(&b.c, "message");
    // Shards publish once a second.
    std::thread::sleep(std::time::Duration::from_millis(1300));
    let text = scrape(metrics);
    let have = exported(&text);
    let missing: Vec<&String> = used.iter().filter(|n| !have.contains(*n)).collect();
    assert!(
        missing.is_empty(),
        "the dashboard queries metrics /metrics does not export: {missing:?}\nexported: {have:?}"
    );
    // The message above was acked and committed: both histograms counted it.
    let count = |name: &str| -> u64 {
        text.lines()
            .filter(|l| l.starts_with(name))
            .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
            .sum()
    };
    assert!(count("ringchat_send_ack_seconds_count") >= 1, "{text}");
    assert!(
        count("ringchat_store_batch_duration_seconds_count") >= 1,
        "{text}"
    );
}
