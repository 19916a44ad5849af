# syntax=docker/dockerfile:1
# One image for every eniway component: the operator, the node agent, the CNI installer
# (init container) and the cloud emulator. Build from the repository root:
#
#   docker build -t ghcr.io/eniway/eniway:0.1.0 .
#
# The base is pinned to a Python patch release; bump it together with the version below.
ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm

# ---- build: the project's wheel and its dependencies, and the CNI interpreter bundle ----
FROM ${PYTHON_IMAGE} AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends patchelf binutils \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml README.md image-requirements.txt ./
COPY operator ./operator
COPY cni_plugin ./cni_plugin
# Dependencies at the versions pinned in image-requirements.txt, which the offline build
# (hack/build_image.py, no registry needed) installs too.
RUN pip wheel --no-cache-dir --wheel-dir /wheels -c image-requirements.txt .
# The interpreter the CNI binary runs with on the host, with its own glibc. Its loader path
# is absolute: CNI_LIB_DIR must match the chart's agent.installCNI.libDir.
ARG CNI_LIB_DIR=/opt/eniway
COPY hack/bundle_python.py /usr/local/bin/bundle_python.py
RUN python3 /usr/local/bin/bundle_python.py /bundle --prefix "${CNI_LIB_DIR}/python"

# ---- runtime ----
FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="eniway" \
      org.opencontainers.image.description="ENI-based IPAM and CNI plugin for Kubernetes" \
      org.opencontainers.image.version="0.1.0" \
      org.opencontainers.image.ref.name="ghcr.io/eniway/eniway:0.1.0" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
# iptables: the agent connmarks hostPort connections so pods' replies leave the right ENI.
RUN apt-get update \
 && apt-get install -y --no-install-recommends iptables \
 && rm -rf /var/lib/apt/lists/*
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-cache-dir --no-index --find-links=/wheels eniway==0.1.0 \
 && groupadd --gid 10001 eniway \
 && useradd --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin eniway
COPY --from=build /bundle /usr/local/lib/eniway/python
# Non-root by default (the operator and the emulator); the chart runs the agent and the CNI
# installer as root, which the datapath and the host paths need.
USER 10001:10001
CMD ["eniway-operator"]
