#!/usr/bin/env bash
# System packages that some tests need, installed by `make test` when missing:
#   chromium   -- the study page opened in a real headless browser (tests/test_page_browser.py)
#   iproute2   -- network namespaces: the two-host Ray cluster (tests/test_cluster_hosts.py)
#   util-linux -- unshare: the worker host's own hostname and mounts, the browser without network
# Installing needs root and apt-get. Without them the tests that need these skip with their reason -- except under
# CI=true, where a missing prerequisite fails the test (tests/conftest.py: require).
set -u
need=()
command -v chromium >/dev/null 2>&1 || need+=(chromium)
command -v ip >/dev/null 2>&1 || need+=(iproute2)
command -v unshare >/dev/null 2>&1 || need+=(util-linux)
[ ${#need[@]} -eq 0 ] && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "make: installing system packages for the tests: ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  if apt-get update -qq >/dev/null && apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null; then
    exit 0
  fi
  echo "make: could not install ${need[*]}; the tests that need them will skip (fail under CI=true)" >&2
else
  echo "make: ${need[*]} missing and this is not root with apt-get; the tests that need them will skip" >&2
fi
case "${CI:-}" in true|1|yes) exit 1 ;; esac
exit 0
