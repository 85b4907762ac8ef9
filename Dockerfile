# cartlink: multi-stage build, small non-root runtime image, configured by environment.
#   docker build -t cartlink .
#   docker run -p 8080:8080 -e CARTLINK_SIGNING_KEYS=k1:... -v $PWD/links.jsonl:/etc/cartlink/links.jsonl \
#     -e CARTLINK_LINKS=/etc/cartlink/links.jsonl cartlink
FROM rust:1-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY benches ./benches
RUN cargo build --release --locked --bin cartlink

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home /var/lib/cartlink cartlink \
    && mkdir -p /var/lib/cartlink /etc/cartlink && chown cartlink /var/lib/cartlink
COPY --from=build /src/target/release/cartlink /usr/local/bin/cartlink
COPY config/cartlink.toml /etc/cartlink/cartlink.toml
COPY config/links.example.jsonl /etc/cartlink/links.example.jsonl
USER cartlink
WORKDIR /var/lib/cartlink
ENV CARTLINK_LISTEN=0.0.0.0:8080 \
    CARTLINK_ADMIN_LISTEN=0.0.0.0:9090 \
    CARTLINK_LINKS=/etc/cartlink/links.example.jsonl \
    CARTLINK_SINK=file:///var/lib/cartlink/clicks \
    CARTLINK_DATA_DIR=/var/lib/cartlink
EXPOSE 8080 9090
HEALTHCHECK --interval=10s --timeout=2s --retries=3 CMD curl -fsS http://127.0.0.1:9090/readyz || exit 1
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/cartlink"]
CMD ["serve", "--config", "/etc/cartlink/cartlink.toml"]
