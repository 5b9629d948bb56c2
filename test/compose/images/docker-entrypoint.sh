#!/bin/sh
# As the real eclipse-mosquitto image's entrypoint: fix /mosquitto's owner
# when run as root, then run the command (mosquitto drops to its user).
set -e
if [ "$(id -u)" = 0 ] && [ -d /mosquitto ]; then chown -R mosquitto:mosquitto /mosquitto || true; fi
exec "$@"
