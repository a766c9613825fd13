# syntax=docker/dockerfile:1
# scan-gateway container image: a Rust builder on Debian bookworm, then a small bookworm
# runtime with only the binary, CA certificates (outbound https to the national switch uses
# rustls with the system roots) and a non-root user.
#
#   docker build -t scan-gateway .
#   docker run --rm -p 8080:8080 --env-file var/secrets.env \
#     -e SCANGW_REDIS_URL=redis://<redis host>:6379 scan-gateway
#
# Settings come from SCANGW_* environment variables (README, "Configuration"). The pages
# under web/ are compiled into the binary (include_str! in src/ingress/pages.rs), so the
# runtime image needs no files besides the binary. scripts/check-deploy checks that every
# COPY source exists and that the workspace members and include_str! files are copied.

ARG RUST_VERSION=1.89
ARG DEBIAN_RELEASE=bookworm

FROM rust:${RUST_VERSION}-${DEBIAN_RELEASE} AS builder
WORKDIR /src
# Only what the build reads: the workspace manifests, the sources and the pages they
# include. Cargo loads every workspace member's manifest (Cargo.toml `members`), so the
# load-test crate comes along although only the gateway binary is built.
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY web ./web
COPY loadtests ./loadtests
# BuildKit cache mounts keep the crate registry and target dir between builds; the binary
# is copied out of the cached target dir, which does not persist into the image.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin scan-gateway \
    && install -D -m 0755 target/release/scan-gateway /out/scan-gateway

FROM debian:${DEBIAN_RELEASE}-slim AS runtime
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 scangw \
    && useradd --system --uid 10001 --gid scangw --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin scangw
COPY --from=builder /out/scan-gateway /usr/local/bin/scan-gateway

# Listen on every interface inside the container (the default 127.0.0.1 would be
# unreachable from outside it). The other settings, and the secrets, come at run time.
ENV SCANGW_LISTEN=0.0.0.0:8080
EXPOSE 8080
# Numeric uid so Kubernetes' runAsNonRoot can verify it without reading /etc/passwd.
USER 10001:10001

# Liveness only (not /readyz): a gateway that lost Redis is alive and answers 503s by
# itself; restarting it would not help. No curl in the image: bash's /dev/tcp speaks the
# one HTTP/1.0 request. Kubernetes ignores HEALTHCHECK and uses the Deployment's probes.
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/${SCANGW_LISTEN##*:} && printf 'GET /livez HTTP/1.0\\r\\nHost: localhost\\r\\n\\r\\n' >&3 && head -n 1 <&3 | grep -q ' 200 '"]

# SIGTERM (docker stop, Kubernetes) makes the gateway report not-ready, drain in-flight
# requests for up to SCANGW_SHUTDOWN_GRACE_S (default 20 s) and exit: give it longer
# (docker stop -t 30, compose stop_grace_period, terminationGracePeriodSeconds).
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/scan-gateway"]
CMD ["serve"]
