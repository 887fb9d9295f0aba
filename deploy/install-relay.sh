#!/usr/bin/env bash
# Install a Compliance Relay on this host (or into a staging root).
#
#   sudo deploy/install-relay.sh --public-origin https://relay.example.com
#
# Creates the `compliance-relay` system user, a virtual environment in
# /opt/compliance-relay/venv, /etc/compliance-relay/relay.toml (kept if present),
# an operator token credential (generated once, root-only), and installs and
# enables relay.service behind nginx (deploy/nginx/relay.conf). Safe to run again:
# a second run changes nothing.

usage() {
    cat <<'USAGE'
usage: install-relay.sh [options]
       install-relay.sh --uninstall [--purge] [--root DIR]

  --public-origin URL        origin clients and vaults use (default https://relay.example.com)
  --listen HOST:PORT         where the relay listens behind nginx (default 127.0.0.1:8440)
  --operator-token-file FILE use this operator token instead of generating one
  --root DIR                 install into a staging root: no systemctl, nothing outside DIR
  --source DIR               pip-install this checkout (default: the one holding this script)
  --wheel-dir DIR            pip-install from wheels in DIR instead of a checkout
  --no-venv                  do not create the virtual environment (tests of the other steps)
  --uninstall                remove program and unit; keep config, token and data
  --purge                    with --uninstall: also delete config, token and data
USAGE
}

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
NAME=compliance-relay
PROGRAM=relay
# The `fast` extra: uvloop, which `relay serve` runs on when installed (event_loop=auto);
# bench/README.md has its measured share of the relay's throughput.
EXTRAS="[fast]"
# shellcheck source=deploy/installer-steps.sh
source "$REPO/deploy/installer-steps.sh"
parse_common
PUBLIC_ORIGIN="https://relay.example.com" LISTEN="127.0.0.1:8440" TOKEN_FILE=""

while (($#)); do
    case $1 in
        --public-origin) PUBLIC_ORIGIN=$2; shift 2 ;;
        --listen) LISTEN=$2; shift 2 ;;
        --operator-token-file) TOKEN_FILE=$2; shift 2 ;;
        --root) ROOT=$(realpath -m "$2"); shift 2 ;;
        --source) SOURCE=$(realpath "$2"); shift 2 ;;
        --wheel-dir) WHEEL_DIR=$(realpath "$2"); shift 2 ;;
        --no-venv) NO_VENV=1; shift ;;
        --uninstall) UNINSTALL=1; shift ;;
        --purge) PURGE=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) usage >&2; die "unknown option $1" ;;
    esac
done
umask 022
# The unit is relay.service (what operators type), the user and directories
# compliance-relay (unambiguous in /etc and /var/lib).
UNIT_NAME=relay
paths

if [[ $UNINSTALL == 1 ]]; then
    uninstall
    exit 0
fi
[[ $PURGE == 0 ]] || die "--purge only goes with --uninstall"
# The vault link signs this origin, so it must be exactly what clients dial.
[[ $PUBLIC_ORIGIN =~ ^https?://[^/[:space:]\"\\]+$ ]] || die "--public-origin must be scheme://host[:port]"
[[ $LISTEN =~ ^([^[:space:]\"\\:]+|\[[0-9a-fA-F:]+\]):([0-9]{1,5})$ ]] || die "--listen must be HOST:PORT"
LISTEN_HOST=${BASH_REMATCH[1]} LISTEN_PORT=${BASH_REMATCH[2]}
LISTEN_HOST=${LISTEN_HOST#[} && LISTEN_HOST=${LISTEN_HOST%]}  # "[::1]" listens on ::1
[[ -z $TOKEN_FILE || -r $TOKEN_FILE ]] || die "cannot read --operator-token-file"

ensure_user
ensure_venv

ensure_dir "$CONF_DIR" 0755
if [[ ! -e $CONF_DIR/relay.toml ]]; then
    tmp=$(mktemp)
    cat >"$tmp" <<TOML
# Compliance Relay configuration; every field can be overridden by RELAY_<FIELD>.
# The operator token is not here: systemd passes it as the credential
# \$CREDENTIALS_DIRECTORY/operator_token (see relay.service).
[relay]
host = "$LISTEN_HOST"
port = $LISTEN_PORT
state_dir = "/var/lib/$NAME"
public_origin = "$PUBLIC_ORIGIN"
log_level = "info"
TOML
    install_file "$tmp" "$CONF_DIR/relay.toml" 0644
    rm -f "$tmp"
else
    log "kept existing ${CONF_DIR#"$ROOT"}/relay.toml"
fi

# The operator token: root-only at rest, generated once (a rerun must not lock the
# operator out by rotating it), never printed.
ensure_dir "$CRED_DIR" 0700
if [[ -n $TOKEN_FILE ]]; then
    install_file "$TOKEN_FILE" "$CRED_DIR/operator_token" 0600
elif [[ ! -s $CRED_DIR/operator_token ]]; then
    (umask 077 && head -c 32 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=\n' \
        >"$CRED_DIR/operator_token")
    log "generated an operator token in ${CRED_DIR#"$ROOT"}/operator_token"
fi

ensure_dir "$STATE_DIR" 0700
if [[ $(id -u) == 0 ]]; then
    owner=$(service_owner)
    if [[ -n $(find "$STATE_DIR" \( ! -user "${owner%:*}" -o ! -group "${owner#*:}" \) -print -quit) ]]; then
        chown -R "$owner" "$STATE_DIR"
    fi
fi

ensure_unit
log "installed. Start it with: systemctl start $UNIT_NAME (deploy/README.md)."
