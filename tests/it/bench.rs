//! `linetokd bench --quick`: the real binary measures a real daemon (itself,
//! as a child process) against the in-process sandbox, and every figure it
//! prints and writes is a number. No timing is asserted: this keeps the
//! harness alive, it does not judge the machine.

use std::process::Command;

use serde_json::Value;

/// The number right after `marker` in `line` (a trailing comma dropped).
fn value_after(line: &str, marker: &str) -> f64 {
    let rest = line
        .split_once(marker)
        .unwrap_or_else(|| panic!("no {marker:?} in {line:?}"))
        .1;
    let word = rest.split_whitespace().next().unwrap_or_default();
    let value: f64 = word
        .trim_end_matches(',')
        .parse()
        .unwrap_or_else(|_| panic!("{word:?} after {marker:?} is not a number in {line:?}"));
    assert!(value.is_finite(), "{line}");
    value
}

fn line_starting<'a>(stdout: &'a str, prefix: &str) -> &'a str {
    stdout
        .lines()
        .find(|l| l.trim_start().starts_with(prefix))
        .unwrap_or_else(|| panic!("no line starting with {prefix:?} in:\n{stdout}"))
}

#[test]
fn quick_bench_reports_every_figure_as_a_number() {
    let dir = tempfile::tempdir().unwrap();
    let json_out = dir.path().join("bench.jsonl");
    let out = Command::new(env!("CARGO_BIN_EXE_linetokd"))
        .args(["bench", "--quick", "--idle", "2s", "--groups", "30"])
        // A hang guard, not a performance goal.
        .args(["--timeout", "3m", "--json-out"])
        .arg(&json_out)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "exit {}\nstdout:\n{stdout}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );

    let signature = line_starting(&stdout, "RSA-2048 RS256 signature:");
    assert!(value_after(signature, "signature:") > 0.0, "{signature}");
    let schedule = line_starting(&stdout, "LINE Login refresh schedule of 100000 grants:");
    assert!(value_after(schedule, "grants:") > 0.0, "{schedule}");

    // The table: a header of one-word columns and the row for N = 30.
    let header: Vec<&str> = line_starting(&stdout, "groups ")
        .split_whitespace()
        .collect();
    assert_eq!(
        header,
        [
            "groups",
            "channels",
            "wall_s",
            "ms/group",
            "cpu_ms/group",
            "sig_ms",
            "cpu/sig",
            "rss_MiB",
            "anon_MiB",
            "file_MiB",
            "hwm_MiB",
            "status_ms",
            "plan30d_ms",
            "scrape_ms",
            "scrape_peak_MiB"
        ]
    );
    let row: Vec<&str> = line_starting(&stdout, "30 ").split_whitespace().collect();
    assert_eq!(row.len(), header.len(), "{row:?}");
    for (name, cell) in header.iter().zip(&row) {
        let value: f64 = cell
            .parse()
            .unwrap_or_else(|_| panic!("{name} is {cell:?}, not a number:\n{stdout}"));
        assert!(value.is_finite() && value >= 0.0, "{name} = {value}");
    }
    assert_eq!((row[0], row[1]), ("30", "2"), "30 groups on 2 channels");
    // The row's CPU is read against the signature it prints beside it:
    // the ratio lies within what the cells' rounding allows (three
    // decimals for the two, two for the ratio).
    let cell = |name: &str| -> f64 {
        let i = header.iter().position(|h| *h == name).unwrap();
        row[i].parse().unwrap()
    };
    let (cpu, sig, ratio) = (cell("cpu_ms/group"), cell("sig_ms"), cell("cpu/sig"));
    assert!(sig > 0.0005, "{row:?}");
    let lowest = (cpu - 0.0005) / (sig + 0.0005) - 0.005;
    let highest = (cpu + 0.0005) / (sig - 0.0005) + 0.005;
    assert!(
        (lowest..=highest).contains(&ratio),
        "cpu/sig {ratio} is not {cpu} / {sig}: {row:?}"
    );

    line_starting(&stdout, "rss after bootstrap:");
    let api = line_starting(&stdout, "token API at 30 groups:");
    let (per_second, p50, p99) = (
        value_after(api, "groups:"),
        value_after(api, "p50"),
        value_after(api, "p99"),
    );
    assert!(per_second > 0.0 && p50 > 0.0 && p99 >= p50, "{api}");
    let idle = line_starting(&stdout, "idle scheduler wake-ups at 30 groups:");
    assert!(value_after(idle, "groups:") >= 0.0, "{idle}");

    // The same figures as JSON lines, each with where it was measured.
    let text = std::fs::read_to_string(&json_out).unwrap();
    let records: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let figure = |name: &str| {
        records
            .iter()
            .find(|r| r["figure"] == name)
            .unwrap_or_else(|| panic!("no {name} record in:\n{text}"))
    };
    let fields: [(&str, &[&str]); 5] = [
        ("signature", &["ms_per_op"]),
        ("login_schedule", &["grants", "ms"]),
        (
            "bootstrap",
            &[
                "wall_ms",
                "ms_per_group",
                "cpu_ms",
                "cpu_ms_per_group",
                "signature_ms",
                "signature_ops",
                "cpu_per_signature",
                "vm_rss_kib",
                "vm_hwm_kib",
                "rss_anon_kib",
                "rss_file_kib",
                "status_ms",
                "plan_30d_ms",
                "scrape_ms",
                "scrape_bytes",
                "scrape_peak_rise_kib",
                "scrape_vm_rss_kib",
            ],
        ),
        (
            "token_api",
            &["requests_per_second", "p50_ms", "p99_ms", "elapsed_ms"],
        ),
        ("idle_wakeups", &["wakeups", "per_minute", "waited_ms"]),
    ];
    for (name, keys) in fields {
        let record = figure(name);
        assert!(record["nproc"].as_u64().unwrap() >= 1, "{record}");
        assert!(
            record["cpu"].is_string() || record["cpu"].is_null(),
            "{record}"
        );
        for key in keys {
            assert!(
                record[key].as_f64().is_some_and(f64::is_finite),
                "{name}.{key} is not a number: {record}"
            );
        }
    }
    assert_eq!(figure("bootstrap")["complete"], true);
    // The bootstrap's yardstick is its own: timed before and after it, as
    // many signatures each time as the one at the start of the run.
    let (bootstrap, start) = (figure("bootstrap"), figure("signature"));
    assert_eq!(
        bootstrap["signature_ops"].as_u64().unwrap(),
        2 * start["ops"].as_u64().unwrap(),
        "{bootstrap}"
    );
    let per_signature = bootstrap["cpu_ms_per_group"].as_f64().unwrap()
        / bootstrap["signature_ms"].as_f64().unwrap();
    let written = bootstrap["cpu_per_signature"].as_f64().unwrap();
    assert!(
        (written - per_signature).abs() <= 1e-9 * per_signature,
        "{bootstrap}"
    );
    assert_eq!(figure("bootstrap")["live_groups"], 30);
}
