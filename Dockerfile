# syntax=docker/dockerfile:1
#
# log-processor container image.
#
#   docker build -t log-processor:0.1.0 .
#
# Builder: Rust 1.95 on Debian bookworm. librdkafka is compiled from source by rdkafka's
# `cmake-build` feature; scripts/system-deps.sh is the one list of the packages that needs
# (cmake, libcurl headers, zlib, ...), shared with the Makefile and CI.
FROM rust:1.95-bookworm AS builder
COPY scripts/system-deps.sh /tmp/system-deps.sh
RUN bash /tmp/system-deps.sh --build-only \
 && rm -rf /var/lib/apt/lists/* /tmp/system-deps.sh
WORKDIR /build

# Dependency layer: only the manifests and stub targets, so this layer (librdkafka, sqlx, the
# Elasticsearch client...) is rebuilt only when Cargo.toml or Cargo.lock change.
COPY Cargo.toml Cargo.lock ./
RUN mkdir src \
 && echo 'fn main() {}' > src/main.rs \
 && touch src/lib.rs \
 && cargo build --release --locked --bin log-processor \
 && rm -rf src

# The real sources. The migrations are embedded into the binary at compile time.
COPY migrations migrations
COPY src src
# COPY keeps the context's modification times, which may be older than the stubs: touch so that
# cargo rebuilds the crate itself instead of reusing the stub build.
RUN touch src/main.rs src/lib.rs \
 && cargo build --release --locked --bin log-processor \
 && cp target/release/log-processor /usr/local/bin/log-processor

# Runtime: the binary links libc, libm, libgcc_s, zlib and OpenSSL 3 (librdkafka's TLS and SCRAM;
# `ldd target/release/log-processor`); PostgreSQL and Elasticsearch use rustls. The package list
# is the one of `scripts/system-deps.sh --list --runtime-only` (tests/deploy.rs checks it against ldd).
# Named so that `podman build --target runtime --build-context builder=DIR` can build it from a
# binary built elsewhere (scripts/image-check.sh).
FROM debian:bookworm-slim AS runtime
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates libssl3 zlib1g libgcc-s1 \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 logproc \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin logproc
COPY --from=builder /usr/local/bin/log-processor /usr/local/bin/log-processor
# Fails the build if a shared library is missing from the runtime image.
RUN /usr/local/bin/log-processor --version

USER 10001:10001
# /metrics, /healthz, /readyz (LP_HTTP_ADDR, default 0.0.0.0:9898).
EXPOSE 9898
# The daemon drains on SIGTERM and exits within LP_SHUTDOWN_DEADLINE_MS (default 25 s): give it
# at least that plus 2 s, e.g. `docker stop --time 30`. Exec form: the daemon is PID 1 and
# receives the signal itself (it installs its own SIGTERM/SIGINT handlers).
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/log-processor"]
CMD ["run"]
