# Stand-in for eclipse-mosquitto:2 (see ../base-images.sh): Debian's
# mosquitto 2.0 and clients, the mosquitto user and group at 1883 as in the
# real image, its /mosquitto layout and entrypoint.
FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends mosquitto mosquitto-clients \
 && rm -rf /var/lib/apt/lists/* \
 && groupmod -g 1883 mosquitto && usermod -u 1883 -g 1883 mosquitto \
 && mkdir -p /mosquitto/config /mosquitto/data /mosquitto/log \
 && chown -R 1883:1883 /mosquitto /var/lib/mosquitto /var/log/mosquitto \
 && printf 'listener 1883\nallow_anonymous true\n' >/mosquitto/config/mosquitto.conf
COPY docker-entrypoint.sh /docker-entrypoint.sh
EXPOSE 1883
ENTRYPOINT ["/docker-entrypoint.sh"]
CMD ["/usr/sbin/mosquitto", "-c", "/mosquitto/config/mosquitto.conf"]
