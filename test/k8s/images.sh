#!/usr/bin/env bash
# The images of the Kubernetes suite, from local files only:
#
#   test/k8s/images.sh REGISTRY AUTH_REGISTRY USER:PASSWORD
#
# REGISTRY (plain http, the mirror of registry.k8s.io) gets critest's stand-ins
# (test/critest/images.sh): e2e-test-images/busybox:1.29-2, nginx:1.14-2 (busybox httpd
# on :80 saying "Welcome to nginx!") and httpd:2.4.39-4 (the same on :80, the image a
# Deployment rolls to). AUTH_REGISTRY, which wants USER:PASSWORD, gets busybox again as
# private/busybox:1, for imagePullSecrets.
set -euo pipefail
REG=${1:?usage: $0 registry auth-registry user:password}
AUTH=${2:?usage: $0 registry auth-registry user:password}
CREDS=${3:?usage: $0 registry auth-registry user:password}
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

IMAGES_SUBSET=e2e "$HERE/../critest/images.sh" "$REG"
skopeo copy --quiet --all --src-tls-verify=false --dest-tls-verify=false --dest-creds "$CREDS" \
    "docker://$REG/e2e-test-images/busybox:1.29-2" "docker://$AUTH/private/busybox:1"
echo "pushed $AUTH/private/busybox:1 (auth: ${CREDS%%:*})"
