#!/usr/bin/env bash
# Fuzz smoke run: every target for SECONDS (default 60, the fault matrix's CI figure) on a
# scratch copy of its seed corpus.
# Stable Rust only: cargo-fuzz needs nightly flags (-Zsanitizer=address), which stable accepts
# with RUSTC_BOOTSTRAP=1. A crash leaves its input in fuzz/artifacts/<target>/ and fails.
#
#   bash fuzz/smoke.sh            # 60 s per target (CI)
#   SECONDS_PER_TARGET=3600 bash fuzz/smoke.sh   # the longer pre-release run
set -euo pipefail
cd "$(dirname "$0")"
per=${SECONDS_PER_TARGET:-60}
export RUSTC_BOOTSTRAP=1
if ! cargo fuzz --version >/dev/null 2>&1; then
  # stdin from /dev/null: cargo's probe runs `rustc -`, which reads whatever stdin the caller
  # left open (seen: a background CI run fed it the shell's earlier output, and it failed).
  cargo install cargo-fuzz --locked --version 0.13.2 </dev/null
fi
cargo fuzz build -O
for t in token cookie links_line redirect; do
  rm -rf "corpus-run/$t" && mkdir -p "corpus-run/$t"
  cp "corpus/$t"/* "corpus-run/$t/"
  echo "fuzz $t for ${per}s"
  rc=0
  cargo fuzz run -O "$t" "corpus-run/$t" -- -max_total_time="$per" -max_len=4096 >"corpus-run/$t.log" 2>&1 || rc=$?
  grep -E '^Done|ERROR|panicked' "corpus-run/$t.log" || true
  if [ "$rc" -ne 0 ]; then
    tail -40 "corpus-run/$t.log"
    echo "fuzz $t failed (exit $rc); input in fuzz/artifacts/$t/"
    exit 1
  fi
done
rm -rf corpus-run
echo "fuzz smoke: 4 targets, ${per}s each, no crash"
