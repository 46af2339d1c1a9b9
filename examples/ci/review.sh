#!/bin/sh
# Review a pull request's change to the endpoint map and the policy with permgate:
#   1. check-map  the new map is valid;
#   2. lint       the new policy's roles against the new map (findings fail the check);
#   3. test       the suite of expected decisions passes (skipped if there is none);
#   4. diff       who gains and loses which endpoint on which tenant, as markdown for a
#                 pull-request comment (written to $REPORT and printed).
# The old side of the diff is the base branch: `git show BASE:endpoint_map.yaml`.
#
# Usage, from anywhere inside the repository:
#   examples/ci/review.sh [BASE_REF]          # default: origin/main
# Settings (environment variables, all optional):
#   PERMGATE         the command to run           (default: permgate)
#   PERMGATE_MAP     the map, from the repo root  (default: endpoint_map.yaml)
#   PERMGATE_POLICY  the policy                   (default: policy.yaml)
#   PERMGATE_SUITE   the decision suite           (default: decisions.yaml; skipped if absent)
#   PERMGATE_REPORT  where the markdown goes      (default: permgate-review.md)
#   PERMGATE_FAIL_ON_ACCESS_CHANGE=1  also fail when access changes (default: report only)
# Exit status: 0 when every check passes (access changes are reported, not failed,
# unless asked), 1 when a check fails, 2 on a usage or git problem.
set -eu

BASE=${1:-origin/main}
PERMGATE=${PERMGATE:-permgate}
MAP=${PERMGATE_MAP:-endpoint_map.yaml}
POLICY=${PERMGATE_POLICY:-policy.yaml}
SUITE=${PERMGATE_SUITE:-decisions.yaml}
REPORT=${PERMGATE_REPORT:-permgate-review.md}
FAIL_ON_CHANGE=${PERMGATE_FAIL_ON_ACCESS_CHANGE:-0}

top=$(git rev-parse --show-toplevel) || { echo "review.sh: not inside a git repository" >&2; exit 2; }
cd "$top"
git rev-parse --verify --quiet "$BASE^{commit}" >/dev/null || {
    echo "review.sh: base ref $BASE not found (fetch it first, e.g. git fetch origin main)" >&2
    exit 2
}
for file in "$MAP" "$POLICY"; do
    [ -f "$file" ] || { echo "review.sh: $file: no such file in $top" >&2; exit 2; }
done

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT INT TERM
failed=0

# A file the base branch does not have yet: the new one (its map), or an empty policy,
# so that everything it grants shows as gained.
if ! git show "$BASE:$MAP" >"$work/base-map.yaml" 2>/dev/null; then
    cp "$MAP" "$work/base-map.yaml"
fi
if ! git show "$BASE:$POLICY" >"$work/base-policy.yaml" 2>/dev/null; then
    echo "accounts: []" >"$work/base-policy.yaml"
fi

echo "== permgate check-map $MAP"
$PERMGATE check-map "$MAP" || failed=1

echo "== permgate lint $POLICY --map $MAP"
$PERMGATE lint "$POLICY" --map "$MAP" || failed=1

if [ -f "$SUITE" ]; then
    echo "== permgate test $SUITE"
    $PERMGATE test "$SUITE" || failed=1
else
    echo "== permgate test: no $SUITE, skipped"
fi

echo "== permgate diff ($BASE -> working tree)"
set +e
$PERMGATE diff --map "$work/base-map.yaml" --to-map "$MAP" \
    --policy "$work/base-policy.yaml" --to-policy "$POLICY" --markdown >"$REPORT"
status=$?
set -e
case $status in
    0) ;;
    1) [ "$FAIL_ON_CHANGE" = 1 ] && failed=1 ;;
    *) failed=1 ;;
esac
cat "$REPORT"

exit $failed
