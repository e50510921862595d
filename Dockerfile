# syntax=docker/dockerfile:1
# The agent's image: one static binary on distroless. The BPF objects are
# committed, so the build needs Go only, no clang.
#   docker build -t REGISTRY/callscope:TAG --build-arg VERSION=$(git describe --tags --always) .

FROM golang:1.26 AS build
WORKDIR /src
# Modules first, so that a source change does not download them again.
COPY go.mod go.sum ./
RUN go mod download
COPY . .
ARG VERSION=dev
RUN CGO_ENABLED=0 go build -trimpath -ldflags "-s -w -X main.version=${VERSION}" \
      -o /out/callscope ./cmd/callscope

# Distroless static rather than scratch: it brings the CA certificates that
# TLS to Kafka verifies brokers with by default, and /etc/passwd. Not its
# :nonroot variant: the agent runs as root, holding only the capabilities
# the DaemonSet grants.
FROM gcr.io/distroless/static-debian12
COPY --from=build /out/callscope /usr/local/bin/callscope
USER 0:0
ENTRYPOINT ["/usr/local/bin/callscope"]
CMD ["run"]
