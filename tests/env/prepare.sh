#!/usr/bin/env bash
# Build the test environment into a cache outside the repo: kube-apiserver, kube-controller-manager,
# kubelet, kube-scheduler, etcd, helm, prometheus, promtool (from their Go modules, versions in tests/env/versions.env),
# a Python venv with the SMTP/DKIM tools, and the test node's pieces: Debian's containerd, runc and
# CNI plugins (apt-get, when missing), busybox-static (unpacked, for the app image) and the sandbox
# ("pause") binary. Idempotent: what is already built is skipped, so a second run
# takes seconds. The first run takes several minutes on 2 cores (see docs/testing.md).
#
# Usage:
#   bash tests/env/prepare.sh               build what is missing, progress on stderr
#   eval "$(bash tests/env/prepare.sh --print-env)"   same, then export MAILROOM_TESTENV_* here
#
# Output: $MAILROOM_TESTENV_DIR = ${XDG_CACHE_HOME:-$HOME/.cache}/mailroom/testenv/<k8s version>-<hash>
#   bin/    kube-apiserver kube-controller-manager kubelet kube-scheduler etcd helm helm-docs krew prometheus
#           promtool external-dns dashboard-check cargo-fuzz cargo-deny pause busybox
#   crds/   dnsendpoints.externaldns.k8s.io.yaml (external-dns' CRD, from its module)
#   venv/   python with aiosmtpd, dkimpy, cryptography, dnspython
#   env.sh  exports MAILROOM_TESTENV_DIR, MAILROOM_TESTENV_BIN, MAILROOM_TESTENV_PYTHON
# <hash> is the first 12 hex digits of sha256(versions.env); tests/support computes the same path.
# bin/* and venv are symlinks into testenv/build/<component>-<hash of its own versions>/, so changing
# one version rebuilds only that component.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
print_env=false
for arg in "$@"; do
    case "$arg" in
    --print-env) print_env=true ;;
    -h | --help)
        sed -n '2,17p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
        exit 0
        ;;
    *)
        echo "prepare.sh: unknown argument '$arg' (try --help)" >&2
        exit 2
        ;;
    esac
done

# shellcheck source=SCRIPTDIR/versions.env
source "$here/versions.env"

start_all=$SECONDS
log() { echo "testenv: $*" >&2; }
die() {
    echo "testenv: error: $*" >&2
    exit 1
}

hash="$(sha256sum "$here/versions.env" | cut -c1-12)"
root="${XDG_CACHE_HOME:-$HOME/.cache}/mailroom/testenv"
dir="$root/${KUBERNETES_VERSION}-${hash}"
bin="$dir/bin"
mkdir -p "$bin" "$root/build"

# One prepare at a time per cache (two test runs starting together must not build twice).
if command -v flock >/dev/null; then
    exec 9>"$root/.lock"
    if ! flock -n 9; then
        log "another prepare.sh holds $root/.lock; waiting for it"
        flock 9
    fi
fi

# === toolchains ===

# Every Go module here needs at least the go directive of its go.mod; we never let the go command
# download another toolchain behind our back (GOTOOLCHAIN=local), so check it up front.
check_go() {
    command -v go >/dev/null ||
        die "go not found on PATH. Install Go >= 1.26.7 (the Go toolchain) and rerun tests/env/prepare.sh."
    local have need=1.26.7 d
    have="$(GOTOOLCHAIN=local go env GOVERSION)"
    have="${have#go}"
    for d in "$here"/go/*/go.mod; do
        local v
        v="$(sed -n 's/^go \([0-9.]*\)$/\1/p' "$d")"
        if [ "$(printf '%s\n%s\n' "$need" "$v" | sort -V | tail -1)" = "$v" ]; then need="$v"; fi
    done
    if [ "$(printf '%s\n%s\n' "$need" "$have" | sort -V | head -1)" != "$need" ]; then
        die "go $have is too old: the tools modules in tests/env/go need go >= $need. Install a newer Go and rerun."
    fi
}

check_python() {
    command -v python3 >/dev/null ||
        die "python3 not found on PATH. Install Python >= 3.10 with the venv module and rerun tests/env/prepare.sh."
    python3 -c 'import sys, venv, ensurepip; sys.exit(sys.version_info < (3, 10))' 2>/dev/null ||
        die "python3 must be >= 3.10 with the venv and ensurepip modules (Debian: apt-get install python3-venv)."
}

# === components ===

# component_dir NAME VAR...: where component NAME is built, keyed by the values of the variables
# from versions.env that decide its content (and TESTENV_REVISION).
component_dir() {
    local name="$1" key="TESTENV_REVISION=$TESTENV_REVISION" var
    shift
    for var in "$@"; do key+=";$var=${!var}"; done
    echo "$root/build/$name-$(printf '%s' "$key" | sha256sum | cut -c1-12)"
}

# link SRC DST: point DST at SRC, replacing an older link (or a directory from an older layout).
link() {
    if [ -d "$2" ] && [ ! -L "$2" ]; then rm -rf "$2"; fi
    ln -sfn "$1" "$2.tmp" && mv -fT "$2.tmp" "$2"
}

# === go builds ===

# The go.mod files are generated from versions.env by pin.sh; refuse to build from stale ones.
check_pinned() {
    local name="$1" module="$2" want="$3" got
    got="$(cd "$here/go/$name" && GOFLAGS=-mod=readonly go list -m -f '{{.Version}}' "$module")" ||
        die "cannot read $module from tests/env/go/$name/go.mod; run: bash tests/env/pin.sh $name"
    [ "$got" = "$want" ] ||
        die "tests/env/go/$name pins $module $got but versions.env says $want; run: bash tests/env/pin.sh $name"
}

# go_build NAME CDIR "BINARIES" "PACKAGES" [extra go build args...]: builds every package of tools
# module NAME into component dir CDIR unless all of BINARIES are already there, then links them into
# $bin. Builds into a temp dir and renames, so an interrupted build never leaves a half-written binary
# that a later run would take as done. A main package at a module root (etcd's go.etcd.io/etcd/server/v3)
# comes out named after the path element before /vN; a FROM:TO entry in BINARIES renames it.
go_build() {
    local name="$1" cdir="$2" bins="$3" pkgs="$4" b names="" missing=()
    shift 4
    for b in $bins; do
        names+="${names:+ }${b#*:}"
        [ -x "$cdir/${b#*:}" ] || missing+=("$b")
    done
    if [ "${#missing[@]}" -eq 0 ]; then
        log "ok      $names (cached)"
    else
        log "build   $names from tests/env/go/$name (first build takes minutes; go output follows)"
        local t0=$SECONDS tmp
        mkdir -p "$cdir"
        tmp="$(mktemp -d "$cdir/.tmp.XXXXXX")"
        # shellcheck disable=SC2086 # pkgs is a list
        (cd "$here/go/$name" && go build -p "$jobs" -o "$tmp/" "$@" $pkgs) ||
            die "building $names failed (see go output above). Check the Go toolchain and access to the Go module proxy, then rerun."
        for b in $bins; do
            [ -x "$tmp/${b%%:*}" ] || die "go build produced no ${b%%:*} in $tmp"
            mv -f "$tmp/${b%%:*}" "$cdir/${b#*:}"
        done
        rm -rf "$tmp"
        log "built   $names in $((SECONDS - t0))s"
    fi
    for b in $bins; do
        link "$cdir/${b#*:}" "$bin/${b#*:}"
    done
}

build_go_tools() {
    check_go
    export GOTOOLCHAIN=local CGO_ENABLED=0
    export GOFLAGS="-mod=readonly -trimpath -buildvcs=false"
    # Two cores: let the go command run one compile per core; more only adds memory pressure.
    jobs="$(nproc)"

    local date kver
    date="$(date -u +%Y-%m-%dT%H:%M:%SZ)"

    check_pinned kubernetes k8s.io/kubernetes "$KUBERNETES_VERSION"
    kver="${KUBERNETES_VERSION#v}"
    # Without these the binaries report v0.0.0-master, which breaks helm's kubeVersion checks.
    local kflags="-s -w" p
    for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
        kflags+=" -X $p.gitVersion=$KUBERNETES_VERSION -X $p.gitMajor=${kver%%.*}"
        kflags+=" -X $p.gitMinor=$(echo "$kver" | cut -d. -f2) -X $p.gitTreeState=clean -X $p.buildDate=$date"
    done
    go_build kubernetes "$(component_dir kubernetes KUBERNETES_VERSION KUBERNETES_STAGING_VERSION)" \
        "kube-apiserver kube-controller-manager" \
        "k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager" \
        -ldflags="$kflags"
    # The test node's (tests/support/src/node); their own build, so that a cache from before the
    # node only adds them.
    go_build kubernetes "$(component_dir kubernetes KUBERNETES_VERSION KUBERNETES_STAGING_VERSION)" \
        "kubelet kube-scheduler" "k8s.io/kubernetes/cmd/kubelet k8s.io/kubernetes/cmd/kube-scheduler" \
        -ldflags="$kflags"

    check_pinned etcd go.etcd.io/etcd/server/v3 "$ETCD_VERSION"
    go_build etcd "$(component_dir etcd ETCD_VERSION)" server:etcd go.etcd.io/etcd/server/v3 -ldflags="-s -w"

    check_pinned helm helm.sh/helm/v3 "$HELM_VERSION"
    local cgo hflags
    # helm's Makefile: default capabilities = client-go minor (v0.X -> 1.X).
    cgo="$(cd "$here/go/helm" && go list -m -f '{{.Version}}' k8s.io/client-go)"
    cgo="${cgo#v}"
    hflags="-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION -X helm.sh/helm/v3/internal/version.gitTreeState=clean"
    for p in helm.sh/helm/v3/pkg/lint/rules helm.sh/helm/v3/pkg/chartutil; do
        hflags+=" -X $p.k8sVersionMajor=$((${cgo%%.*} + 1)) -X $p.k8sVersionMinor=$(echo "$cgo" | cut -d. -f2)"
    done
    go_build helm "$(component_dir helm HELM_VERSION)" helm helm.sh/helm/v3/cmd/helm -ldflags="$hflags"

    check_pinned helm-docs github.com/norwoodj/helm-docs "$HELM_DOCS_VERSION"
    go_build helm-docs "$(component_dir helm-docs HELM_DOCS_VERSION)" helm-docs \
        github.com/norwoodj/helm-docs/cmd/helm-docs -ldflags="-s -w"

    check_pinned krew sigs.k8s.io/krew "$KREW_VERSION"
    go_build krew "$(component_dir krew KREW_VERSION)" "krew validate-krew-manifest" \
        "sigs.k8s.io/krew/cmd/krew sigs.k8s.io/krew/cmd/validate-krew-manifest" \
        -ldflags="-s -w -X sigs.k8s.io/krew/internal/version.gitTag=$KREW_VERSION"

    check_pinned external-dns sigs.k8s.io/external-dns "$EXTERNAL_DNS_VERSION"
    local ecdir edir
    ecdir="$(component_dir external-dns EXTERNAL_DNS_VERSION EXTERNAL_DNS_REPLACE)"
    go_build external-dns "$ecdir" external-dns sigs.k8s.io/external-dns \
        -ldflags="-s -w -X sigs.k8s.io/external-dns/pkg/apis/externaldns.Version=$EXTERNAL_DNS_VERSION"
    # Its DNSEndpoint CRD, as external-dns publishes it, for the tests to install.
    if [ ! -f "$ecdir/dnsendpoints.externaldns.k8s.io.yaml" ]; then
        edir="$(cd "$here/go/external-dns" && go list -m -f '{{.Dir}}' sigs.k8s.io/external-dns)"
        cp "$edir/config/crd/standard/dnsendpoints.externaldns.k8s.io.yaml" "$ecdir/" ||
            die "external-dns $EXTERNAL_DNS_VERSION has no config/crd/standard/dnsendpoints.externaldns.k8s.io.yaml"
    fi
    mkdir -p "$dir/crds"
    link "$ecdir/dnsendpoints.externaldns.k8s.io.yaml" "$dir/crds/dnsendpoints.externaldns.k8s.io.yaml"

    check_pinned dashboard-check github.com/grafana/grafana-foundation-sdk/go "$GRAFANA_FOUNDATION_SDK_VERSION"
    local DASHBOARD_CHECK_SHA
    DASHBOARD_CHECK_SHA="$(sha256sum "$here/go/dashboard-check/main.go" | cut -c1-16)"
    go_build dashboard-check "$(component_dir dashboard-check GRAFANA_FOUNDATION_SDK_VERSION DASHBOARD_CHECK_SHA)" \
        dashboard-check mailroom.dev/testenv/dashboard-check -ldflags="-s -w"

    check_pinned prometheus github.com/prometheus/prometheus "$PROMETHEUS_VERSION"
    local pver pflags
    # Go module v0.3XY.Z is Prometheus 3.XY.Z.
    pver="$(echo "${PROMETHEUS_VERSION#v0.}" | sed -E 's/^3([0-9]{2})\./3.\1./; s/^3\.0([0-9])\./3.\1./')"
    p=github.com/prometheus/common/version
    pflags="-s -w -X $p.Version=$pver -X $p.Revision=$PROMETHEUS_VERSION -X $p.Branch=release"
    pflags+=" -X $p.BuildUser=mailroom-testenv -X $p.BuildDate=$date"
    go_build prometheus "$(component_dir prometheus PROMETHEUS_VERSION PROMETHEUS_BUILD_TAGS)" \
        "prometheus promtool" \
        "github.com/prometheus/prometheus/cmd/prometheus github.com/prometheus/prometheus/cmd/promtool" \
        -tags="$PROMETHEUS_BUILD_TAGS" -ldflags="$pflags"
}

# === cargo tools ===

# cargo_install NAME VERSION: `cargo install --locked` of a pinned cargo subcommand into its own
# component dir (its lock file decides every dependency), then linked into $bin. The build directory
# is a temp dir that is removed afterwards, so nothing lands in the repo's target/.
cargo_install() {
    local name="$1" version="$2" cdir t0
    cdir="$(component_dir "$name" "$3")"
    if [ -x "$cdir/bin/$name" ]; then
        log "ok      $name $version (cached)"
    else
        command -v cargo >/dev/null || die "cargo not found on PATH. Install Rust 1.95 and rerun tests/env/prepare.sh."
        log "build   $name $version (cargo install; first build takes minutes on 2 cores)"
        t0=$SECONDS
        rm -rf "$cdir" "$cdir.tmp"
        mkdir -p "$cdir"
        CARGO_TARGET_DIR="$cdir/.build" cargo install --quiet --locked --root "$cdir.tmp" \
            --version "=$version" -j "$(nproc)" "$name" ||
            die "cargo install $name $version failed (see cargo output above); check access to the Rust package registry."
        rm -rf "$cdir/.build"
        mv -f "$cdir.tmp/bin" "$cdir/bin"
        rm -rf "$cdir.tmp"
        log "built   $name $version in $((SECONDS - t0))s"
    fi
    link "$cdir/bin/$name" "$bin/$name"
}

build_cargo_tools() {
    cargo_install cargo-fuzz "$CARGO_FUZZ_VERSION" CARGO_FUZZ_VERSION
    cargo_install cargo-deny "$CARGO_DENY_VERSION" CARGO_DENY_VERSION
}

# === python venv ===

build_venv() {
    local venv stamp
    venv="$(component_dir venv PYTHON_REQUIREMENTS)"
    stamp="$venv/.mailroom-requirements"
    if [ -x "$venv/bin/python" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$PYTHON_REQUIREMENTS" ]; then
        log "ok      venv (cached)"
        link "$venv" "$dir/venv"
        return
    fi
    check_python
    log "build   venv: $PYTHON_REQUIREMENTS"
    local t0=$SECONDS
    rm -rf "$venv"
    python3 -m venv "$venv" || die "python3 -m venv failed (Debian: apt-get install python3-venv)."
    # shellcheck disable=SC2086 # a list of requirement specifiers
    "$venv/bin/python" -m pip install --disable-pip-version-check --no-input -q $PYTHON_REQUIREMENTS ||
        die "pip install into $venv failed (see pip output above); check access to the Python package index."
    "$venv/bin/python" -c 'import aiosmtpd, dkim, cryptography, dns' ||
        die "venv at $venv cannot import its tools"
    echo "$PYTHON_REQUIREMENTS" >"$stamp"
    link "$venv" "$dir/venv"
    log "built   venv in $((SECONDS - t0))s"
}

# === test node ===

# The node's runtime comes from Debian: containerd (1.6), runc and the CNI plugins (bridge,
# host-local, loopback in /usr/lib/cni). Installed when missing; the install starts no daemon
# (tests start their own containerd, see tests/support/src/node/).
node_packages() {
    local missing=() p
    command -v containerd >/dev/null && command -v ctr >/dev/null || missing+=(containerd)
    command -v runc >/dev/null || missing+=(runc)
    [ -x /usr/lib/cni/bridge ] && [ -x /usr/lib/cni/host-local ] || missing+=(containernetworking-plugins)
    command -v unshare >/dev/null && command -v nsenter >/dev/null || missing+=(util-linux)
    command -v ip >/dev/null || missing+=(iproute2)
    command -v iptables-save >/dev/null || missing+=(iptables)
    command -v gcc >/dev/null || missing+=(gcc libc6-dev)
    # Not for the node: the sidecar's fsync-before-250 test traces it with strace.
    command -v strace >/dev/null || missing+=(strace)
    if [ "${#missing[@]}" -eq 0 ]; then
        log "ok      node packages (containerd, runc, CNI plugins) and strace"
        return
    fi
    [ "$(id -u)" -eq 0 ] ||
        die "the test node needs Debian packages ${missing[*]}; install them as root: apt-get install -y ${missing[*]}"
    log "install ${missing[*]} (apt-get)"
    local t0=$SECONDS
    DEBIAN_FRONTEND=noninteractive apt-get update -qq || true
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2 ||
        die "apt-get install ${missing[*]} failed (see above); the test node needs them"
    for p in containerd ctr runc; do command -v "$p" >/dev/null || die "$p still missing after apt-get install"; done
    log "installed ${missing[*]} in $((SECONDS - t0))s"
}

# The DNS publishing test's authoritative server: Debian's BIND (named), started by the test on
# loopback with its own config. Installing the package must not start the system service: where no
# policy-rc.d forbids it already, one is put in place for the install only.
dns_packages() {
    if command -v named >/dev/null || [ -x /usr/sbin/named ]; then
        log "ok      bind9 (named)"
        return
    fi
    [ "$(id -u)" -eq 0 ] ||
        die "the DNS publishing test needs Debian's bind9; install it as root: apt-get install -y bind9"
    log "install bind9 (apt-get)"
    local t0=$SECONDS policy=/usr/sbin/policy-rc.d ours=false
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod 755 "$policy" && ours=true
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends bind9 >&2 ||
        (DEBIAN_FRONTEND=noninteractive apt-get update -qq &&
            DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends bind9 >&2) ||
        { $ours && rm -f "$policy"; die "apt-get install bind9 failed (see above)"; }
    if $ours; then rm -f "$policy"; fi
    [ -x /usr/sbin/named ] || die "/usr/sbin/named still missing after apt-get install bind9"
    log "installed bind9 in $((SECONDS - t0))s"
}

# file_is_static PATH: an ELF executable with no program interpreter (no dynamic loader).
file_is_static() {
    [ -x "$1" ] && ! od -An -c -N 4096 "$1" | tr -d ' \n' | grep -q 'ld-linux'
}

# The app image's busybox: Debian's busybox-static, unpacked into the cache (never installed, so the
# machine's own busybox, if any, stays as it is).
build_busybox() {
    local cdir tmp
    cdir="$(component_dir busybox BUSYBOX_PACKAGE)"
    if [ -x "$cdir/busybox" ]; then
        log "ok      busybox (cached)"
    else
        log "fetch   busybox-static (apt-get download)"
        tmp="$(mktemp -d)"
        (cd "$tmp" && apt-get download -q "$BUSYBOX_PACKAGE" >&2 2>/dev/null) ||
            (DEBIAN_FRONTEND=noninteractive apt-get update -qq && cd "$tmp" && apt-get download -q "$BUSYBOX_PACKAGE" >&2) ||
            die "apt-get download $BUSYBOX_PACKAGE failed; the app image of the node tests needs it"
        dpkg-deb -x "$tmp"/*.deb "$tmp/x" || die "cannot unpack $BUSYBOX_PACKAGE"
        file_is_static "$tmp/x/bin/busybox" || die "$BUSYBOX_PACKAGE's busybox is not static"
        mkdir -p "$cdir"
        mv -f "$tmp/x/bin/busybox" "$cdir/busybox"
        rm -rf "$tmp"
    fi
    link "$cdir/busybox" "$bin/busybox"
}

# The sandbox image's only file: a static pause binary from tests/env/node/pause.c.
build_pause() {
    local cdir src="$here/node/pause.c"
    PAUSE_SOURCE_SHA="$(sha256sum "$src" | cut -c1-16)"
    cdir="$(component_dir pause PAUSE_SOURCE_SHA)"
    if [ -x "$cdir/pause" ]; then
        log "ok      pause (cached)"
    else
        log "build   pause (gcc -static)"
        mkdir -p "$cdir"
        gcc -static -O2 -Wall -Werror -o "$cdir/pause.tmp" "$src" || die "gcc -static of $src failed"
        file_is_static "$cdir/pause.tmp" || die "$cdir/pause.tmp is not static"
        mv -f "$cdir/pause.tmp" "$cdir/pause"
    fi
    link "$cdir/pause" "$bin/pause"
}

log "cache   $dir"
build_go_tools
build_cargo_tools
build_venv
t_node=$SECONDS
node_packages
dns_packages
build_busybox
build_pause
log "node    packages and pause ready in $((SECONDS - t_node))s"

cat >"$dir/env.sh" <<EOF
# Written by tests/env/prepare.sh; source it to point tests at this test environment.
export MAILROOM_TESTENV_DIR='$dir'
export MAILROOM_TESTENV_BIN='$bin'
export MAILROOM_TESTENV_PYTHON='$dir/venv/bin/python'
EOF
log "ready   in $((SECONDS - start_all))s; binaries in $bin (source $dir/env.sh to export MAILROOM_TESTENV_*)"
if $print_env; then
    grep '^export ' "$dir/env.sh"
fi
