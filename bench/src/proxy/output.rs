//! The proxy benchmark's table and final JSON line.

use serde_json::Value;

use super::{Outcome, Target, configs};
use crate::report::{self, num};
use crate::wrk::Load;

fn mb(kb: u64) -> f64 {
    (kb as f64 / 1024.0 * 10.0).round() / 10.0
}

pub(super) fn print_table(load: &Load, outcomes: &[(Target, Outcome)], idle_count: usize) {
    println!(
        "proxy benchmark: wrk -t{} -c{} -d{}s --latency, GET {} (1 KiB), cookie affinity (sticky path)",
        load.threads,
        load.connections,
        load.duration.as_secs(),
        configs::FILE
    );
    println!(
        "{:<14} {:>10} {:>8} {:>8} {:>12} {:>12} {:>14} {:>13} {:>8} {:>18}",
        "target",
        "req/s",
        "p50 ms",
        "p99 ms",
        "CPU us/req",
        "preempt/req",
        "backend us/req",
        "peak RSS MB",
        "errors",
        "idle RSS MB"
    );
    for (target, o) in outcomes {
        let dash = || "-".to_string();
        let (rps, p50, p99, errors) = match &o.report {
            Some(r) => (
                format!("{:.0}", r.rps),
                format!("{:.2}", r.p50_ms),
                format!("{:.2}", r.p99_ms),
                (r.non_2xx + r.socket_errors).to_string(),
            ),
            None => (dash(), dash(), dash(), dash()),
        };
        let cpu = o
            .cpu_us_per_req
            .map(|c| format!("{c:.1}"))
            .unwrap_or_else(dash);
        let preempted = o
            .preempted_per_req
            .map(|c| format!("{c:.3}"))
            .unwrap_or_else(dash);
        let backend = o
            .backend_us_per_req
            .map(|c| format!("{c:.1}"))
            .unwrap_or_else(dash);
        let rss = o
            .peak_rss_kb
            .map(|k| format!("{:.1}", mb(k)))
            .unwrap_or_else(dash);
        let idle = match (o.idle_rss_kb, o.idle_open) {
            (Some(k), Some(open)) => format!("{:.1} ({open}/{idle_count})", mb(k)),
            _ => dash(),
        };
        println!(
            "{:<14} {rps:>10} {p50:>8} {p99:>8} {cpu:>12} {preempted:>12} {backend:>14} {rss:>13} {errors:>8} {idle:>18}",
            target.name()
        );
    }
}

/// The final line: the required keys first, in order, then extras.
pub(super) fn json_line(load: &Load, outcomes: &[(Target, Outcome)], idle_count: usize) -> String {
    let get = |t: Target| outcomes.iter().find(|(x, _)| *x == t).map(|(_, o)| o);
    let rps = |t| num(get(t).and_then(|o| o.report.as_ref()).map(|r| r.rps));
    let p50 = |t| num(get(t).and_then(|o| o.report.as_ref()).map(|r| r.p50_ms));
    let p99 = |t| num(get(t).and_then(|o| o.report.as_ref()).map(|r| r.p99_ms));
    let rss = |t| num(get(t).and_then(|o| o.peak_rss_kb).map(mb));
    let idle = |t| num(get(t).and_then(|o| o.idle_rss_kb).map(mb));
    let sticky = |t| Value::from(get(t).is_some_and(|o| o.sticky));
    let cpu = |t| num(get(t).and_then(|o| o.cpu_us_per_req));
    let preempted = |t| num(get(t).and_then(|o| o.preempted_per_req));
    let backend = |t| num(get(t).and_then(|o| o.backend_us_per_req));
    let errors = |t| {
        get(t)
            .and_then(|o| o.report.as_ref())
            .map_or(Value::Null, |r| Value::from(r.non_2xx + r.socket_errors))
    };
    let fields: Vec<(&str, Value)> = vec![
        ("bench", Value::from("proxy")),
        ("remora_rps", rps(Target::Remora)),
        ("haproxy_rps", rps(Target::Haproxy)),
        ("nginx_rps", rps(Target::Nginx)),
        ("direct_rps", rps(Target::Direct)),
        ("remora_p99_ms", p99(Target::Remora)),
        ("haproxy_p99_ms", p99(Target::Haproxy)),
        ("remora_rss_mb_10k_idle", idle(Target::Remora)),
        ("haproxy_rss_mb_10k_idle", idle(Target::Haproxy)),
        ("nginx_p99_ms", p99(Target::Nginx)),
        ("direct_p99_ms", p99(Target::Direct)),
        ("remora_p50_ms", p50(Target::Remora)),
        ("haproxy_p50_ms", p50(Target::Haproxy)),
        ("nginx_p50_ms", p50(Target::Nginx)),
        ("direct_p50_ms", p50(Target::Direct)),
        ("remora_peak_rss_mb", rss(Target::Remora)),
        ("haproxy_peak_rss_mb", rss(Target::Haproxy)),
        ("nginx_peak_rss_mb", rss(Target::Nginx)),
        ("remora_cpu_us_per_req", cpu(Target::Remora)),
        ("haproxy_cpu_us_per_req", cpu(Target::Haproxy)),
        ("nginx_cpu_us_per_req", cpu(Target::Nginx)),
        ("remora_errors", errors(Target::Remora)),
        ("haproxy_errors", errors(Target::Haproxy)),
        ("nginx_errors", errors(Target::Nginx)),
        ("remora_sticky", sticky(Target::Remora)),
        ("haproxy_sticky", sticky(Target::Haproxy)),
        ("haproxy_bare_rps", rps(Target::HaproxyBare)),
        ("haproxy_bare_p50_ms", p50(Target::HaproxyBare)),
        ("haproxy_bare_p99_ms", p99(Target::HaproxyBare)),
        ("haproxy_bare_cpu_us_per_req", cpu(Target::HaproxyBare)),
        ("haproxy_bare_errors", errors(Target::HaproxyBare)),
        ("remora_compare_rps", rps(Target::RemoraCompare)),
        ("remora_compare_p50_ms", p50(Target::RemoraCompare)),
        ("remora_compare_p99_ms", p99(Target::RemoraCompare)),
        ("remora_compare_cpu_us_per_req", cpu(Target::RemoraCompare)),
        ("remora_compare_errors", errors(Target::RemoraCompare)),
        ("remora_preempted_per_req", preempted(Target::Remora)),
        (
            "remora_compare_preempted_per_req",
            preempted(Target::RemoraCompare),
        ),
        ("haproxy_preempted_per_req", preempted(Target::Haproxy)),
        ("direct_backend_us_per_req", backend(Target::Direct)),
        ("remora_backend_us_per_req", backend(Target::Remora)),
        (
            "remora_compare_backend_us_per_req",
            backend(Target::RemoraCompare),
        ),
        ("haproxy_backend_us_per_req", backend(Target::Haproxy)),
        (
            "haproxy_bare_backend_us_per_req",
            backend(Target::HaproxyBare),
        ),
        ("nginx_backend_us_per_req", backend(Target::Nginx)),
        ("idle_connections", Value::from(idle_count)),
        ("connections", Value::from(load.connections)),
        ("threads", Value::from(load.threads)),
        ("duration_s", Value::from(load.duration.as_secs())),
    ];
    report::json_line(fields)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::proxy::tests::report;

    #[test]
    fn json_line_starts_with_the_required_keys_in_order() {
        let load = Load {
            threads: 2,
            connections: 64,
            duration: Duration::from_secs(10),
        };
        let outcomes = vec![
            (
                Target::Direct,
                Outcome {
                    report: Some(report(50_000.0, 1.0)),
                    ..Outcome::default()
                },
            ),
            (Target::Remora, Outcome::default()),
            (
                Target::Haproxy,
                Outcome {
                    report: Some(report(30_000.123, 2.5)),
                    idle_rss_kb: Some(10 * 1024),
                    sticky: true,
                    ..Outcome::default()
                },
            ),
        ];
        let line = json_line(&load, &outcomes, 10_000);
        assert!(
            line.starts_with(
                "{\"bench\":\"proxy\",\"remora_rps\":null,\"haproxy_rps\":30000.12,\
                 \"nginx_rps\":null,\"direct_rps\":50000.0,\"remora_p99_ms\":null,\
                 \"haproxy_p99_ms\":2.5,"
            ),
            "{line}"
        );
        let parsed: serde_json::Value = serde_json::from_str(&line).expect("valid JSON");
        assert_eq!(parsed["haproxy_rss_mb_10k_idle"], 10.0);
        assert_eq!(parsed["haproxy_sticky"], true);
        assert_eq!(parsed["remora_rss_mb_10k_idle"], Value::Null);
    }
}
