//! The ops kit on the real binary (jemalloc with its profiler, as shipped): with
//! `admin.profiling` each profiling endpoint answers a profile that parses (gzip, then the
//! pprof protobuf, decoded with the `pprof` crate's prost types) and has samples; without it
//! they are 404; the public listener never serves them. `/metrics` carries the standard
//! `process_*` families and jemalloc's own figures.

mod common;

use std::io::Read;

use common::bridge_process::BridgeProcess;
use common::sample;
use pprof::protos::{Message, Profile};

/// Publish enabled, so the test can make the bridge allocate and burn CPU.
const PUBLISH: &str = "[publish]\ntoken = \"test-token-0123456789\"\n";

fn profiling_bridge() -> BridgeProcess {
    BridgeProcess::start(PUBLISH, &[("SSE_BRIDGE_ADMIN__PROFILING", "true")])
}

async fn get(url: &str) -> reqwest::Response {
    reqwest::get(url).await.unwrap_or_else(|e| panic!("GET {url}: {e}"))
}

/// A gzipped pprof body: checks the gzip header, inflates, decodes the protobuf.
fn decode_pprof(body: &[u8]) -> Profile {
    assert!(body.len() > 20 && body[..2] == [0x1f, 0x8b], "not gzip: {} bytes", body.len());
    let mut raw = Vec::new();
    flate2::read::GzDecoder::new(body).read_to_end(&mut raw).expect("gunzip");
    Profile::decode(raw.as_slice()).expect("a perftools.profiles.Profile")
}

fn string(p: &Profile, i: i64) -> &str {
    &p.string_table[i as usize]
}

/// Checks what offline symbolization needs: every sampled location has an address in a mapping,
/// and the bridge's own binary is among the mappings (one per loaded segment) with its build
/// id. Returns the share of locations that fall in the bridge's binary.
fn check_symbolizable(p: &Profile) -> f64 {
    let binary: Vec<_> = p.mapping.iter().filter(|m| string(p, m.filename).ends_with("/sse-bridge")).collect();
    assert!(!binary.is_empty(), "no mapping of the binary: {:?}", p.mapping);
    assert!(binary.iter().all(|m| string(p, m.build_id).len() >= 16), "the binary's mappings carry no build id");
    assert!(!p.location.is_empty());
    let mut own = 0;
    for loc in &p.location {
        assert!(loc.address > 0 && loc.mapping_id > 0, "{loc:?}");
        own += usize::from(binary.iter().any(|m| m.id == loc.mapping_id));
    }
    own as f64 / p.location.len() as f64
}

/// Publishes `n` events of `size` bytes each (allocations the heap sampler can see, work the
/// CPU profiler can see).
async fn load(bridge: &BridgeProcess, n: usize, size: usize) {
    let body = "x".repeat(size);
    for i in 0..n {
        bridge.publish(&format!("load.{}", i % 50), body.clone()).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heap_and_cpu_profiles_parse_and_have_samples() {
    let bridge = profiling_bridge();
    // ~25 MB through the ring (which keeps up to 1 MiB per topic): dozens of live samples at
    // one per 512 KiB.
    load(&bridge, 400, 64 * 1024).await;

    let r = get(&bridge.admin_url("/debug/pprof/heap")).await;
    assert_eq!(r.status(), 200, "{:?}", r.text().await);
    assert_eq!(r.headers()["content-type"], "application/octet-stream");
    let heap = decode_pprof(&r.bytes().await.unwrap());
    let types: Vec<(&str, &str)> =
        heap.sample_type.iter().map(|t| (string(&heap, t.ty), string(&heap, t.unit))).collect();
    assert_eq!(types, [("inuse_space", "bytes")]);
    assert!(!heap.sample.is_empty(), "no heap samples");
    let live: i64 = heap.sample.iter().map(|s| s.value[0]).sum();
    assert!(live > 1 << 20, "sampled live heap {live} bytes, after 25 MB into the ring");
    assert!(check_symbolizable(&heap) > 0.5, "most allocation sites are the bridge's code");

    // CPU: two seconds while the bridge works.
    let url = bridge.admin_url("/debug/pprof/profile?seconds=2");
    let (cpu, ()) = tokio::join!(get(&url), load(&bridge, 3000, 1024));
    assert_eq!(cpu.status(), 200, "{:?}", cpu.text().await);
    let cpu = decode_pprof(&cpu.bytes().await.unwrap());
    assert!(!cpu.sample.is_empty(), "no CPU samples");
    let types: Vec<(&str, &str)> = cpu.sample_type.iter().map(|t| (string(&cpu, t.ty), string(&cpu, t.unit))).collect();
    assert_eq!(types, [("cpu", "nanoseconds")]);
    // The profiler's own signal-handler frames are cut: every sample's leaf is in the code
    // that was interrupted, and most of that is the bridge's.
    assert!(check_symbolizable(&cpu) > 0.5, "most sampled frames are the bridge's code");

    let r = get(&bridge.admin_url("/debug/pprof/profile?seconds=61")).await;
    assert_eq!(r.status(), 400);

    let dump: serde_json::Value = get(&bridge.admin_url("/debug/runtime")).await.json().await.unwrap();
    let tasks = &dump["tasks"];
    assert!(tasks["alive"].as_u64().unwrap() >= 4, "{dump}");
    assert_eq!(tasks["by_kind"]["sequencer_housekeeping_accept_loops"], 4, "{dump}");
    assert!(!dump["runtime"]["workers"].as_array().unwrap().is_empty(), "{dump}");
    assert!(dump["allocator"]["allocated"].as_u64().unwrap() > 0, "{dump}");
    assert!(dump["process"]["open_fds"].as_u64().unwrap() > 0, "{dump}");

    // Never on the public listener.
    for path in ["/debug/pprof/heap", "/debug/pprof/profile?seconds=1", "/debug/runtime"] {
        assert_eq!(get(&bridge.url(path)).await.status(), 404, "{path} on the public listener");
    }
    bridge.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn profiling_is_off_unless_configured() {
    let bridge = BridgeProcess::start("", &[]);
    for path in ["/debug/pprof/heap", "/debug/pprof/profile?seconds=1", "/debug/runtime"] {
        let r = get(&bridge.admin_url(path)).await;
        assert_eq!(r.status(), 404, "{path}");
        assert!(r.text().await.unwrap().contains("admin.profiling"), "{path}: the 404 says how to turn it on");
    }
    bridge.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_have_the_standard_process_families_and_allocator_figures() {
    let bridge = BridgeProcess::start(PUBLISH, &[]);
    load(&bridge, 50, 16 * 1024).await;
    let m = bridge.metrics().await;
    let v = |series: &str| sample(&m, series).unwrap_or_else(|| panic!("no {series} in:\n{m}"));
    assert!(m.contains("# TYPE process_cpu_seconds counter"), "{m}");
    assert!(v("process_cpu_seconds_total") > 0.0);
    let rss = v("process_resident_memory_bytes");
    assert!(rss > 1e6, "rss {rss}");
    assert!(v("process_virtual_memory_bytes") >= rss);
    let (open, max) = (v("process_open_fds"), v("process_max_fds"));
    assert!(open >= 4.0 && max >= open, "open {open} max {max}");
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
    let start = v("process_start_time_seconds");
    assert!(start > now - 120.0 && start <= now + 1.0, "start {start} now {now}");
    assert!(v("process_threads") >= 2.0);
    // jemalloc is the allocator: its figures nest as documented.
    let allocated = v("sse_bridge_heap_allocated_bytes");
    let active = v("sse_bridge_jemalloc_active_bytes");
    let resident = v("sse_bridge_jemalloc_resident_bytes");
    assert!(allocated > 0.0 && allocated <= active && active <= resident, "{allocated} {active} {resident}");
    assert!(resident <= rss * 1.05, "jemalloc resident {resident} beyond RSS {rss}");
    for name in [
        "sse_bridge_jemalloc_dirty_bytes",
        "sse_bridge_jemalloc_retained_bytes",
        "sse_bridge_jemalloc_mapped_bytes",
        "sse_bridge_jemalloc_metadata_bytes",
    ] {
        assert!(v(name) >= 0.0, "{name}");
    }
    assert_eq!(m.matches("# EOF").count(), 1, "one EOF, at the end");
    assert!(m.ends_with("# EOF\n"));
    bridge.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_cpu_profile_without_room_under_the_memory_budget() {
    // 64 MiB: far less than the ~170 MB the CPU profiler keeps from its first run on.
    let extra = format!("{PUBLISH}\n[memory]\nlimit = 67108864\n");
    let bridge = BridgeProcess::start(&extra, &[("SSE_BRIDGE_ADMIN__PROFILING", "true")]);
    let r = get(&bridge.admin_url("/debug/pprof/profile?seconds=1")).await;
    assert_eq!(r.status(), 503);
    assert!(r.text().await.unwrap().contains("memory.limit"));
    // The heap profile costs a few MB and stays available.
    assert_eq!(get(&bridge.admin_url("/debug/pprof/heap")).await.status(), 200);
    bridge.stop();
}
