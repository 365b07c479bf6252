# Build: docker build -t tether .
# Run:   docker run -p 8080:8080 -v $PWD/conf:/etc/tether tether
# (Mount a config whose listeners bind 0.0.0.0, not the loopback of the sample; an admin
# bind other than loopback needs admin.token.)
# The image carries the proxy alone: built without the `bundled` feature, it has no
# Socket.IO node pool, demo or load generator (`tether node|pool|demo|bench`).
FROM rust:1-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY crates ./crates
COPY benches ./benches
# Cargo.toml names some test targets; their files must exist for the manifest to load.
COPY tests ./tests
RUN cargo build --release --locked --no-default-features --bin tether

FROM debian:bookworm-slim
RUN useradd --system --no-create-home tether
COPY --from=build /src/target/release/tether /usr/local/bin/tether
COPY conf /etc/tether
USER tether
EXPOSE 8080 8443 9900
ENTRYPOINT ["tether"]
CMD ["run", "--config", "/etc/tether/tether.yaml"]
