# Build: docker build -t cairn .   Run: docker run -p 14000:14000 -p 15000:15000 cairn
# Debian packages are not pinned (DL3008): the stage takes bookworm's
# security updates, and the runtime needs only CA certificates and libssl.
# hadolint global ignore=DL3008
FROM rust:1-bookworm AS build
WORKDIR /src
RUN apt-get update && apt-get install -y --no-install-recommends libssl-dev pkg-config && rm -rf /var/lib/apt/lists/*
COPY . .
RUN cargo build --release --locked && strip target/release/cairn

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates libssl3 && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home /var/lib/cairn --create-home cairn
COPY --from=build /src/target/release/cairn /usr/local/bin/cairn
USER 10001
WORKDIR /var/lib/cairn
# Listen on all interfaces inside the container; data under /var/lib/cairn/data.
ENV CAIRN_SERVER_LISTEN=0.0.0.0:14000 CAIRN_SERVER_MANAGEMENT_LISTEN=0.0.0.0:15000
EXPOSE 14000 15000
VOLUME /var/lib/cairn/data
# /ready on the management listener: the database answers, the CA is loaded.
HEALTHCHECK --interval=30s --timeout=10s --start-period=30s --retries=3 \
    CMD ["cairn", "healthcheck", "--url", "http://127.0.0.1:15000"]
# SIGTERM drains in-flight requests for server.shutdown_grace_secs (10 s).
STOPSIGNAL SIGTERM
ENTRYPOINT ["cairn"]
CMD ["serve"]
