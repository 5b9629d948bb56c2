# Stand-in for golang:1.26-bookworm (see ../base-images.sh): Debian
# bookworm, the C toolchain cgo needs, the host's Go tree as /usr/local/go,
# and the host's CA bundle (a build machine may reach the Go module proxy
# through a TLS-intercepting proxy that only the host trusts).
FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends gcc libc6-dev ca-certificates git \
 && rm -rf /var/lib/apt/lists/*
COPY ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY go /usr/local/go
ENV GOPATH=/go PATH=/go/bin:/usr/local/go/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin GOTOOLCHAIN=local
WORKDIR /go
