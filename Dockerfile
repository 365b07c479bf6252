# The proxy-only image: built without the `bundled` feature, it has no Socket.IO node
# pool, demo or load generator (`tether node|pool|demo|bench`), only run, check, cert and
# health.
#
# Build: docker build -t tether .
# Run:   docker run -p 8080:8080 --add-host nodes:10.0.0.11 tether
#        (the default config, conf/container.yaml, sends every session to the addresses of
#        the name `nodes`, port 3000), or with your own config:
#        docker run -p 8080:8080 -v $PWD/my.yaml:/etc/tether/tether.yaml:ro tether
# Stop:  docker stop -t 40 ... (tether gives tunnels shutdown_grace, 30 s by default, after
#        SIGTERM; docker's own default is 10 s before SIGKILL).
FROM rust:1.94-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
# The allocator's build-time settings (jemalloc's decay, see .cargo/config.toml).
COPY .cargo ./.cargo
COPY src ./src
COPY crates ./crates
COPY benches ./benches
# Cargo.toml names some test targets; their files must exist for the manifest to load.
COPY tests ./tests
RUN cargo build --release --locked --no-default-features --bin tether

FROM debian:bookworm-slim
# A fixed uid, so a Kubernetes `runAsNonRoot` can check it without a user database.
RUN useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin tether
COPY --from=build /src/target/release/tether /usr/local/bin/tether
COPY conf/container.yaml /etc/tether/tether.yaml
USER 10001:10001
# What conf/container.yaml binds: the proxy on 0.0.0.0:8080. Its admin API (9900) is on
# the container's loopback; a config that binds it to 0.0.0.0 (with a token) publishes it.
EXPOSE 8080
# tether is PID 1 (exec form, no shell in between) and handles SIGTERM itself: it stops
# accepting, then gives requests and tunnels shutdown_grace before it exits.
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=10s --timeout=5s --start-period=5s --retries=3 \
    CMD ["tether", "health", "--admin", "127.0.0.1:9900"]
ENTRYPOINT ["tether"]
CMD ["run", "--config", "/etc/tether/tether.yaml"]
