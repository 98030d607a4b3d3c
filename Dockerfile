# A small static controller image running as non-root. Build with:
#   docker build -t ghcr.io/issuelock/issuelock:0.1.0 .
# Without Docker, `make image` (e2e/image.sh) builds the same layout as an OCI archive:
# one static binary /issuelock, user 65532:65532, entrypoint /issuelock, command controller.
FROM rust:1.95-alpine AS build
RUN apk add --no-cache musl-dev gcc
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY e2e ./e2e
COPY crds ./crds
COPY charts ./charts
RUN cargo build --release --locked --bin issuelock

FROM scratch
COPY --from=build /src/target/release/issuelock /issuelock
USER 65532:65532
ENTRYPOINT ["/issuelock"]
CMD ["controller"]
