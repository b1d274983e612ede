#!/usr/bin/env bash
# One-command set-up on a fresh machine, then a command:
#   ./bootstrap.sh chat [options]   set up, then chat with the default model
#   ./bootstrap.sh test [pytest args]   set up, then run the whole test suite
#   ./bootstrap.sh                  set up only
# Set-up: a virtual environment in .venv, the patched llama-cpp-python (built once, then
# cached by pin, patches, CMAKE_ARGS, CPU features and compilers), this package, and the default model.
set -euo pipefail
cd "$(dirname "$0")"
PYTHON=${PYTHON:-python3}

if [ ! -x .venv/bin/python ]; then
  echo "[swift-gguf] creating .venv" >&2
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
echo "[swift-gguf] installing swift-gguf and its dependencies" >&2
.venv/bin/python -m pip install -q -e '.[test]'
.venv/bin/python native/build.py
.venv/bin/swift-gguf pull smollm2-135m

cmd=${1:-}
[ $# -gt 0 ] && shift
case "$cmd" in
  chat) exec .venv/bin/swift-gguf chat "$@" ;;
  test) exec .venv/bin/python -m pytest "$@" ;;
  "") echo "[swift-gguf] ready: .venv/bin/swift-gguf --help" >&2 ;;
  *) echo "usage: ./bootstrap.sh [chat|test] [args]" >&2; exit 2 ;;
esac
