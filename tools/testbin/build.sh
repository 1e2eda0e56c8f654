#!/usr/bin/env bash
# Builds the real control plane (kube-apiserver, kube-controller-manager, kubectl, etcd) and helm from the
# Go module proxy into a cache outside the repository, keyed by version; a binary already built is skipped,
# so a warm machine (or CI in a fresh clone) pays nothing. Prints the bin directory on stdout.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
K8S_VERSION="v1.36.3"
ETCD_VERSION="v3.6.16"
HELM_VERSION="v3.22.0"
cache="${OPSMGR_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/opsmgr}"
bin="$cache/testbin/k8s-$K8S_VERSION-etcd-$ETCD_VERSION-helm-$HELM_VERSION"
mkdir -p "$bin"
# Two builders at once (a test session and make) would race on the same outputs: take turns.
exec 9>"$bin/.lock"
flock 9

export CGO_ENABLED=0 GOFLAGS="-mod=mod -buildvcs=false" GOTOOLCHAIN="${GOTOOLCHAIN:-auto}"
# Keep Go's own caches outside the repo too (default GOPATH/GOCACHE already are).

log() { echo "testbin: $*" >&2; }

build() { # module-dir output-name package ldflags
  local dir="$1" out="$2" pkg="$3" ldflags="$4"
  if [[ -x "$bin/$out" ]]; then return 0; fi
  log "building $out ($pkg); a cold build takes minutes"
  local start=$SECONDS
  (cd "$here/$dir" && go build -trimpath -ldflags "-s -w $ldflags" -o "$bin/$out.tmp" "$pkg")
  mv "$bin/$out.tmp" "$bin/$out"   # atomic: an interrupted build never leaves a half binary that looks done
  log "built $out in $((SECONDS - start)) s"
}

minor="${K8S_VERSION#v1.}"; minor="${minor%%.*}"
kver="-X k8s.io/component-base/version.gitVersion=$K8S_VERSION -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$minor -X k8s.io/component-base/version.gitTreeState=clean"
kver="$kver -X k8s.io/client-go/pkg/version.gitVersion=$K8S_VERSION -X k8s.io/client-go/pkg/version.gitMajor=1 -X k8s.io/client-go/pkg/version.gitMinor=$minor"

build etcd etcd go.etcd.io/etcd/server/v3 ""
build kubernetes kube-apiserver k8s.io/kubernetes/cmd/kube-apiserver "$kver"
build kubernetes kube-controller-manager k8s.io/kubernetes/cmd/kube-controller-manager "$kver"
build kubernetes kubectl k8s.io/kubernetes/cmd/kubectl "$kver"
build helm helm helm.sh/helm/v3/cmd/helm "-X helm.sh/helm/v3/internal/version.version=$HELM_VERSION"

echo "$bin"
