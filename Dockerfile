# syntax=docker/dockerfile:1.7
# One image for every foxctl process; the command picks the process (see Procfile).

ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_PROJECT_ENVIRONMENT=/opt/foxctl
RUN pip install --no-cache-dir uv==0.13.9
WORKDIR /src
# Dependencies first, so a code change does not reinstall them.
COPY pyproject.toml uv.lock README.md ./
RUN uv sync --locked --no-dev --no-install-project
COPY shared ./shared
COPY web ./web
COPY workers ./workers
COPY foxctl ./foxctl
RUN uv sync --locked --no-dev --no-editable

FROM ${PYTHON_IMAGE}
ENV PATH=/opt/foxctl/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    FOXCTL_STORAGE_ROOT=/var/cache/foxctl \
    FOXCTL_RUN_DIR=/tmp/foxctl \
    FOXCTL_HOST=0.0.0.0 \
    PORT=8080
RUN groupadd --gid 1000 foxctl \
    && useradd --uid 1000 --gid 1000 --no-create-home --shell /usr/sbin/nologin foxctl \
    && mkdir -p /var/cache/foxctl /var/log/foxctl \
    && chown 1000:1000 /var/cache/foxctl /var/log/foxctl
COPY --from=build /opt/foxctl /opt/foxctl
USER 1000
EXPOSE 8080
ENTRYPOINT ["foxctl"]
CMD ["web", "serve"]
