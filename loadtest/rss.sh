# The fault matrix asks every row to hold the server's memory under a cap. Source this file and
# call `rss_check PID` while the server still runs: it prints the server's resident memory now
# and at its peak (VmHWM, the most it held since it started) and returns 1 when the peak is
# over RSS_CAP_MB (default 256: these runs serve at most 100k links; the 1M- and 10M-link
# figures are links_scale's).
rss_check() { # pid
  local now peak cap=${RSS_CAP_MB:-256}
  now=$(awk '/^VmRSS/{print int($2/1024)}' "/proc/$1/status")
  peak=$(awk '/^VmHWM/{print int($2/1024)}' "/proc/$1/status")
  echo "server RSS ${now} MiB, peak ${peak} MiB (cap ${cap} MiB)"
  [ "$peak" -le "$cap" ]
}
