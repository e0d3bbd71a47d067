#!/usr/bin/env bash
# The README's test command: build or check the environment, then run the test suite on CPU.
#
#   bash tools/run_tests.sh              # everything except the long `soak` tests
#   bash tools/run_tests.sh -m soak      # only the soak tests (a later -m wins in pytest)
#   bash tools/run_tests.sh tests/test_checkpoint.py -x
#
# Extra arguments go to pytest. Exits non-zero on any failure, including "no tests collected".
set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

if ! bash tools/setup_env.sh; then
    echo "run_tests: environment set-up failed (see above); no tests were run" >&2
    exit 1
fi

echo "run_tests: .venv/bin/python -m pytest -m 'not soak' $*"
.venv/bin/python -m pytest -m 'not soak' "$@"
rc=$?
if [ "$rc" -eq 5 ]; then
    # pytest's 5 means nothing was collected: a broken test tree must not pass as green.
    echo "run_tests: pytest collected no tests; counting that as a failure" >&2
    exit 1
fi
exit "$rc"
