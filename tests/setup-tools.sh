#!/bin/sh
# setup-tools.sh -- make sure the programs the integration tests and benchmarks
# drive are installed: pytest, swaks, socat, Postfix's smtp-source, mutt,
# bsd-mailx (mail(1), run on top of our sendmail), strace (kills the server
# at chosen system calls), dnsmasq, openssl (test certificates, s_client),
# openbsd-inetd (a classic inetd: the client's socket on stdin, stdout and
# stderr; tests run their own on a private config), what builds and checks
# the Debian package: dpkg-dev, lintian, mmdebstrap (a clean root to install
# it into), iproute2 (its loopback in a network namespace), man (the man pages are rendered to catch mistakes), and make.
# As root it installs whatever is missing (Debian packages, pytest from PyPI);
# otherwise it prints the one command that does and exits 1.
# Idempotent and quiet when everything is there already.
set -eu

missing_debs=""
need_pytest=no

have() { command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ] || [ -x "/usr/bin/$1" ]; }
want() { missing_debs="$missing_debs $1"; }

python3 -c 'import pytest' 2>/dev/null || need_pytest=yes
have swaks || want swaks
have socat || want socat
have smtp-source || want postfix
have mutt || want mutt
have bsd-mailx || want bsd-mailx
have strace || want strace
have dnsmasq || want dnsmasq-base
have systemd-socket-activate || want systemd
have make || want make
have openssl || want openssl
have testssl || want testssl.sh
have inetd || want openbsd-inetd
have dpkg-shlibdeps || want dpkg-dev
have lintian || want lintian
have mmdebstrap || want mmdebstrap
have ip || want iproute2
have man || want man-db

if [ -z "$missing_debs" ] && [ "$need_pytest" = no ]; then
    exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
    echo "setup-tools: missing:${missing_debs}$( [ "$need_pytest" = yes ] && echo ' pytest')" >&2
    echo "setup-tools: install them with:  sudo sh $0" >&2
    exit 1
fi

if [ -n "$missing_debs" ]; then
    export DEBIAN_FRONTEND=noninteractive
    case "$missing_debs" in
        *postfix*)
            # Postfix asks what kind of mail system this is; "Local only" keeps
            # it on port 25 of the loopback interface, away from Postel's 2525.
            echo "postfix postfix/main_mailer_type select Local only" | debconf-set-selections
            echo "postfix postfix/mailname string localhost" | debconf-set-selections
            ;;
    esac
    echo "setup-tools: apt-get install${missing_debs}" >&2
    apt-get update -qq
    # shellcheck disable=SC2086 # one word per package
    apt-get install -y -qq --no-install-recommends $missing_debs >/dev/null
    case "$missing_debs" in
        *openbsd-inetd*)
            # The package starts a system-wide inetd; tests start their own on
            # a private config and a free port, so keep the system one off.
            if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
                systemctl disable --now inetd.service >/dev/null 2>&1 || true
            else
                invoke-rc.d openbsd-inetd stop >/dev/null 2>&1 || true
                update-rc.d openbsd-inetd disable >/dev/null 2>&1 || true
            fi
            ;;
    esac
fi

if [ "$need_pytest" = yes ]; then
    echo "setup-tools: pip install pytest" >&2
    python3 -m pip install -q pytest 2>/dev/null \
        || python3 -m pip install -q --break-system-packages pytest 2>/dev/null \
        || { DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-pytest >/dev/null; }
    python3 -c 'import pytest' || { echo "setup-tools: pytest could not be installed for $(command -v python3)" >&2; exit 1; }
fi

# Postfix must stay off Postel's default port; Debian's "Local only" listens on
# 25 only.  Say so if somebody configured it otherwise (bench/ uses that on purpose).
if command -v postconf >/dev/null 2>&1 && postconf -M 2>/dev/null | grep -q '2525/inet'; then
    echo "setup-tools: note: Postfix is configured on 127.0.0.1:2525 (the benchmark reference); 'make run' needs that port" >&2
fi

for tool in swaks socat smtp-source mutt bsd-mailx strace dnsmasq systemd-socket-activate openssl inetd dpkg-shlibdeps lintian mmdebstrap ip man; do
    have "$tool" || { echo "setup-tools: $tool is still missing" >&2; exit 1; }
done
echo "setup-tools: all test tools present" >&2
