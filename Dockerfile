# One image for every TrustStram FL service (and the CLI).
FROM python:3.11-slim AS base
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /app
COPY pyproject.toml constraints.txt README.md ./
COPY libs ./libs
COPY proto ./proto
COPY services ./services
# The CPU build of torch (any other spec pulls the CUDA build).
RUN pip install --no-cache-dir --index-url https://download.pytorch.org/whl/cpu torch==2.13.0 \
 && pip install --no-cache-dir -c constraints.txt .
RUN useradd --create-home --uid 10001 tsfl
USER tsfl
# 50051: devices and admins (coordinator); 50052: gRPC health; 9464: Prometheus metrics
EXPOSE 50051 50052 9464
# No ENTRYPOINT: Compose and Kubernetes give the whole command (["tsfl", "service", ...]).
CMD ["tsfl", "--help"]
