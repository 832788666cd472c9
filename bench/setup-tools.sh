#!/bin/sh
# setup-tools.sh -- what `make bench` needs beyond the test tools (tests/setup-tools.sh):
# matplotlib for the chart, for the Python that runs the benchmark ($PYTHON, default python3).
# As root it installs it when missing (Debian's python3-matplotlib for the system Python,
# pip otherwise); otherwise it prints the command that does. Quiet when it is there.
set -eu
PYTHON=${PYTHON:-python3}

"$PYTHON" -c 'import matplotlib' 2>/dev/null && exit 0

if [ "$(id -u)" -ne 0 ]; then
    echo "bench-tools: matplotlib is missing; install it with:  sudo sh $0" >&2
    exit 1
fi
if [ "$("$PYTHON" -c 'import sys; print(sys.prefix)')" = /usr ]; then
    echo "bench-tools: apt-get install python3-matplotlib" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3-matplotlib >/dev/null
else
    echo "bench-tools: pip install matplotlib" >&2
    "$PYTHON" -m pip install -q matplotlib
fi
"$PYTHON" -c 'import matplotlib' || { echo "bench-tools: matplotlib could not be installed for $PYTHON" >&2; exit 1; }
