# m2pool-payment: build in a Rust image, run in a slim Debian one.
#   docker build -t m2pool-payment .
#   docker run --env-file .env -v $PWD/config.json:/etc/m2pool/config.json m2pool-payment

FROM rust:1.95-bookworm AS build
WORKDIR /src
# Everything Cargo.toml names (the bench target too: cargo checks every
# declared target's path) and what the code embeds (migrations).
COPY Cargo.toml Cargo.lock ./
COPY src src
COPY benches benches
COPY examples examples
COPY migrations migrations
COPY tests/fixtures tests/fixtures
RUN cargo build --release --locked --bin m2pool-payment

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --home /var/lib/m2pool --create-home m2pool
COPY --from=build /src/target/release/m2pool-payment /usr/local/bin/m2pool-payment
USER m2pool
WORKDIR /var/lib/m2pool
# The communication key and the wallet key come from the environment
# (M2POOL_PAYMENT_KEY, M2POOL_WALLET_KEY), never from the command line.
ENTRYPOINT ["m2pool-payment", "--config", "/etc/m2pool/config.json"]
