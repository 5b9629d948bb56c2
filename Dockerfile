# iotgw: multi-stage build. NOT exercised by CI (Docker cannot run on the
# project's build machines); the tested path is `make demo` / `make test`.
# go-sqlite3 needs cgo, so the build stage has a C compiler and the runtime
# stage is glibc-based.
FROM golang:1.26-bookworm AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
RUN CGO_ENABLED=1 go build -trimpath -ldflags="-s -w" -o /out/iotgw ./cmd/iotgw

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /var/lib/iotgw --create-home iotgw
COPY --from=build /out/iotgw /usr/local/bin/iotgw
USER iotgw
WORKDIR /var/lib/iotgw
# /healthz /readyz /metrics (http.listen)
EXPOSE 9464
ENTRYPOINT ["iotgw"]
CMD ["serve"]
