#!/usr/bin/env bash
# Bronze with the default driver (Spark's 1g heap): wall time and the driver JVM's
# garbage collection, sampled with jstat every 2 s.
#
#   benchmarks/driver_memory.sh USERS DAYS [RUNS]
#
# Generates the landing files once (seed 7, default faults) into a temporary
# directory, then runs `lakeward run bronze --all-dates` RUNS times (default 1),
# each on a fresh data root holding a copy of them. Prints, per run: wall seconds,
# full collections, seconds in full collections, seconds in all collections, and
# the old generation after full collections (mean and max of the samples that
# follow one), which is what the heap keeps live. LAKEWARD_CONF_DIR and
# PYTHONPATH pass through, to compare a configuration or a checkout.
set -euo pipefail
users=${1:?users}; days=${2:?days}; runs=${3:-1}
here=$(cd "$(dirname "$0")/.." && pwd)
lakeward="$here/.venv/bin/lakeward"
work=$(mktemp -d)
pid=""
trap '[ -n "$pid" ] && kill "$pid" 2>/dev/null; rm -rf "$work"' EXIT
LAKEWARD_HOME="$work/source" "$lakeward" generate --seed 7 --users "$users" --days "$days" \
  2>"$work/generate.log" || { cat "$work/generate.log" >&2; exit 1; }
echo "landing: $(du -sh "$work/source/landing" | cut -f1), $(cat "$work"/source/landing/*/*.jsonl | wc -l) lines"
for run in $(seq 1 "$runs"); do
  root="$work/run$run"
  mkdir -p "$root" && cp -a "$work/source/landing" "$root/landing"
  # The end time and exit status are taken by the run itself, not after the sampling loop.
  (
    start=$(date +%s.%N)
    status=0
    LAKEWARD_HOME="$root" "$lakeward" run bronze --all-dates >"$work/run$run.log" 2>&1 || status=$?
    echo "$status $(echo "$(date +%s.%N) - $start" | bc)" >"$work/result$run"
  ) &
  pid=$!
  # The driver JVM is the lakeward process's child (spark-submit execs java under its pid);
  # Spark's short-lived launcher JVM is not a child of it.
  jvm=""
  while [ -z "$jvm" ] && kill -0 "$pid" 2>/dev/null; do
    sleep 1
    python=$(pgrep -P "$pid" -f lakeward || true)
    [ -n "$python" ] && jvm=$(pgrep -P "$python" -f org.apache.spark.deploy.SparkSubmit || true)
  done
  : >"$work/gc$run"
  while [ -n "$jvm" ] && kill -0 "$jvm" 2>/dev/null; do
    jstat -gc "$jvm" 2>/dev/null | tail -1 >>"$work/gc$run" || true
    sleep 2
  done
  wait "$pid"; pid=""
  read -r status wall <"$work/result$run"
  if [ ! -s "$work/gc$run" ]; then
    echo "run $run: exit $status, no sample of the driver JVM (see $work/run$run.log)" >&2
    exit 1
  fi
  # jstat -gc columns (JDK 17): OU is 8, FGC 15, FGCT 16, GCT last.
  awk -v run="$run" -v wall="$wall" -v status="$status" '
    $15 ~ /^[0-9]+$/ {
      if ($15 > fgc && NR > 1) { after += $8; n++; if ($8 > most) most = $8 }
      fgc = $15; fgct = $16; gct = $NF
    }
    END {
      printf "run %d: exit %d, %.1f s, %d full GCs, %.1f s in full GCs, %.1f s in all GCs, " \
             "old generation after full GCs: mean %.0f MiB, max %.0f MiB\n",
             run, status, wall, fgc, fgct, gct, (n ? after / n : 0) / 1024, most / 1024
    }' "$work/gc$run"
  rm -rf "$root"
done
