# Multi-stage build of both binaries; a small runtime image that runs as a
# non-root user. No checked query macros are used, so no database or
# SQLX_OFFLINE data is needed at build time.
FROM rust:1-slim-bookworm AS build
WORKDIR /src
# Dependencies first, so they are cached while only the code changes.
COPY Cargo.toml Cargo.lock ./
RUN mkdir -p src/bin examples \
    && echo 'fn main() {}' > src/main.rs \
    && echo 'fn main() {}' > src/bin/mechanica-delivery.rs \
    && echo 'fn main() {}' > examples/load.rs \
    && touch src/lib.rs \
    && cargo build --release --locked --bins \
    && rm -rf src examples
COPY src src
COPY migrations migrations
RUN touch src/main.rs src/lib.rs src/bin/mechanica-delivery.rs \
    && cargo build --release --locked --bins

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --no-create-home mechanica
COPY --from=build /src/target/release/mechanica-api /src/target/release/mechanica-delivery /usr/local/bin/
USER mechanica
ENV BIND_ADDR=0.0.0.0:8080 LOG_FORMAT=json
EXPOSE 8080
ENTRYPOINT ["mechanica-api"]
CMD ["serve"]
