# syntax=docker/dockerfile:1
# orderflow image: one binary whose subcommand picks the role
# (migrate, topics, run --only <component>, publish, ...).

# ---------------------------------------------------------------- build
FROM rust:1-bookworm AS builder

# rdkafka builds a bundled librdkafka with its own configure script (C/C++
# toolchain, make, perl) and links zlib and OpenSSL (TLS, SASL/SCRAM); no cmake needed.
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential pkg-config zlib1g-dev libssl-dev python3 \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /src
COPY . .

# The cache mounts keep the registry and target/ between builds; the binary is
# copied out in the same step because the target/ mount is not part of the image.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p orderflow \
 && install -m 0755 target/release/orderflow /usr/local/bin/orderflow

# ---------------------------------------------------------------- runtime
FROM debian:bookworm-slim

RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates zlib1g libssl3 \
 && rm -rf /var/lib/apt/lists/*

# The user, and the archive's mount point owned by it (a new named volume takes its owner).
RUN groupadd --system --gid 10001 orderflow \
 && useradd --system --uid 10001 --gid orderflow --home-dir /nonexistent \
      --no-create-home --shell /usr/sbin/nologin orderflow \
 && mkdir /archive && chown orderflow:orderflow /archive

COPY --from=builder /usr/local/bin/orderflow /usr/local/bin/orderflow

USER orderflow:orderflow
WORKDIR /tmp
ENTRYPOINT ["orderflow"]
CMD ["--help"]
