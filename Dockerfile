# syntax=docker/dockerfile:1
#
# One image for the three services; the binary is the command:
#
#   docker build -t pricing .
#   docker run --rm -p 8000:8000 -e REDIS_URL=redis://host:6379 pricing api
#   docker run --rm pricing worker
#   docker run --rm pricing listener
#   docker run --rm -v catalog:/data pricing api seed --products 1000 --if-empty
#
# Stages:
#   chef     the Rust toolchain plus cargo-chef, which turns the workspace
#            manifests into a recipe of its dependencies.
#   planner  writes that recipe; it changes only when a Cargo.toml or
#            Cargo.lock does.
#   builder  builds the dependencies from the recipe (the slow, cached layer),
#            then the workspace's own crates, in release mode with --locked.
#   runtime  debian slim (the builder's Debian release, so the same glibc),
#            ca-certificates and curl (for health checks), a non-root user,
#            and the three binaries.

ARG RUST_VERSION=1.94
ARG DEBIAN_RELEASE=bookworm

FROM rust:${RUST_VERSION}-${DEBIAN_RELEASE} AS chef
# Pinned, so the recipe format cannot change under a cached layer.
ARG CARGO_CHEF_VERSION=0.1.78
RUN cargo install cargo-chef --locked --version "${CARGO_CHEF_VERSION}"
WORKDIR /src

FROM chef AS planner
COPY . .
RUN cargo chef prepare --recipe-path recipe.json

FROM chef AS builder
COPY --from=planner /src/recipe.json recipe.json
# Dependencies only: this layer is reused until the manifests change.
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    cargo chef cook --release --locked --bins --recipe-path recipe.json
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    cargo build --release --locked --bin api --bin worker --bin listener \
 && mkdir -p /out \
 && cp target/release/api target/release/worker target/release/listener /out/

FROM debian:${DEBIAN_RELEASE}-slim AS runtime
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl \
 && rm -rf /var/lib/apt/lists/*
# A fixed uid, so a volume's owner is the same in every container of the
# image. /data is where the SQLite catalog lives under the image's default
# DATABASE_URL (a single `docker run`; docker compose points every service at
# its postgres service instead); a named volume mounted there starts as a
# copy of this folder, so it is writable by this user.
ARG APP_UID=10001
RUN groupadd --system --gid "${APP_UID}" pricing \
 && useradd --system --uid "${APP_UID}" --gid pricing --home-dir /app --shell /usr/sbin/nologin pricing \
 && mkdir -p /app /data \
 && chown pricing:pricing /app /data
COPY --from=builder /out/api /out/worker /out/listener /usr/local/bin/
WORKDIR /app
# Container defaults: listen on every interface (the binaries default to
# loopback), keep the catalog in the volume, log one JSON object per line.
ENV API_ADDR=0.0.0.0:8000 \
    WORKER_METRICS_ADDR=0.0.0.0:9101 \
    LISTENER_METRICS_ADDR=0.0.0.0:9102 \
    DATABASE_URL=sqlite:///data/pricing.db \
    LOG_FORMAT=json
USER pricing:pricing
EXPOSE 8000 9101 9102
CMD ["api"]
