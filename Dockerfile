# pgrepl in a container: the release binary on Debian 12 (slim), with the
# PostgreSQL 18 client tools it runs (pg_dump reads the source's schema, and
# pg_dump 18 dumps every source pgrepl supports, 12 to 18), as a non-root
# user, `pgrepl` as the entrypoint.
#
#   docker build -t pgrepl .          (or `just image`)
#   docker run --rm pgrepl check --source "host=db1 ..." --target "host=db2 ..."
#
# Stages:
#   pgclient      PostgreSQL 18's pg_dump, pg_restore, psql and libpq, built
#                 from the release tarball with OpenSSL (Debian 12 ships only
#                 PostgreSQL 15's client; the tarball is the one
#                 ftp.postgresql.org publishes, also found byte for byte as
#                 the orig tarball in Debian's archive: either is checked
#                 against PG_SHA256)
#   runtime-base  Debian slim + CA certificates + those tools + user pgrepl,
#                 entrypoint pgrepl: everything but the binary
#   build         `cargo build --release --locked`, with libclang for
#                 libpg_query's bindings (bindgen)
#   runtime       runtime-base + the binary of `build` (the default target)
#
# `scripts/image --binary PATH` puts a binary built elsewhere into
# runtime-base instead (`--target runtime-base`, then one COPY).
#
# Base images are arguments: RUST_IMAGE (default rust:1-bookworm) and
# RUNTIME_IMAGE (default debian:bookworm-slim). Only instructions the legacy
# builder also knows are used, so any Docker builds it.

ARG RUST_IMAGE=rust:1-bookworm
ARG RUNTIME_IMAGE=debian:bookworm-slim

FROM ${RUNTIME_IMAGE} AS pgclient
ARG PG_VERSION=18.6
ARG PG_SHA256=555610c24d53e4316da5b7d3fc25c279d96856d5e0e23ee308c328c5fa881d9f
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      ca-certificates curl bzip2 gcc libc6-dev make bison flex perl libssl-dev zlib1g-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /usr/src
RUN set -eu; major="${PG_VERSION%%.*}"; \
    for url in "https://ftp.postgresql.org/pub/source/v${PG_VERSION}/postgresql-${PG_VERSION}.tar.bz2" \
               "http://deb.debian.org/debian/pool/main/p/postgresql-${major}/postgresql-${major}_${PG_VERSION}.orig.tar.bz2"; do \
      if curl -fsSL --retry 2 -o pg.tar.bz2 "$url" && echo "${PG_SHA256}  pg.tar.bz2" | sha256sum -c - >/dev/null; then \
        echo "PostgreSQL ${PG_VERSION} source from $url"; break; \
      fi; \
      rm -f pg.tar.bz2; \
    done; \
    [ -f pg.tar.bz2 ] || { echo "no PostgreSQL ${PG_VERSION} source tarball with sha256 ${PG_SHA256}" >&2; exit 1; }; \
    tar xjf pg.tar.bz2 && rm pg.tar.bz2 && cd "postgresql-${PG_VERSION}" \
 && ./configure --quiet --prefix="/usr/lib/postgresql/${major}" \
      --with-openssl --without-icu --without-readline --without-llvm \
 && make -s -j"$(nproc)" -C src/backend generated-headers \
 && make -s -j"$(nproc)" -C src/bin/pg_dump install \
 && make -s -j"$(nproc)" -C src/bin/psql install \
 && make -s -j"$(nproc)" -C src/interfaces/libpq install \
 && rm -rf "/usr/lib/postgresql/${major}/include" "/usr/lib/postgresql/${major}/lib/pkgconfig" \
      "/usr/lib/postgresql/${major}/lib/"*.a \
 && cd .. && rm -rf "postgresql-${PG_VERSION}" \
 && "/usr/lib/postgresql/${major}/bin/pg_dump" --version

FROM ${RUNTIME_IMAGE} AS runtime-base
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends ca-certificates libssl3 zlib1g \
 && apt-get clean && rm -rf /var/lib/apt/lists/*
COPY --from=pgclient /usr/lib/postgresql /usr/lib/postgresql
RUN useradd --system --uid 10001 --user-group --create-home --home-dir /home/pgrepl pgrepl \
 && /usr/lib/postgresql/18/bin/pg_dump --version
ENV PATH=/usr/lib/postgresql/18/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
WORKDIR /home/pgrepl
USER 10001:10001
# `sync --listen 0.0.0.0:9187` serves /metrics, /status and /healthz here.
EXPOSE 9187
ENTRYPOINT ["pgrepl"]
CMD ["--help"]

FROM ${RUST_IMAGE} AS build
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends libclang-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /usr/src/pgrepl
# The dependencies first, in a layer of their own: rebuilt only when
# Cargo.toml or Cargo.lock change.
COPY Cargo.toml Cargo.lock build.rs ./
RUN mkdir src && echo 'fn main() {}' >src/main.rs && touch src/lib.rs \
 && PGREPL_GIT_COMMIT=deps cargo build --release --locked \
 && rm -rf src
COPY src ./src
# The commit `pgrepl --version` prints (there is no .git in the context).
ARG PGREPL_GIT_COMMIT=unknown
RUN touch src/lib.rs src/main.rs \
 && PGREPL_GIT_COMMIT="${PGREPL_GIT_COMMIT}" cargo build --release --locked \
 && install -m 755 target/release/pgrepl /usr/local/bin/pgrepl
# The release profile's line tables stay in target/; the image gets the
# symbols without them (a third of the size).
RUN strip --strip-debug /usr/local/bin/pgrepl

FROM runtime-base AS runtime
COPY --from=build /usr/local/bin/pgrepl /usr/local/bin/pgrepl
RUN pgrepl --version
