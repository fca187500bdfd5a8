#!/usr/bin/env bash
# Installs dovecot, postfix and nginx (Debian 12, as root), writes their configs and a test CA
# under /tmp/resmon-exchange, and runs resmon on examples/exchange.toml in the foreground.
# Kill dovecot (`pkill -KILL -f 'dovecot -F'`) to watch the IMAP and POP3 resources fail and
# come back while SMTP and HTTP stay online; Ctrl-C stops everything.
set -euo pipefail
cd "$(dirname "$0")/.."
need=()
command -v dovecot >/dev/null 2>&1 || need+=(dovecot-imapd dovecot-pop3d)
command -v postfix >/dev/null 2>&1 || need+=(postfix)
command -v nginx >/dev/null 2>&1 || need+=(nginx)
if [ ${#need[@]} -gt 0 ]; then
  echo "postfix postfix/main_mailer_type select Local only" | debconf-set-selections
  DEBIAN_FRONTEND=noninteractive apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}"
fi
cargo build --release -p resmon -p resmon-e2e --bins
target/release/resmon-exchange-setup /tmp/resmon-exchange
target/release/resmon validate --config examples/exchange.toml
exec target/release/resmon run --config examples/exchange.toml
