# fedshrink SuperNode: flower-supernode with fedshrink and the CPU build of torch installed, so the
# ClientApp runs in this container (`--isolation subprocess`) and nothing is installed at run time.
# The same image runs the ServerApp next to the SuperLink (`flower-superexec`) and the Fleet gateway
# (`python -m fedshrink.deploy.gateway`), see docker/compose.yaml.
#   docker build -f docker/supernode.Dockerfile -t fedshrink-supernode:0.1.0 .
FROM python:3.11-slim

ENV PIP_NO_CACHE_DIR=1 \
    FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1 \
    FLWR_TELEMETRY_ENABLED=0 \
    HF_HOME=/data/hf

# CPU torch first, from PyTorch's CPU wheel index, so fedshrink's open torch
# requirement is already met and no CUDA build is pulled.
RUN pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu
WORKDIR /opt/fedshrink
COPY pyproject.toml README.md ./
COPY proto ./proto
COPY fedshrink ./fedshrink
RUN pip install . \
    && useradd --uid 49999 --create-home app \
    && mkdir -p /data && chown app /data

# the node's own data: a volume (data sets saved with save_to_disk, or the hub cache under HF_HOME)
VOLUME /data
USER app
WORKDIR /home/app
ENTRYPOINT ["flower-supernode"]
