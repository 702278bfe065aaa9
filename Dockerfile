# Multi-stage: build a wheel with the toolchain, run it slim and as a non-root user.
FROM python:3.11-slim AS build
WORKDIR /src
RUN pip install --no-cache-dir --upgrade pip build
COPY pyproject.toml README.md alembic.ini ./
COPY src ./src
COPY alembic ./alembic
COPY channels ./channels
RUN python -m build --wheel --outdir /wheels

FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    BACKINSTOCK_DATABASE_URL=sqlite+aiosqlite:////data/backinstock.db \
    BACKINSTOCK_KEY_FILE=/data/backinstock.keys.json
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels \
    && useradd --system --uid 10001 --home /data --create-home backinstock
USER backinstock
WORKDIR /data
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s CMD python -c "import urllib.request,sys;urllib.request.urlopen('http://127.0.0.1:8000/healthz')" || exit 1
ENTRYPOINT ["backinstock"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8000"]
