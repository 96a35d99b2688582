# syntax=docker/dockerfile:1
# The operator's image for Docker / Buildah / BuildKit users:
#   docker build -t ghcr.io/neoagent/servicenow-operator:0.1.0 .
#   docker buildx build --platform linux/amd64,linux/arm64 -t … .   (the build stage runs per platform)
# `make image` builds the same image without a Docker daemon (image/build): the same static
# binary, profile and layout, with Debian's CA bundle and the user nonroot (65532).

FROM docker.io/library/rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
# A static glibc binary (no libc in the final image). The explicit --target keeps the RUSTFLAGS
# off build scripts and proc macros. DNS goes through reqwest's pure-Rust resolver (hickory), so
# the binary needs none of glibc's NSS libraries at run time.
RUN target="$(uname -m)-unknown-linux-gnu" \
 && RUSTFLAGS='-C target-feature=+crt-static' cargo build --locked --profile image \
      --target "$target" --bin servicenow-operator -p servicenow-operator \
 && install -m 0755 "target/$target/image/servicenow-operator" /servicenow-operator

# distroless/static: CA certificates, /etc/passwd with nonroot (65532), /tmp; no shell, no libc.
FROM gcr.io/distroless/static-debian12:nonroot
ARG VERSION=0.1.0
ARG REVISION=unknown
LABEL org.opencontainers.image.title="servicenow-operator" \
      org.opencontainers.image.description="Kubernetes operator that keeps ServiceNow connections (OAuth consent, token refresh, identity, webhook Business Rule) healthy" \
      org.opencontainers.image.source="https://github.com/neoagent/servicenow-operator" \
      org.opencontainers.image.url="https://github.com/neoagent/servicenow-operator" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.vendor="Neo Agent"
COPY --from=build /servicenow-operator /servicenow-operator
USER 65532:65532
ENTRYPOINT ["/servicenow-operator"]
CMD ["run"]
