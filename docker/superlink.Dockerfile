# fedshrink SuperLink: Flower's own SuperLink image, pinned to the Flower version fedshrink uses.
# The ServerApp does not run in this container: the SuperLink runs with `--isolation process`
# and the `serverapp` service of docker/compose.yaml (the fedshrink image) runs it.
#   docker build -f docker/superlink.Dockerfile -t fedshrink-superlink:0.1.0 .
FROM flwr/superlink:1.42.0

ENV FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1 \
    FLWR_TELEMETRY_ENABLED=0

# the one HTTPS port of the SuperLink: Control API (`flwr`: unauthenticated without Flower Enterprise's OIDC),
# runtime API (SuperExec) and Fleet API. Never publish it to other hosts: devices reach the Fleet API through
# the `fleet-gateway` service (docker/compose.yaml), which forwards /v1/fleet/* only.
EXPOSE 9093
# the entry point stays the base image's `flower-superlink`; docker/compose.yaml gives the flags
