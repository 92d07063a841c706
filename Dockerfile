# syntax=docker/dockerfile:1
# The swabstream binary in a slim image, for docker-compose.yml (which builds
# it as swabstream:dev) or on its own:
#   docker build -t swabstream .
#   docker run --rm swabstream --help

# The workspace's minimum Rust (Cargo.toml `rust-version`); any later
# release builds it too: --build-arg RUST_VERSION=1.95
ARG RUST_VERSION=1.89

FROM rust:${RUST_VERSION}-bookworm AS build
WORKDIR /src
# The full rust image has what the C dependencies need: gcc and make for
# librdkafka (rdkafka-sys builds it from source, without cmake or OpenSSL),
# zlib1g-dev for its compression, and the C compiler for libsql's SQLite.
COPY . .
# Caches for the crate registry and the target directory make a rebuild after
# a source change incremental; the binary is copied out of the cache mount.
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/usr/local/cargo/git,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    cargo build --release --locked -p swabstream \
 && install -D -m 0755 target/release/swabstream /out/swabstream

FROM debian:bookworm-slim
# ca-certificates for TLS to a real cluster; curl for the health checks
# (/readyz, /metrics) and the compose stack's post-events.sh.
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl \
 && rm -rf /var/lib/apt/lists/*
# A user of its own; the directories that the compose stack mounts volumes on
# are made here, owned by it, so that fresh named volumes are too.
RUN groupadd --system --gid 10001 swabstream \
 && useradd --system --uid 10001 --gid swabstream \
      --home-dir /var/lib/swabstream --shell /usr/sbin/nologin swabstream \
 && install -d -o swabstream -g swabstream -m 0750 \
      /var/lib/swabstream /var/lib/swabstream/out /var/lib/swabstream/tokens /etc/swabstream
COPY --from=build /out/swabstream /usr/local/bin/swabstream
# Fails the image build if the binary misses a shared library here.
RUN swabstream --version
USER swabstream
WORKDIR /var/lib/swabstream
# 8080: gateway (HTTP, /metrics, /healthz, /readyz); 9464: a worker's /metrics;
# 8081 and 5432: serve's HTTP and SQL as the compose stack sets them.
EXPOSE 8080 8081 5432 9464
ENTRYPOINT ["swabstream"]
CMD ["--help"]
