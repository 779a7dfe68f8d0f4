#!/usr/bin/env bash
# Mutation testing with mutmut (configuration: [tool.mutmut] in pyproject.toml).
#
#   scripts/mutation.sh [MODULE...]     e.g. scripts/mutation.sh workflow/_runstate.py workflow/_graph.py
#
# Mutates the given modules (default: every module of workflow/), runs for each mutant the fast
# tests (memory and SQLite) that executed the mutated function, in ONE worker process, and prints
# per module: killed / survived / equivalent / timeout / no tests, and the score
#   (killed + timeout) / (all - equivalent)      (a timeout: the mutant was noticed)
# and "secs", the time its mutants took (mutmut's first step, running the fast tests once to
# learn which test executes which function, takes about a minute more and is kept in mutants/).
# Equivalent mutants (no test can tell them apart: scripts/mutation-equivalent.txt says why)
# are listed there by name. Survivors are listed at the end; `mutmut show NAME` (run in this
# directory) shows one. Results stay in mutants/ (git-ignored); delete it for a clean run.
set -euo pipefail
cd "$(dirname "$0")/.."

modules=("$@")
if [ ${#modules[@]} -eq 0 ]; then
    mapfile -t modules < <(ls workflow/*.py | grep -v -e '/testing\.py$')
fi

# the fast tests only: no PostgreSQL (tests that need it skip), no Kafka, and not as in CI
# (where a missing PostgreSQL fails a test instead of skipping it)
unset CI WORKFLOW_TEST_POSTGRES_URL WORKFLOW_TEST_KAFKA_BOOTSTRAP

# Incremental: a module already in mutants/ has only its undecided mutants run again (not yet
# run, survived, no tests: e.g. after adding tests); killed ones stay killed until mutmut sees
# their function change. MUTATION_FRESH=1 (or deleting mutants/) runs everything again.
names=()
for module in "${modules[@]}"; do
    module=${module%.py}
    meta="mutants/${module}.py.meta"
    if [ -f "$meta" ] && [ -z "${MUTATION_FRESH:-}" ]; then
        mapfile -t -O "${#names[@]}" names < <(python -c '
import json, sys
codes = json.load(open(sys.argv[1]))["exit_code_by_key"]
print("\n".join(n for n, c in codes.items() if c not in (1, 3, 36, -24, 24, 152, 255)))
' "$meta")
    else
        names+=("${module//\//.}.*")
    fi
done
mapfile -t names < <(printf '%s\n' "${names[@]}" | grep -v '^$' || true)
if [ ${#names[@]} -eq 0 ]; then
    echo "== every mutant of these modules was already decided (MUTATION_FRESH=1 reruns them)"
fi

start=$(date +%s)
# mutmut's whole output goes to mutants/mutmut.log (its progress line is rewritten in place)
mkdir -p mutants
if [ ${#names[@]} -gt 0 ] && ! mutmut run --max-children 1 "${names[@]}" >mutants/mutmut.log 2>&1; then
    tr '\r' '\n' <mutants/mutmut.log | grep -v -e '^[⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏]' | tail -n 40
    echo "mutmut run failed (mutants/mutmut.log)" >&2
    exit 1
fi
echo "== mutmut took $(( $(date +%s) - start )) s"

python - "${modules[@]}" <<'PY'
import json
import sys
from collections import Counter
from pathlib import Path

status = {1: "killed", 3: "killed", 0: "survived", 5: "no tests", 33: "no tests",
          36: "timeout", -24: "timeout", 24: "timeout", 152: "timeout", 255: "timeout",
          37: "type check", None: "not checked"}
equivalent: dict[str, str] = {}
for line in Path("scripts/mutation-equivalent.txt").read_text().splitlines():
    if line.strip() and not line.startswith("#"):
        name, _, why = line.partition(" ")
        equivalent[name] = why.strip()

print(f"{'module':28} {'mutants':>7} {'killed':>6} {'survived':>8} {'equiv':>5} {'timeout':>7} "
      f"{'no tests':>8} {'secs':>5}  score")
survivors: list[str] = []
seen: set[str] = set()
for module in sys.argv[1:]:
    meta = Path("mutants") / (module if module.endswith(".py") else module + ".py")
    meta = meta.with_name(meta.name + ".meta")
    data = json.loads(meta.read_text())
    codes = data["exit_code_by_key"]
    seconds = sum(data["durations_by_key"].values())
    counts: Counter[str] = Counter()
    for name, code in codes.items():
        verdict = status.get(code, "suspicious")
        if name in equivalent:
            seen.add(name)
            if verdict == "killed":  # a test tells it apart after all: the list is stale
                print(f"   note: {name} is listed as equivalent but was killed")
            else:  # a "timeout" of an equivalent mutant is a slow machine, not a detection
                verdict = "equivalent"
        if verdict not in ("killed", "equivalent", "timeout", "not checked"):
            survivors.append(f"{verdict:9} {name}")
        counts[verdict] += 1
    considered = sum(counts.values()) - counts["equivalent"]
    caught = counts["killed"] + counts["timeout"]
    score = f"{100 * caught / considered:.1f}%" if considered else "-"
    other = {k: v for k, v in counts.items()
             if k not in ("killed", "survived", "equivalent", "timeout", "no tests")}
    print(f"{module:28} {len(codes):7} {counts['killed']:6} {counts['survived']:8} "
          f"{counts['equivalent']:5} {counts['timeout']:7} {counts['no tests']:8} {seconds:5.0f}  "
          f"{score}" + (f"  {other}" if other else ""))
if survivors:
    print("\nnot killed (mutmut show NAME):")
    print("\n".join(survivors))
PY
