# The pinned runtime for `peftrepro run --runner docker`.
# Build: docker build -t peftrepro:local --build-arg GIT_COMMIT=$(git rev-parse HEAD) .
# The base must provide Python 3.11 and torch 2.13.0 (CUDA build by default; tests use a CPU one).
# Legacy-builder compatible: no BuildKit-only syntax.
ARG BASE_IMAGE=pytorch/pytorch:2.13.0-cuda12.6-cudnn9-runtime@sha256:6acf597eeb8e376a96580dde4952f37cc017fef732bb40bfc73f28f25e3f64b4
FROM ${BASE_IMAGE}

ARG GIT_COMMIT=unknown
# Extra pip arguments, e.g. "--no-index --find-links /src/wheels" for an offline build with the
# locked wheels in the build context (`python scripts/lock.py --download wheels`).
ARG PIP_ARGS=""
LABEL org.opencontainers.image.title="peftrepro" \
      org.opencontainers.image.description="Reproducible PEFT runs: peftrepro and its locked dependencies" \
      org.opencontainers.image.revision="${GIT_COMMIT}"

ENV PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PEFTREPRO_CACHE=/cache \
    HF_HUB_OFFLINE=1 \
    MPLCONFIGDIR=/tmp/matplotlib \
    PEFTREPRO_GIT_COMMIT=${GIT_COMMIT}

COPY . /src
# Every distribution pinned and hashed; --no-deps because the lock is complete (nothing resolved here).
RUN python -c "import sys, torch; assert sys.version_info[:2] == (3, 11) and torch.__version__.startswith('2.13.0'), (sys.version, torch.__version__)" \
 && python -m pip install --require-hashes --no-deps --ignore-requires-python ${PIP_ARGS} -r /src/requirements.lock \
 && python -m pip install --no-deps --no-build-isolation ${PIP_ARGS} /src \
 && rm -rf /src \
 && useradd --create-home --uid 1000 peftrepro \
 && mkdir -p /cache && chown peftrepro /cache

USER peftrepro
WORKDIR /home/peftrepro
ENTRYPOINT ["peftrepro"]
CMD ["--help"]
