# chatterbox-status in a container: the server on 0.0.0.0:4123, its settings from the
# environment, and voices, long-text jobs and model weights on volumes (README.rst, "Container").
#
#   docker build -t chatterbox-status .              # CPU: the embedded voice, no torch
#   docker build -t chatterbox-status:cuda \
#       --build-arg BASE_IMAGE=nvidia/cuda:12.4.1-runtime-ubuntu22.04 \
#       --build-arg EXTRAS=chatterbox .              # CUDA: Chatterbox and torch from PyPI
#
# BASE_IMAGE may be any Debian or Ubuntu image: one without Python (the CUDA images) gets
# the distribution's python3 from apt; the official Python images already have one.

ARG BASE_IMAGE=python:3.11-slim-bookworm

FROM ${BASE_IMAGE} AS base
RUN if ! python3 -c 'import ensurepip, venv' 2>/dev/null; then \
        apt-get update \
        && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
            python3 python3-venv ca-certificates \
        && rm -rf /var/lib/apt/lists/*; \
    fi

# The install happens in its own stage, so the source tree and pip's build files stay out
# of the image; only the virtual environment is carried over.
FROM base AS build
ARG EXTRAS=""
COPY . /src
RUN python3 -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-cache-dir --disable-pip-version-check --use-pep517 "/src${EXTRAS:+[$EXTRAS]}"

FROM base
COPY --from=build /opt/venv /opt/venv
RUN useradd --uid 10001 --user-group --create-home --home-dir /home/chatterbox chatterbox \
    && mkdir /voices /data /models \
    && chown chatterbox:chatterbox /voices /data /models

# Only what differs from the server's own defaults; every other setting is an
# environment variable too (README.rst, "Settings"), e.g. `docker run -e ENGINE=hibari`.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    HOST=0.0.0.0 \
    PORT=4123 \
    VOICE_LIBRARY_DIR=/voices \
    DATA_DIR=/data \
    MODEL_CACHE_DIR=/models
VOLUME ["/voices", "/data", "/models"]
EXPOSE 4123
USER 10001:10001
WORKDIR /home/chatterbox

# Liveness with the image's own Python: nothing extra (curl, wget) is installed for it.
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD python3 -c "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/ping' % os.environ['PORT'], timeout=4)"

ENTRYPOINT ["chatterbox-status"]
CMD ["serve"]
