# Production image: slim Python 3.11, non-root, gunicorn, static files collected at build time.
FROM python:3.11-slim AS base

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

RUN groupadd --system app && useradd --system --gid app --home-dir /app --shell /usr/sbin/nologin app

# Only what the processes import: the test and benchmark tools of requirements.txt stay out.
COPY requirements-production.txt .
RUN pip install -r requirements-production.txt

COPY . .

# collectstatic needs settings to import: a throwaway build-time secret, never used at run time.
RUN SECRET_KEY=build-only-not-secret DATABASE_URL=sqlite:////tmp/build.sqlite3 \
    python manage.py collectstatic --noinput \
    && rm -f /tmp/build.sqlite3 \
    && chown -R app:app /app

USER app

EXPOSE 8000

# The web process (bind, workers and timeout in config/gunicorn_conf.py, which `make bench` also
# reads); the worker and beat use the same image with another command (see docker-compose.yml).
CMD ["gunicorn", "--config", "config/gunicorn_conf.py", "--access-logfile", "-", "config.wsgi:application"]
