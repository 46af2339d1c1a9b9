#!/usr/bin/env bash
# What a user gets from `pip install permgate`, checked the way a user would meet it:
#
#   1. build the wheel (pip wheel --no-deps) from a clean copy of pyproject.toml,
#      README.md and src/ (what the Dockerfile builds from; no stale build/ folder);
#   2. install it into a fresh virtual environment outside the repository;
#   3. from an empty directory, `permgate --version`, then `permgate demo --port 0
#      --admin-port 0`; every `curl -i` line the demo prints is run as printed (with
#      the printed token variables) and must answer the status, and for a refusal the
#      reason, that the comment line above it announces (`... -> 403 missing_permission`);
#   4. stop the demo with Ctrl-C (SIGINT): it must exit 0 and leave the directory empty.
#
#   bash .ci/wheel-check.sh        (needs python3 with venv, pip reaching PyPI, curl)
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD
PYTHON=${PYTHON:-python3}
START=$SECONDS
step() { printf '\n== [%3ds] wheel-check: %s\n' "$((SECONDS - START))" "$*"; }
die() { echo "wheel-check: FAIL: $*" >&2; exit 1; }
# pip here lists local index folders that lack most names; its notes about them are noise.
quiet_pip() { "$@" 2> >(grep -v "is ignored: it is neither" >&2); }

command -v curl >/dev/null || die "curl is not installed (apt-get install curl)"

WORK=$(mktemp -d -t permgate-wheel-check.XXXXXX)
DEMO_PID=""
cleanup() {
  if [[ -n $DEMO_PID ]] && kill -0 "$DEMO_PID" 2>/dev/null; then
    kill -KILL "$DEMO_PID" 2>/dev/null || true
    wait "$DEMO_PID" 2>/dev/null || true
  fi
  rm -rf "$WORK"
}
trap cleanup EXIT

# ------------------------------------------------------------------------------ build
step "build the wheel"
mkdir -p "$WORK/source"
cp "$ROOT/pyproject.toml" "$ROOT/README.md" "$WORK/source/"
cp -R "$ROOT/src" "$WORK/source/src"
find "$WORK/source" \( -name __pycache__ -o -name '*.egg-info' \) -prune -exec rm -rf {} +
quiet_pip "$PYTHON" -m pip wheel --no-deps -q -w "$WORK/dist" "$WORK/source" \
  || die "pip wheel failed"
wheels=("$WORK"/dist/permgate-*.whl)
[[ ${#wheels[@]} == 1 && -f ${wheels[0]} ]] || die "want one permgate wheel, got: ${wheels[*]}"
WHEEL=${wheels[0]}
VERSION=$(basename "$WHEEL" | cut -d- -f2)
echo "built $(basename "$WHEEL")"
listing=$("$PYTHON" -m zipfile -l "$WHEEL")
for member in permgate/data/endpoint_map.yaml permgate/py.typed; do
  grep -q "^$member " <<<"$listing" || die "the wheel lacks $member"
done
echo "the wheel carries permgate/data/endpoint_map.yaml and permgate/py.typed"

# ---------------------------------------------------------------------------- install
step "install it into a fresh venv outside the repository"
"$PYTHON" -m venv "$WORK/venv"
quiet_pip "$WORK/venv/bin/pip" install -q --disable-pip-version-check "$WHEEL" \
  || die "pip install of the wheel failed"
PERMGATE=$WORK/venv/bin/permgate
[[ -x $PERMGATE ]] || die "the wheel installed no permgate command"

EMPTY=$WORK/empty
mkdir "$EMPTY"
# Only the installed package may be found: no source tree, no PYTHONPATH, no settings.
run_installed() { (cd "$EMPTY" && exec env -u PYTHONPATH "$@"); }

step "permgate --version"
printed=$(run_installed "$PERMGATE" --version) || die "permgate --version failed"
echo "$printed"
[[ $printed == "permgate $VERSION" ]] || die "--version printed '$printed', want 'permgate $VERSION'"

# ------------------------------------------------------------------------------- demo
step "permgate demo --port 0 --admin-port 0, from an empty directory"
OUT=$WORK/demo.out
ERR=$WORK/demo.err
# exec all the way down, so that $! is permgate itself and gets the Ctrl-C.
(cd "$EMPTY" && exec env -u PYTHONPATH "$PERMGATE" demo --port 0 --admin-port 0) \
  </dev/null >"$OUT" 2>"$ERR" &
DEMO_PID=$!
deadline=$((SECONDS + 60))
until grep -q "Press Ctrl-C" "$OUT"; do
  kill -0 "$DEMO_PID" 2>/dev/null || { cat "$OUT" "$ERR" >&2; die "permgate demo exited early"; }
  ((SECONDS < deadline)) || { cat "$OUT" "$ERR" >&2; die "permgate demo not ready in 60 s"; }
  sleep 0.2
done
cat "$OUT"

map=$(sed -n 's/^  endpoint map //p' "$OUT")
[[ $map == "$WORK/venv/"* ]] || die "the demo serves '$map', not the map inside the installed package"

# The printed token variables, exported for the curl lines that name them.
while IFS= read -r assignment; do
  export "${assignment?}"
done < <(grep -E '^[A-Z]+=pgt_[A-Za-z0-9_-]+$' "$OUT")

step "the demo's curl lines, as printed"
expectation=""
checked=()
while IFS= read -r line; do
  if [[ $line =~ ^#.*-\>\ ([0-9]{3})(\ ([a-z_]+))?$ ]]; then
    expectation="${BASH_REMATCH[1]} ${BASH_REMATCH[3]}"
    continue
  fi
  [[ $line == "curl -i "* ]] || { expectation=""; continue; }
  [[ -n $expectation ]] || die "no '-> STATUS' comment above the printed line: $line"
  read -r want_status want_reason <<<"$expectation"
  # Run the line as printed, with -i (headers) swapped for the status code alone.
  status=$(eval "curl -sS -o '$WORK/body' -w '%{http_code}' --max-time 10 ${line#curl -i }") \
    || die "curl failed: $line"
  reason=$("$PYTHON" -c 'import json, sys
try:
    print(json.load(open(sys.argv[1])).get("reason") or "")
except ValueError:
    print("")' "$WORK/body")
  printf '%s %-22s <- %s\n' "$status" "$reason" "$line"
  [[ $status == "$want_status" ]] || die "answered $status, want $want_status: $line"
  [[ -z $want_reason || $reason == "$want_reason" ]] \
    || die "reason '$reason', want '$want_reason': $line"
  checked+=("$want_status${want_reason:+ $want_reason}")
  expectation=""
done <"$OUT"

# The four outcomes a user is promised must all have been printed and checked.
for outcome in "200" "401 missing_credentials" "403 tenant_out_of_scope" "403 missing_permission"; do
  grep -qx "$outcome" < <(printf '%s\n' "${checked[@]}") \
    || die "the demo printed no line for '$outcome'"
done

# ------------------------------------------------------------------------------- stop
step "stop the demo (Ctrl-C)"
kill -INT "$DEMO_PID"
code=0
for _ in $(seq 1 150); do
  kill -0 "$DEMO_PID" 2>/dev/null || break
  sleep 0.2
done
kill -0 "$DEMO_PID" 2>/dev/null && die "permgate demo did not stop within 30 s of Ctrl-C"
wait "$DEMO_PID" || code=$?
DEMO_PID=""
((code == 0)) || { cat "$ERR" >&2; die "permgate demo exited $code after Ctrl-C, want 0"; }
leftovers=$(ls -A "$EMPTY")
[[ -z $leftovers ]] || die "the demo left files in the current directory: $leftovers"

step "all green: permgate $VERSION installs from its wheel and its demo works from an empty directory"
