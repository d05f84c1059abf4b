#!/usr/bin/env bash
# Builds the Windows agent (x86_64-pc-windows-gnu) with Debian's toolchain, and puts it and Wine's
# bcryptprimitives shim in target/windows/ (where tests/tests/e2e/windows.rs looks). See docs/OPERATIONS.md.
# rustup cannot fetch a Windows target here; Debian's rustc-web builds the Windows std from source.
set -euo pipefail
cd "$(dirname "$0")/../.."
out=target/windows
bash .ci/windows/setup.sh "$out" >/dev/null
# Its own target dir, so the two toolchains never rebuild each other's artifacts. Unoptimised and without
# debug info: this build is for the Wine smoke test, and a full release build takes several minutes longer here.
PATH=/usr/bin:$PATH RUSTC_BOOTSTRAP=1 CARGO_TARGET_DIR=target/windows-build \
  CARGO_PROFILE_RELEASE_DEBUG=0 CARGO_PROFILE_RELEASE_OPT_LEVEL=0 CARGO_PROFILE_RELEASE_CODEGEN_UNITS=16 \
  cargo build --release -Zbuild-std=std,panic_abort --target x86_64-pc-windows-gnu -p storesync-agent
cp target/windows-build/x86_64-pc-windows-gnu/release/storesync-agent.exe "$out/"
echo "built $out/storesync-agent.exe"
# With --update-builds, also the two other versions the Windows self-update test installs (only the agent crate
# recompiles): 0.2.0, and a 0.3.0 built to fail its health check. The plain build above is rebuilt last by the
# next run, so keep it first.
if [ "${1:-}" = "--update-builds" ]; then
  for v in "0.2.0:" "0.3.0:unhealthy"; do
    version=${v%%:*}; fault=${v#*:}
    PATH=/usr/bin:$PATH RUSTC_BOOTSTRAP=1 CARGO_TARGET_DIR=target/windows-build \
      CARGO_PROFILE_RELEASE_DEBUG=0 CARGO_PROFILE_RELEASE_OPT_LEVEL=0 CARGO_PROFILE_RELEASE_CODEGEN_UNITS=16 \
      STORESYNC_VERSION_OVERRIDE=$version STORESYNC_BUILD_FAULT=$fault \
      cargo build --release -Zbuild-std=std,panic_abort --target x86_64-pc-windows-gnu -p storesync-agent
    name=storesync-agent-$version${fault:+-$fault}.exe
    cp target/windows-build/x86_64-pc-windows-gnu/release/storesync-agent.exe "$out/$name"
    echo "built $out/$name"
  done
fi
