#!/usr/bin/env bash
# Install the Controller Vault on this host (or into a staging root).
#
#   sudo deploy/install-vault.sh --account clinic --relay-url https://relay.example.com
#
# Creates the `controller-vault` system user, a virtual environment in
# /opt/controller-vault/venv, /etc/controller-vault/vault.toml (kept if present),
# the credentials directory, runs `controller-vault init` (skipped when the state
# directory already holds keys), and installs and enables controller-vault.service.
# Safe to run again: a second run changes nothing. Pairing with the relay is the
# next, separate step (see deploy/README.md).

usage() {
    cat <<'USAGE'
usage: install-vault.sh --account ACCOUNT [options]
       install-vault.sh --uninstall [--purge] [--root DIR]

  --account ACCOUNT       the controller's account id at the relay (required to install)
  --relay-url URL         the relay's public origin (default https://relay.example.com)
  --listen HOST:PORT      staff API address on the controller's network (default 127.0.0.1:8450)
  --passphrase-file FILE  protect the key files with this passphrase (becomes a credential)
  --relay-ca-file FILE    verify the relay's TLS certificate with this CA bundle (copied
                          to the config directory) instead of the system store
  --relay-cert-sha256 HEX pin the relay's leaf certificate by its SHA-256 fingerprint
                          (64 hex digits, colons allowed); excludes --relay-ca-file
  --root DIR              install into a staging root: no systemctl, nothing outside DIR
  --source DIR            pip-install this checkout (default: the one holding this script)
  --wheel-dir DIR         pip-install from wheels in DIR instead of a checkout
  --no-venv               do not create the virtual environment (tests of the other steps)
  --uninstall             remove program and unit; keep config, keys and data
  --purge                 with --uninstall: also delete config, credentials, keys and data
USAGE
}

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
NAME=controller-vault
PROGRAM=controller-vault
# shellcheck source=deploy/installer-steps.sh
source "$REPO/deploy/installer-steps.sh"
parse_common
ACCOUNT="" RELAY_URL="https://relay.example.com" LISTEN="127.0.0.1:8450" PASSPHRASE_FILE=""
RELAY_CA_FILE="" RELAY_CERT_SHA256=""

while (($#)); do
    case $1 in
        --account) ACCOUNT=$2; shift 2 ;;
        --relay-url) RELAY_URL=$2; shift 2 ;;
        --listen) LISTEN=$2; shift 2 ;;
        --passphrase-file) PASSPHRASE_FILE=$2; shift 2 ;;
        --relay-ca-file) RELAY_CA_FILE=$2; shift 2 ;;
        --relay-cert-sha256) RELAY_CERT_SHA256=$2; shift 2 ;;
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
paths

if [[ $UNINSTALL == 1 ]]; then
    uninstall
    exit 0
fi
[[ $PURGE == 0 ]] || die "--purge only goes with --uninstall"
# Account ids are ids, never free text: the same pattern the relay enforces.
[[ $ACCOUNT =~ ^[a-z0-9][a-z0-9-]{0,62}$ ]] || die "--account must match [a-z0-9][a-z0-9-]{0,62}"
# No quote or backslash: both values are written inside TOML strings.
[[ $RELAY_URL =~ ^https?://[^[:space:]\"\\]+$ ]] || die "--relay-url must be an http(s) URL"
[[ $LISTEN =~ ^([^[:space:]\"\\:]+|\[[0-9a-fA-F:]+\]):([0-9]{1,5})$ ]] || die "--listen must be HOST:PORT"
LISTEN_HOST=${BASH_REMATCH[1]} LISTEN_PORT=${BASH_REMATCH[2]}
LISTEN_HOST=${LISTEN_HOST#[} && LISTEN_HOST=${LISTEN_HOST%]}  # "[::1]" listens on ::1
[[ -z $PASSPHRASE_FILE || -r $PASSPHRASE_FILE ]] || die "cannot read --passphrase-file"
# The link's TLS trust (stops a network attacker posing as the relay with a certificate
# some public CA issued): a private CA bundle, or a pin of the relay's own certificate.
[[ -z $RELAY_CA_FILE || -z $RELAY_CERT_SHA256 ]] \
    || die "--relay-ca-file and --relay-cert-sha256 exclude each other"
[[ -z $RELAY_CA_FILE ]] || grep -q -- "-----BEGIN CERTIFICATE-----" "$RELAY_CA_FILE" 2>/dev/null \
    || die "--relay-ca-file must be a readable PEM file of CA certificates"
[[ -z $RELAY_CERT_SHA256 || ${RELAY_CERT_SHA256//:/} =~ ^[0-9a-fA-F]{64}$ ]] \
    || die "--relay-cert-sha256 must be 64 hex digits (colons allowed)"

ensure_user
ensure_venv

ensure_dir "$CONF_DIR" 0755
if [[ ! -e $CONF_DIR/vault.toml ]]; then
    tmp=$(mktemp)
    cat >"$tmp" <<TOML
# Controller Vault configuration; every field can be overridden by VAULT_<FIELD>.
# Secrets are not here: they come from systemd credentials (see the unit).
[vault]
account = "$ACCOUNT"
state_dir = "/var/lib/$NAME"
relay_url = "$RELAY_URL"
host = "$LISTEN_HOST"
port = $LISTEN_PORT
TOML
    if [[ -n $RELAY_CA_FILE ]]; then
        echo "relay_ca_file = \"/etc/$NAME/relay-ca.pem\"" >>"$tmp"
    fi
    if [[ -n $RELAY_CERT_SHA256 ]]; then
        echo "relay_cert_sha256 = \"$RELAY_CERT_SHA256\"" >>"$tmp"
    fi
    install_file "$tmp" "$CONF_DIR/vault.toml" 0644
    rm -f "$tmp"
else
    log "kept existing ${CONF_DIR#"$ROOT"}/vault.toml"
    if [[ -n $RELAY_CA_FILE$RELAY_CERT_SHA256 ]]; then
        log "note: the relay TLS options were not merged into the existing vault.toml;" \
            "set relay_ca_file / relay_cert_sha256 there yourself"
    fi
fi
if [[ -n $RELAY_CA_FILE ]]; then
    # Public certificates, not secrets: readable by the service user like the config.
    install_file "$RELAY_CA_FILE" "$CONF_DIR/relay-ca.pem" 0644
fi

# Credentials: root-only at rest; systemd hands the service a private copy.
ensure_dir "$CRED_DIR" 0700
if [[ -n $PASSPHRASE_FILE ]]; then
    install_file "$PASSPHRASE_FILE" "$CRED_DIR/passphrase" 0600
elif [[ ! -e $CRED_DIR/passphrase ]]; then
    # Empty = no passphrase; the file must exist or LoadCredential= fails the start.
    install -m 0600 /dev/null "$CRED_DIR/passphrase"
fi

# Keys are made once. A non-empty state directory means init already ran (or a
# restore put data there): running init again would be refused by the vault
# anyway, and a new identity key would orphan every stored transcript.
ensure_dir "$STATE_DIR" 0700
if [[ -n $(ls -A "$STATE_DIR") ]]; then
    log "state directory already initialised; init skipped"
elif [[ $NO_VENV == 1 ]]; then
    log "init skipped (--no-venv: no program to run)"
else
    init=("$VENV/bin/$PROGRAM" init --account "$ACCOUNT" --state-dir "$STATE_DIR")
    [[ -z $PASSPHRASE_FILE ]] || init+=(--passphrase-file "$CRED_DIR/passphrase")
    (umask 077 && "${init[@]}")
fi
# The service user owns its state; chown needs root, which a real install has.
if [[ $(id -u) == 0 ]]; then
    owner=$(service_owner)
    if [[ -n $(find "$STATE_DIR" \( ! -user "${owner%:*}" -o ! -group "${owner#*:}" \) -print -quit) ]]; then
        chown -R "$owner" "$STATE_DIR"
    fi
fi

ensure_unit
log "installed. Next: pair with the relay, then start the service (deploy/README.md)."
