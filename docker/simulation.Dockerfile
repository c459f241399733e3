# fedshrink simulation image: the whole app and Flower's simulation engine, CPU only.
#   docker build -f docker/simulation.Dockerfile -t fedshrink-sim .
#   docker run --rm -v "$PWD/runs:/app/runs" fedshrink-sim
FROM python:3.11-slim

ENV PIP_NO_CACHE_DIR=1 \
    FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1 \
    FLWR_TELEMETRY_ENABLED=0

WORKDIR /app
# CPU torch first, from PyTorch's CPU wheel index, so fedshrink's open torch
# requirement is already met and no CUDA build is pulled.
RUN pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu
COPY pyproject.toml README.md ./
COPY proto ./proto
COPY fedshrink ./fedshrink
RUN pip install ".[simulation]"

ENTRYPOINT ["fedshrink", "run"]
CMD ["--engine", "inprocess", "--num-clients", "20"]
