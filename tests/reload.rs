//! Reloads: bad files rejected with file:line while the old table serves; good files swap
//! atomically under load; SIGHUP, the admin API and the file watcher all reload.

mod support;
use std::os::unix::ffi::OsStrExt;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::*;

fn link(id: &str, url: &str) -> String {
    format!(r#"{{"id":"{id}","creator":"c","campaign":"k","target":{{"type":"url","url":"{url}"}}}}"#)
}

/// Waits up to 30 s: a reload parses at `SCHED_IDLE`, so on a machine whose cores are busy
/// (other tests, another build) it waits for them.
fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let end = Instant::now() + Duration::from_secs(30);
    while !f() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn bad_files_are_rejected_with_their_line_and_the_old_table_keeps_serving() {
    let good = format!(
        "{}\n{}\n",
        link("a", "https://a.example/one"),
        link("b", "https://b.example/")
    );
    let s = Server::start("reload-bad", &good, &[("CARTLINK_WATCH_LINKS_MS", "0")]);
    let links = s.dir.join("links.jsonl");
    let bad_files: Vec<(String, &str)> = vec![
        (format!("{good}{{\"id\":\"c\",\"creator\":\n"), "links.jsonl:3:"),
        (String::new(), "no links"),
        (
            format!("{good}{}\n", link("a", "https://a.example/dup")),
            "links.jsonl:3: duplicate id `a` (first on line 1)",
        ),
        (
            format!(
                "{}\n{}\n",
                link("a", "http://a.example/"),
                link("b", "https://b.example/")
            ),
            "links.jsonl:1: target:",
        ),
        (
            format!("{good}{}\n", link("bad id", "https://x.example/")),
            "links.jsonl:3: id",
        ),
        (
            good.replace("\"creator\":\"c\"", "\"creator\":\"c\",\"colour\":\"red\"")
                .to_string(),
            "unknown field `colour`",
        ),
        (good[..good.len() / 2].to_string(), "links.jsonl:1:"),
        (
            format!("{}\n", link("a", "https://a.example//evil.example/x")),
            "a path may not start with `//`",
        ),
    ];
    for (n, (text, want)) in bad_files.iter().enumerate() {
        std::fs::write(&links, text).unwrap();
        s.signal("HUP");
        wait_for("the failure to be counted", || {
            s.metric("cartlink_config_reload_failures_total") == (n + 1) as f64
        });
        assert!(
            s.stderr().contains(want),
            "case {n}: want {want:?} in log:\n{}",
            s.stderr()
        );
        assert_eq!(s.metric("cartlink_config_generation"), 1.0);
        let r = s.get(&path_for("a"), &[("User-Agent", IPHONE)]);
        assert_eq!(r.status, 302);
        assert!(
            r.location().starts_with("https://a.example/one?cl_click="),
            "old table serves"
        );
    }
    // The admin API reports the same problem in its answer.
    let r = s.admin("POST", "/admin/reload", b"");
    assert_eq!(r.status, 422);
    assert!(r.body_text().contains("links.jsonl:1:"), "{}", r.body_text());
    // Then a good file swaps: new link served, removed link gone.
    std::fs::write(
        &links,
        format!(
            "{}\n{}\n",
            link("a", "https://a.example/two"),
            link("c", "https://c.example/")
        ),
    )
    .unwrap();
    s.signal("HUP");
    wait_for("generation 2", || s.metric("cartlink_config_generation") == 2.0);
    assert!(s
        .get(&path_for("a"), &[("User-Agent", IPHONE)])
        .location()
        .starts_with("https://a.example/two?"));
    assert_eq!(s.get(&path_for("c"), &[("User-Agent", IPHONE)]).status, 302);
    assert_eq!(s.get(&path_for("b"), &[("User-Agent", IPHONE)]).status, 404);
}

/// A reload applies the links, cookie, fallback and audience settings; one that finds other
/// settings changed says which, and that they wait for a restart.
#[test]
fn a_reload_names_the_settings_that_only_a_restart_applies() {
    let s = Server::start(
        "reload-restart-only",
        &(link("a", "https://brand.example/a") + "\n"),
        &[],
    );
    assert_eq!(s.metric("cartlink_config_restart_pending"), 0.0);
    std::fs::create_dir_all(s.dir.join("config")).unwrap();
    std::fs::write(s.dir.join("config/cartlink.toml"), "[cookie]\nname = \"cl_x\"\n").unwrap();
    s.signal("HUP");
    wait_for("the first reload", || s.metric("cartlink_config_generation") == 2.0);
    assert_eq!(
        s.metric("cartlink_config_restart_pending"),
        0.0,
        "the cookie is applied by reloads"
    );
    let r = s.get(&path_for("a"), &[("User-Agent", IPHONE)]);
    assert!(r.header("set-cookie").unwrap().starts_with("cl_x="), "{r:?}");
    std::fs::write(
        s.dir.join("config/cartlink.toml"),
        "[cookie]\nname = \"cl_x\"\n[http]\nmax_inflight = 10\n",
    )
    .unwrap();
    s.signal("HUP");
    wait_for("the second reload", || s.metric("cartlink_config_generation") == 3.0);
    assert_eq!(s.metric("cartlink_config_restart_pending"), 1.0);
    assert!(
        s.stderr().contains("settings=http") && s.stderr().contains("apply only at the next restart"),
        "{}",
        s.stderr()
    );
}

#[test]
fn mint_and_check_say_when_the_demo_key_signs_and_mint_keeps_sub_as_recorded() {
    let dir = scratch("mint");
    let links = dir.join("links.jsonl");
    std::fs::write(&links, format!("{}\n", link("a", "https://a.example/"))).unwrap();
    let run_with = |args: &[&str], keys: Option<&str>, extra: &[(&str, &str)]| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_cartlink"));
        for (name, _) in std::env::vars().filter(|(n, _)| n.starts_with("CARTLINK_")) {
            cmd.env_remove(name);
        }
        cmd.args(args)
            .current_dir(&dir)
            .env("CARTLINK_LINKS", &links)
            .envs(extra.iter().copied());
        if let Some(k) = keys {
            cmd.env("CARTLINK_SIGNING_KEYS", k);
        }
        let out = cmd.output().unwrap();
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        (out.status.success(), text(&out.stdout), text(&out.stderr))
    };
    let run = |args: &[&str], keys: Option<&str>| run_with(args, keys, &[]);
    let (ok, url, err) = run(&["mint", "a", "--sub", "reel 1&x=<y>"], None);
    assert!(ok, "{err}");
    assert!(err.contains("PUBLIC DEMO KEY"), "{err}");
    assert!(err.contains("recorded as `reel1xy`"), "{err}");
    assert!(url.trim_end().ends_with("?sub=reel1xy"), "{url}");
    let (ok, list, err) = run(&["mint", "--all"], None);
    assert!(
        ok && list.starts_with("a\t") && err.contains("PUBLIC DEMO KEY"),
        "{list} {err}"
    );
    let (ok, out, _) = run(&["check"], None);
    assert!(ok && out.contains("PUBLIC DEMO KEY"), "{out}");

    let key = "k1:MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY";
    let (ok, url, err) = run(&["mint", "a", "--sub", "reel-1"], Some(key));
    assert!(ok && err.is_empty(), "{err}");
    assert!(url.trim_end().ends_with("?sub=reel-1"), "{url}");
    let (ok, out, _) = run(&["check"], Some(key));
    assert!(ok && !out.contains("DEMO"), "{out}");
    let (ok, _, err) = run(&["mint", "a", "--sub", "&&&"], Some(key));
    assert!(!ok && err.contains("--sub"), "{err}");
    // A misspelt override is named, not silently ignored.
    let (ok, _, err) = run_with(&["check"], Some(key), &[("CARTLINK_HTTP_MAX_INFLIGT", "10")]);
    assert!(
        ok && err.contains("CARTLINK_HTTP_MAX_INFLIGT is not a cartlink setting"),
        "{err}"
    );
    // Another program's variable that is not UTF-8 is none of cartlink's business.
    let out = Command::new(env!("CARGO_BIN_EXE_cartlink"))
        .arg("check")
        .current_dir(&dir)
        .env("CARTLINK_LINKS", &links)
        .env("NOT_UTF8", std::ffi::OsStr::from_bytes(b"caf\xe9"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn check_command_names_file_and_line() {
    let dir = scratch("check");
    let links = dir.join("links.jsonl");
    std::fs::write(
        &links,
        format!("{}\n{}\n", link("a", "https://a.example/"), "{\"id\":1}"),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_cartlink"))
        .arg("check")
        .current_dir(&dir)
        .env("CARTLINK_LINKS", &links)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("links.jsonl:2:"), "{err}");
    std::fs::write(&links, format!("{}\n", link("a", "https://a.example/"))).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_cartlink"))
        .arg("check")
        .current_dir(&dir)
        .env("CARTLINK_LINKS", &links)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn the_links_file_is_watched() {
    let s = Server::start(
        "reload-watch",
        &format!("{}\n", link("a", "https://a.example/")),
        &[("CARTLINK_WATCH_LINKS_MS", "50")],
    );
    assert_eq!(s.get(&path_for("new"), &[("User-Agent", IPHONE)]).status, 404);
    std::fs::write(
        s.dir.join("links.jsonl"),
        format!(
            "{}\n{}\n",
            link("a", "https://a.example/"),
            link("new", "https://n.example/")
        ),
    )
    .unwrap();
    wait_for("the watcher to load the new link", || {
        s.get(&path_for("new"), &[("User-Agent", IPHONE)]).status == 302
    });
    assert_eq!(s.metric("cartlink_config_generation"), 2.0);
}

#[test]
fn a_table_put_through_the_admin_api_is_not_loaded_again_by_the_watcher() {
    let s = Server::start(
        "reload-put-watch",
        &format!("{}\n", link("a", "https://a.example/")),
        &[("CARTLINK_WATCH_LINKS_MS", "50")],
    );
    let two = format!(
        "{}\n{}\n",
        link("a", "https://a.example/"),
        link("b", "https://b.example/")
    );
    assert_eq!(s.admin("PUT", "/admin/links", two.as_bytes()).status, 200);
    assert_eq!(s.metric("cartlink_config_generation"), 2.0);
    // Ten watcher intervals: the file changed, but into what already serves.
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        s.metric("cartlink_config_generation"),
        2.0,
        "reloaded the PUT's own file again"
    );
    // An edit after the PUT is still picked up.
    std::fs::write(
        s.dir.join("links.jsonl"),
        format!("{two}{}\n", link("c", "https://c.example/")),
    )
    .unwrap();
    wait_for("the watcher to load the edit", || {
        s.get(&path_for("c"), &[("User-Agent", IPHONE)]).status == 302
    });
    assert_eq!(s.metric("cartlink_config_generation"), 3.0);
}

/// 100 swaps through `PUT /admin/links` while clients hammer: zero failed requests, and
/// every answer comes whole from the old or the new table.
#[test]
fn reload_under_load_fails_no_request() {
    let v = |n: u32| {
        format!(
            "{}\n{}\n",
            link("a", &format!("https://a.example/v{n}")),
            link("b", &format!("https://b.example/v{n}"))
        )
    };
    let s = Server::start("reload-load", &v(0), &[("CARTLINK_WATCH_LINKS_MS", "0")]);
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicU64::new(0));
    let clients: Vec<_> = (0..3)
        .map(|t| {
            let (stop, ok, addr) = (stop.clone(), ok.clone(), s.public);
            std::thread::spawn(move || {
                let mut conn = Conn::open(addr).unwrap();
                let mut versions = std::collections::HashSet::new();
                while !stop.load(Ordering::Relaxed) {
                    let id = if t % 2 == 0 { "a" } else { "b" };
                    let r = conn
                        .get(&path_for(id), IPHONE)
                        .expect("no connection error during reloads");
                    assert_eq!(r.status, 302, "{r:?}");
                    let loc = r.location();
                    let prefix = format!("https://{id}.example/v");
                    let rest = loc
                        .strip_prefix(&prefix)
                        .unwrap_or_else(|| panic!("answer from neither table: {loc}"));
                    let n: u32 = rest.split('?').next().unwrap().parse().unwrap();
                    assert!(n <= 100, "{loc}");
                    versions.insert(n);
                    ok.fetch_add(1, Ordering::Relaxed);
                }
                versions.len()
            })
        })
        .collect();
    // RSS after the first 10 reloads (the clients' connections, the click queue and the
    // allocator's caches warmed) against after all 100: the fault matrix allows 5 % drift.
    let pid = s.child.id();
    let mut warm_rss = 0;
    for n in 1..=100 {
        let r = s.admin("PUT", "/admin/links", v(n).as_bytes());
        assert_eq!(r.status, 200, "{}", r.body_text());
        if n == 10 {
            warm_rss = status_kb(pid, "VmRSS:");
        }
    }
    let rss = status_kb(pid, "VmRSS:");
    eprintln!("RSS after 10 reloads {warm_rss} kB, after 100 {rss} kB");
    assert!(
        rss * 100 <= warm_rss * 105,
        "RSS drifted from {warm_rss} kB after 10 reloads to {rss} kB after 100"
    );
    // One more request per client after the last swap must come from the newest table.
    std::thread::sleep(Duration::from_millis(50));
    stop.store(true, Ordering::Relaxed);
    let seen: Vec<usize> = clients.into_iter().map(|c| c.join().expect("client thread")).collect();
    assert!(ok.load(Ordering::Relaxed) > 100, "the clients kept going");
    assert!(
        seen.iter().all(|&n| n > 1),
        "clients saw several table versions: {seen:?}"
    );
    assert_eq!(s.metric("cartlink_config_generation"), 101.0);
    assert!(s
        .get(&path_for("a"), &[("User-Agent", IPHONE)])
        .location()
        .starts_with("https://a.example/v100?"));
    // The admin PUT wrote the file, so a restart or SIGHUP serves the same table.
    assert_eq!(std::fs::read_to_string(s.dir.join("links.jsonl")).unwrap(), v(100));
    // A bad body is refused with its line and changes nothing.
    let r = s.admin(
        "PUT",
        "/admin/links",
        format!("{}\nnot json\n", link("a", "https://a.example/x")).as_bytes(),
    );
    assert_eq!(r.status, 422);
    assert!(r.body_text().contains("request body:2:"), "{}", r.body_text());
    assert_eq!(s.metric("cartlink_config_generation"), 101.0);
}

/// Sum of `AnonHugePages` over the process's mappings, in kB.
fn huge_kb(pid: u32) -> u64 {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap();
    smaps
        .lines()
        .filter_map(|l| l.strip_prefix("AnonHugePages:"))
        .map(|kb| kb.trim().trim_end_matches("kB").trim().parse::<u64>().unwrap())
        .sum()
}

fn long_links(n: usize, tag: &str) -> String {
    let pad = "p".repeat(700);
    (0..n)
        .map(|i| link(&format!("{tag}{i}"), &format!("https://shop.example/{tag}/{i}?{pad}")) + "\n")
        .collect()
}

/// The links (not only their index) are read at random by every redirect: the served
/// process keeps them on huge pages, from the first load and after a reload, and gives the
/// old table's memory back after the reload.
#[test]
fn the_links_table_is_on_huge_pages_after_load_and_reload_and_the_old_one_is_given_back() {
    let thp = std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled").unwrap_or_default();
    if thp.is_empty() || thp.contains("[never]") {
        eprintln!("transparent huge pages off here: not checked");
        return;
    }
    // 30k links of ~800 bytes: ~24 MiB of links, against a 1 MiB slot array.
    let s = Server::start("reload-huge", &long_links(30_000, "a"), &[]);
    let pid = s.child.id();
    let first = huge_kb(pid);
    assert!(first >= 12 << 10, "AnonHugePages {first} kB after load");
    // The first answers allocate what a serving process keeps (caches, the queue, the unique
    // filter's pages): in the baseline, so only the table's memory is compared below.
    for i in 0..3 {
        assert_eq!(
            s.get(&path_for(&format!("a{i}")), &[("User-Agent", IPHONE)]).status,
            302
        );
    }
    let first_rss = status_kb(pid, "VmRSS:");
    std::fs::write(s.dir.join("links.jsonl"), long_links(30_000, "b")).unwrap();
    s.signal("HUP");
    wait_for("the reload", || s.metric("cartlink_config_generation") == 2.0);
    assert_eq!(s.get(&path_for("b29999"), &[("User-Agent", IPHONE)]).status, 302);
    assert_eq!(s.get(&path_for("a1"), &[("User-Agent", IPHONE)]).status, 404);
    let after = huge_kb(pid);
    assert!(after >= 12 << 10, "AnonHugePages {after} kB after the reload");
    // The old table's ~24 MiB go back to the kernel once it is freed: its arena is purged
    // then (about 3 s after the swap here). Left to jemalloc's decay, RSS came back 13-20 s
    // after the swap.
    let loaded = status_kb(pid, "VmRSS:");
    let end = Instant::now() + Duration::from_secs(10);
    while status_kb(pid, "VmRSS:") > first_rss + (8 << 10) {
        let now = status_kb(pid, "VmRSS:");
        assert!(
            Instant::now() < end,
            "RSS {now} kB 10 s after the reload ({loaded} kB just after it, {first_rss} kB after the first load)"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn status_kb(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find_map(|l| l.strip_prefix(field)).unwrap();
    line.trim().trim_end_matches("kB").trim().parse().unwrap()
}
