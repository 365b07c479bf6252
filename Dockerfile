# Build: docker build -t tether .
# Run:   docker run -p 8080:8080 -v $PWD/conf:/etc/tether tether
# (Mount a config whose listeners bind 0.0.0.0, not the loopback of the sample.)
FROM rust:1-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY benches ./benches
RUN cargo build --release --locked --bin tether

FROM debian:bookworm-slim
RUN useradd --system --no-create-home tether
COPY --from=build /src/target/release/tether /usr/local/bin/tether
COPY conf /etc/tether
USER tether
EXPOSE 8080 8443 9900
ENTRYPOINT ["tether"]
CMD ["run", "--config", "/etc/tether/tether.yaml"]
