#!/usr/bin/env bash
# Secrets and state folders for deploy/compose, made on this machine with openssl. Idempotent:
# files that exist are kept. Everything is created mode 0600 (folders 0700) and owned by the
# user who runs it; the containers run as that user (RLLFPR_UID/RLLFPR_GID in .env).
#
#   ./init-secrets.sh [--dir DIR]                     CA, broker, example clients, Redis, .env
#                                                     (BROKER_NAMES=a.example,b.example: more
#                                                     DNS names in the broker certificate)
#   ./init-secrets.sh [--dir DIR] client NAME         one more client certificate (CN = NAME,
#                                                     the agent id / broker ACL user)
#   ./init-secrets.sh [--dir DIR] keys OFFLINE_DIR    copy signing.pub.pem (+ fleet.key for
#                                                     agents) from the offline key medium
#
# DIR (default: this folder) receives:
#   secrets/ca/ca.{crt,key}            private CA (move ca.key offline once certificates exist)
#   secrets/tls/mqtt/                  ca.crt broker.crt broker.key (names mqtt, localhost,
#                                      127.0.0.1) as deploy/mosquitto/mosquitto.conf expects
#   secrets/tls/<CN>/                  ca.crt client.crt client.key, for recognizer-1, trainer,
#                                      lobby-cam-0 (the users of deploy/mosquitto/rllfpr.acl)
#   secrets/mosquitto.passwd           empty: the TLS listener takes the certificate CN as user
#   secrets/redis/{password,users.acl} users.acl = deploy/redis/users.acl with the password hash
#   secrets/recognizer.env             RLLFPR_REDIS__PASSWORD, RLLFPR_RECOGNIZER__API_TOKEN
#   secrets/grafana.env                GF_SECURITY_ADMIN_PASSWORD (Grafana's admin user)
#   secrets/keys/{agent,recognizer}/   filled by the `keys` command
#   .env                               compose variables (uid/gid, camera URL, host paths)
#   state/<service>/                   what each container keeps
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REDIS_ACL_TEMPLATE="$HERE/../redis/users.acl"
PLACEHOLDER="#REPLACE_WITH_SHA256_OF_PASSWORD"
CLIENTS=(recognizer-1 trainer lobby-cam-0)
STATE_DIRS=(mosquitto redis models recognizer trainer agent-lobby-cam-0 prometheus grafana)
DAYS="${RLLFPR_CERT_DAYS:-825}"
umask 077

log() { echo "[init-secrets] $*" >&2; }
die() { log "error: $*"; exit 1; }

OUT="$HERE"
if [ "${1:-}" = "--dir" ]; then
  [ -n "${2:-}" ] || die "--dir needs a folder"
  OUT="$2"
  shift 2
fi
SECRETS="$OUT/secrets"

new_key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1"; }

make_ca() {
  local ca="$SECRETS/ca"
  mkdir -p "$ca"
  [ -f "$ca/ca.crt" ] && return
  log "creating the private CA in $ca"
  new_key "$ca/ca.key"
  openssl req -x509 -new -key "$ca/ca.key" -sha256 -days "$DAYS" -subj "/CN=rllfpr-ca" \
    -addext "basicConstraints=critical,CA:TRUE" \
    -addext "keyUsage=critical,keyCertSign,cRLSign" -out "$ca/ca.crt"
}

# issue DIR CN CERT_NAME KEY_NAME EXTENSIONS: a key and a CA-signed certificate in DIR.
issue() {
  local dir="$1" cn="$2" cert="$3" key="$4" extensions="$5"
  mkdir -p "$dir"
  if [ -f "$dir/$cert" ]; then
    log "keeping $dir/$cert"
    return
  fi
  [ -f "$SECRETS/ca/ca.key" ] || die "$SECRETS/ca/ca.key is not here (moved offline?): bring it back to issue $cn"
  new_key "$dir/$key"
  openssl req -new -key "$dir/$key" -subj "/CN=$cn" -out "$dir/$cn.csr"
  openssl x509 -req -in "$dir/$cn.csr" -CA "$SECRETS/ca/ca.crt" -CAkey "$SECRETS/ca/ca.key" \
    -set_serial "0x$(openssl rand -hex 16)" -days "$DAYS" -sha256 \
    -extfile <(printf '%b' "$extensions") -out "$dir/$cert" 2>/dev/null
  rm -f "$dir/$cn.csr"
  cp "$SECRETS/ca/ca.crt" "$dir/ca.crt"
  log "issued $dir/$cert (CN $cn)"
}

issue_broker() {
  # BROKER_NAMES: further DNS names agents use to reach the broker, comma-separated.
  local names="DNS:mqtt,DNS:localhost,IP:127.0.0.1" extra extras
  IFS=, read -ra extras <<< "${BROKER_NAMES:-}"
  for extra in "${extras[@]}"; do names="$names,DNS:$extra"; done
  issue "$SECRETS/tls/mqtt" mqtt broker.crt broker.key \
    "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\nsubjectAltName=$names\n"
}

issue_client() {
  local cn="$1"
  [[ "$cn" =~ ^[A-Za-z0-9_.-]{1,64}$ ]] || die "client name '$cn' must be 1-64 of A-Z a-z 0-9 _ . -"
  issue "$SECRETS/tls/$cn" "$cn" client.crt client.key \
    "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=clientAuth\n"
}

write_once() {  # write_once FILE CONTENT
  if [ -f "$1" ]; then log "keeping $1"; else printf '%s\n' "$2" > "$1"; fi
}

make_redis_secrets() {
  local dir="$SECRETS/redis"
  mkdir -p "$dir"
  [ -f "$dir/password" ] || openssl rand -hex 32 > "$dir/password"
  grep -q "$PLACEHOLDER" "$REDIS_ACL_TEMPLATE" || die "$REDIS_ACL_TEMPLATE has no $PLACEHOLDER"
  if [ ! -f "$dir/users.acl" ]; then
    local hash
    hash="$(tr -d '\n' < "$dir/password" | sha256sum | cut -d' ' -f1)"
    sed "s/$PLACEHOLDER/#$hash/" "$REDIS_ACL_TEMPLATE" > "$dir/users.acl"
  fi
  write_once "$SECRETS/recognizer.env" "RLLFPR_REDIS__PASSWORD=$(tr -d '\n' < "$dir/password")
RLLFPR_RECOGNIZER__API_TOKEN=$(openssl rand -hex 32)"
}

write_compose_env() {
  write_once "$OUT/.env" "# docker compose variables for deploy/compose (made by init-secrets.sh).
# The containers run as this user, so they can read the 0600 secrets.
RLLFPR_UID=$(id -u)
RLLFPR_GID=$(id -g)
# The example agent's camera. Credentials inside the URL are visible in the container's arguments.
CAMERA_URL=rtsp://camera.invalid/stream
# The offline key medium (signing.pem, signing.pub.pem, fleet.key), mounted read-only into the
# trainer only, while it runs.
RLLFPR_OFFLINE_KEYS=/media/rllfpr-offline
# Root of the trainer's face corpus (contains lfw/ ...).
RLLFPR_DATA=$OUT/../../../shared/data
# torch wheels of the image: CPU by default; a CUDA index for the GPU recognizer and trainer,
# e.g. https://download.pytorch.org/whl/cu130.
RLLFPR_TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu"
}

copy_public_keys() {
  local offline="$1"
  [ -f "$offline/signing.pub.pem" ] || die "$offline/signing.pub.pem not found (rllfpr keys init)"
  [ -f "$offline/fleet.key" ] || die "$offline/fleet.key not found (rllfpr keys init)"
  mkdir -p "$SECRETS/keys/agent" "$SECRETS/keys/recognizer"
  install -m 0600 "$offline/signing.pub.pem" "$SECRETS/keys/agent/signing.pub.pem"
  install -m 0600 "$offline/fleet.key" "$SECRETS/keys/agent/fleet.key"
  install -m 0600 "$offline/signing.pub.pem" "$SECRETS/keys/recognizer/signing.pub.pem"
  log "copied signing.pub.pem (agents, recognizers) and fleet.key (agents only)"
}

command -v openssl >/dev/null || die "openssl is required"
mkdir -p "$SECRETS"
case "${1:-all}" in
  all)
    make_ca
    issue_broker
    for cn in "${CLIENTS[@]}"; do issue_client "$cn"; done
    write_once "$SECRETS/mosquitto.passwd" ""
    make_redis_secrets
    write_once "$SECRETS/grafana.env" "GF_SECURITY_ADMIN_PASSWORD=$(openssl rand -hex 24)"
    mkdir -p "$SECRETS/keys/agent" "$SECRETS/keys/recognizer"
    for dir in "${STATE_DIRS[@]}"; do mkdir -p "$OUT/state/$dir"; done
    write_compose_env
    log "done; next: ./init-secrets.sh keys OFFLINE_DIR (see docs/deploy.md)"
    ;;
  client)
    [ -n "${2:-}" ] || die "usage: init-secrets.sh client NAME"
    make_ca
    issue_client "$2"
    ;;
  keys)
    [ -n "${2:-}" ] || die "usage: init-secrets.sh keys OFFLINE_DIR"
    copy_public_keys "$2"
    ;;
  *)
    die "unknown command '$1' (all, client NAME, keys OFFLINE_DIR)"
    ;;
esac
