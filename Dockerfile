# tile-proxy container image.
#
#   docker build -t tile-proxy .                          # the proxy (the last stage is the default target)
#   docker build --target demo-upstream -t tile-proxy-demo-upstream .   # HERE-like test upstream (compose demo)
#
#   docker run -d --name tile-proxy -p 8080:8080 -e HERE_API_KEY \
#     -v tile-cache:/var/cache/tile-proxy tile-proxy
#   docker stop -t 30 tile-proxy     # SIGTERM: 5s drain (/ready fails) + up to 20s for in-flight
#                                    # requests + closing the cache: give it 30s, as compose does
#
# The HERE key comes only at run time: HERE_API_KEY, or better a secret file named by
# HERE_API_KEY_FILE (e.g. /run/secrets/here_api_key). No key is ever baked into the image, and
# HERE_API_KEY_FILE is not set here because the proxy refuses to start when it names a missing file.
# Everything else is configured with TILE_PROXY_* variables (see config.example.toml).
#
# scripts/check-deploy.sh (check_docker) lints this file and runs the final stage's ENV, CMD,
# HEALTHCHECK and STOPSIGNAL against the built binary.

# ---------------------------------------------------------------------------------------------
# Builder: glibc of Debian 12 (bookworm), the same as the distroless runtime below. The image
# has make and a C compiler, which the default allocator (jemalloc, tikv-jemalloc-sys) builds with.
FROM rust:1.95-bookworm AS builder
WORKDIR /src

# Dependencies first, in their own layer: a change to the sources does not rebuild them.
# Stub targets stand in for the real ones so that cargo builds only the dependencies.
COPY Cargo.toml Cargo.lock ./
COPY test-upstream/Cargo.toml test-upstream/
# The benchmarks' bare actix server and trace replayer are workspace members too: cargo needs
# their manifests (they are not built here).
COPY bench/ceiling/Cargo.toml bench/ceiling/
COPY bench/replay/Cargo.toml bench/replay/
RUN mkdir -p src test-upstream/src bench/ceiling/src bench/replay/src \
    && echo 'fn main() {}' > src/main.rs \
    && touch src/lib.rs \
    && echo 'fn main() {}' > test-upstream/src/main.rs \
    && touch test-upstream/src/lib.rs \
    && echo 'fn main() {}' > bench/ceiling/src/main.rs \
    && echo 'fn main() {}' > bench/replay/src/main.rs \
    && cargo build --release --locked --bins -p tile-proxy -p test-upstream

# The real sources, touched so that cargo sees them as newer than the stub builds.
COPY src src
COPY assets assets
COPY test-upstream/src test-upstream/src
COPY bench/ceiling/src bench/ceiling/src
COPY bench/replay/src bench/replay/src
RUN find src test-upstream/src -name '*.rs' -exec touch {} + \
    && cargo build --release --locked --bins -p tile-proxy -p test-upstream \
    && mkdir -p /out/var-cache/tile-proxy \
    && chmod 0750 /out/var-cache/tile-proxy

# ---------------------------------------------------------------------------------------------
# demo-upstream: the project's HERE-like test upstream (real PNG/JPEG tiles, no key needed), for
# `docker compose --profile demo up`. Not for production.
FROM gcr.io/distroless/cc-debian12:nonroot AS demo-upstream
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="tile-proxy-demo-upstream" \
      org.opencontainers.image.description="HERE-like test upstream for tile-proxy demos and tests (no key, real PNG/JPEG tiles)" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="MIT OR Apache-2.0" \
      org.opencontainers.image.base.name="gcr.io/distroless/cc-debian12:nonroot"
COPY --from=builder /src/target/release/test-upstream /usr/local/bin/test-upstream
USER 65532:65532
EXPOSE 8081
ENTRYPOINT ["/usr/local/bin/test-upstream"]
CMD ["--listen", "0.0.0.0:8081", "--no-auth", "--images"]

# ---------------------------------------------------------------------------------------------
# tile-proxy (default target): glibc + libgcc, no shell, uid/gid 65532.
FROM gcr.io/distroless/cc-debian12:nonroot AS tile-proxy
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="tile-proxy" \
      org.opencontainers.image.description="Caching proxy for HERE map tiles: server-held API key, memory+disk cache, optional Redis shared tier" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="MIT OR Apache-2.0" \
      org.opencontainers.image.base.name="gcr.io/distroless/cc-debian12:nonroot"

COPY --from=builder /src/target/release/tile-proxy /usr/local/bin/tile-proxy
# The cache folder, owned by the runtime user (no shell here to mkdir/chown): a named volume
# mounted on it starts with this ownership.
COPY --from=builder --chown=65532:65532 /out/var-cache/ /var/cache/

# Drain 5s + shutdown 20s = 25s, inside `docker stop -t 30` / compose `stop_grace_period: 30s`
# with 5s left for closing the cache (its write buffers reach disk).
ENV TILE_PROXY_LISTEN=0.0.0.0:8080 \
    TILE_PROXY_CACHE_DIR=/var/cache/tile-proxy \
    TILE_PROXY_DRAIN_DELAY=5s \
    TILE_PROXY_SHUTDOWN_TIMEOUT=20s

USER 65532:65532
VOLUME ["/var/cache/tile-proxy"]
EXPOSE 8080
STOPSIGNAL SIGTERM
# GET /live on TILE_PROXY_LISTEN's port (the binary is its own probe: no curl in the image).
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
    CMD ["/usr/local/bin/tile-proxy", "healthcheck"]
ENTRYPOINT ["/usr/local/bin/tile-proxy"]
CMD ["serve"]
