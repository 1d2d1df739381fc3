# syntax=docker/dockerfile:1
# sse-bridge container image: a release build on Debian bookworm, run on distroless
# (glibc + libgcc, no shell, no package manager) as the unprivileged "nonroot" user (65532).
#
#   docker build -t sse-bridge:0.1.0 .
#   docker run --rm -p 8080:8080 -p 9090:9090 \
#     -e SSE_BRIDGE_NATS__URL=nats://nats:4222 -e 'SSE_BRIDGE_NATS__SUBJECTS=["events.>"]' \
#     sse-bridge:0.1.0
#
# Configuration: /etc/sse-bridge/bridge.toml (mount your own over it; the Helm chart mounts a
# ConfigMap there). The file baked in holds only the two listeners, on all interfaces; every
# other key keeps its built-in default (docs/configuration.md) unless set in the file or as
# SSE_BRIDGE_<SECTION>__<KEY> in the environment. No broker and no publish token by default.

ARG RUST_VERSION=1.95

FROM rust:${RUST_VERSION}-bookworm AS builder
WORKDIR /src
COPY . .
# The same command CI runs (`cargo build --release --locked --bin sse-bridge`); the caches make
# rebuilds incremental, so the binary is copied out of the cached target directory.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin sse-bridge \
    && cp target/release/sse-bridge /sse-bridge \
    && printf '%s\n' \
        '# sse-bridge in a container: listeners on all interfaces, everything else default.' \
        '# Mount your own file here, or set SSE_BRIDGE_<SECTION>__<KEY> variables.' \
        '[server]' \
        'listen = "0.0.0.0:8080"' \
        '' \
        '[admin]' \
        'listen = "0.0.0.0:9090"' \
        > /bridge.toml \
    && /sse-bridge --config /bridge.toml --check-config

# Debian 12, like the builder, so the binary finds the glibc it was linked against.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=builder /sse-bridge /sse-bridge
COPY --from=builder /bridge.toml /etc/sse-bridge/bridge.toml
USER 65532:65532
# 8080: GET /events and POST /publish. 9090: /healthz, /readyz, /metrics.
EXPOSE 8080 9090
ENTRYPOINT ["/sse-bridge"]
CMD ["--config", "/etc/sse-bridge/bridge.toml"]
