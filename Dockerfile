# iotgw: multi-stage build, exercised by `make test` through
# docker-compose.yml (test/compose_test.go, with local stand-ins for the
# base images where no registry is reachable: test/compose/base-images.sh).
# go-sqlite3 needs cgo, so the build stage has a C compiler and the runtime
# stage is glibc-based.
FROM golang:1.26-bookworm AS build
# Where modules come from, for builds behind a proxy or a mirror:
#   docker build --build-arg GOPROXY=https://proxy.example,direct .
ARG GOPROXY
ARG GOFLAGS
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
# Compile the cgo SQLite driver in a layer of its own, keyed by go.mod and
# go.sum only, so a source change rebuilds in seconds, not a minute.
RUN CGO_ENABLED=1 go build -trimpath github.com/mattn/go-sqlite3
COPY . .
RUN CGO_ENABLED=1 go build -trimpath -ldflags="-s -w" -o /out/iotgw ./cmd/iotgw

FROM debian:bookworm-slim
# busybox: its wget is the healthcheck's HTTP client (GET /readyz).
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates busybox \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --user-group --home-dir /var/lib/iotgw --create-home iotgw \
 && install -d -o 10001 -g 10001 -m 0750 /var/lib/iotgw/gateway
COPY --from=build /out/iotgw /usr/local/bin/iotgw
# Non-root, by number, so `docker run --user` checks and Kubernetes
# runAsNonRoot can verify it.
USER 10001:10001
WORKDIR /var/lib/iotgw
# /healthz /readyz /metrics (http.listen). The image serves three roles
# (gateway, sample backend, PKI tool), so the healthchecks are in
# docker-compose.yml: `busybox wget -q -O /dev/null http://127.0.0.1:9464/readyz`.
EXPOSE 9464
ENTRYPOINT ["iotgw"]
CMD ["serve"]
