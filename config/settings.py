"""Settings for the rewards platform.

Every value comes from the environment (django-environ) with a default that works on a laptop.
Without DATABASE_URL / CELERY_BROKER_URL the project runs embedded: SQLite and in-process tasks.
Secrets have no production default: with DEBUG off and a DATABASE_URL, SECRET_KEY must be set.
Embedded, without one, a random key is made once and kept in this checkout (``.secret-key``).
"""

from pathlib import Path

import environ
from django.core.exceptions import ImproperlyConfigured

from config.local_secret import local_secret_key

BASE_DIR = Path(__file__).resolve().parent.parent

env = environ.Env()

DEBUG = env.bool("DEBUG", default=False)
# The embedded default: no DATABASE_URL, so a SQLite file in this checkout, never a production database.
EMBEDDED = not env.str("DATABASE_URL", default="")

SECRET_KEY = env.str("SECRET_KEY", default="")
if not SECRET_KEY:
    if DEBUG:
        SECRET_KEY = "insecure-development-key-only-used-with-debug-on"
    elif EMBEDDED:
        # So that `manage.py create_service_client`, `demo` or `import_rules` work beside `make run`
        # with no environment at all, as the embedded default promises.
        SECRET_KEY = local_secret_key(BASE_DIR / ".secret-key")
    else:
        raise ImproperlyConfigured("SECRET_KEY must be set when DEBUG is off.")

ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=["127.0.0.1", "localhost"] if DEBUG else [])
CSRF_TRUSTED_ORIGINS = env.list("CSRF_TRUSTED_ORIGINS", default=[])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "rest_framework_api_key",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "simple_history",
    "axes",
    "django_prometheus",
    "points",
    "rules",
    "connect",
]

MIDDLEWARE = [
    "django_prometheus.middleware.PrometheusBeforeMiddleware",
    "config.api.middleware.RequestLogMiddleware",
    "config.api.middleware.ApiHostMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "config.api.middleware.ApiBodyLimitMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "simple_history.middleware.HistoryRequestMiddleware",
    "axes.middleware.AxesMiddleware",
    "django_prometheus.middleware.PrometheusAfterMiddleware",
]

AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",
    "django.contrib.auth.backends.ModelBackend",
]

ROOT_URLCONF = "config.urls"
WSGI_APPLICATION = "config.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

DATABASES = {
    "default": env.db("DATABASE_URL", default=f"sqlite:///{BASE_DIR / 'db.sqlite3'}"),
}
DATABASES["default"]["CONN_MAX_AGE"] = env.int("DB_CONN_MAX_AGE", default=60)
DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
# The event insert is prepared once per connection (config.db.prepared_cursor); 0 for a pooler in
# transaction mode that does not carry prepared statements (PgBouncer before 1.21).
DB_PREPARED_STATEMENTS = env.bool("DB_PREPARED_STATEMENTS", default=True)
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # The embedded default serves one process; waiting on the file lock beats "database is locked".
    DATABASES["default"].setdefault("OPTIONS", {})["timeout"] = 20
    DATABASES["default"]["CONN_MAX_AGE"] = 0

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# Throttle counters live here; point CACHE_URL at Redis so all web processes share them.
CACHES = {"default": env.cache("CACHE_URL", default="locmemcache://")}

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True
# The admin shows ISO dates and 24-hour times (config/formats/en/formats.py).
FORMAT_MODULE_PATH = ["config.formats"]

STATIC_URL = "static/"
STATIC_ROOT = env.path("STATIC_ROOT", default=BASE_DIR / "staticfiles")
STATICFILES_DIRS = [BASE_DIR / "static"]
# Deployed (a DATABASE_URL), collectstatic writes compressed copies under content-hashed names, which
# WhiteNoise serves with far-future cache headers. The embedded default (`make run`) serves the
# source files as Django's runserver always has, with nothing to collect first.
if not EMBEDDED:
    # Static files (the admin's CSS, the API docs' Swagger UI) from the web process itself, right
    # after SecurityMiddleware as WhiteNoise asks.
    MIDDLEWARE.insert(MIDDLEWARE.index("django.middleware.security.SecurityMiddleware") + 1,
                      "whitenoise.middleware.WhiteNoiseMiddleware")  # fmt: skip
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"
        if EMBEDDED
        else "whitenoise.storage.CompressedManifestStaticFilesStorage"
    },
}

# --- HTTPS: TLS ends at a proxy; on by default in production, each switchable by its own variable.
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SECURE_SSL_REDIRECT = env.bool("SECURE_SSL_REDIRECT", default=not DEBUG)
SESSION_COOKIE_SECURE = env.bool("SESSION_COOKIE_SECURE", default=not DEBUG)
CSRF_COOKIE_SECURE = env.bool("CSRF_COOKIE_SECURE", default=not DEBUG)
SECURE_HSTS_SECONDS = env.int("SECURE_HSTS_SECONDS", default=0 if DEBUG else 31536000)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env.bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", default=not DEBUG)
SECURE_HSTS_PRELOAD = env.bool("SECURE_HSTS_PRELOAD", default=not DEBUG)
# The health probe and metrics are scraped over plain HTTP inside the private network.
SECURE_REDIRECT_EXEMPT = [r"^health/?$", r"^metrics/?$"]

# --- API
API_THROTTLE_RATE = env.str("API_THROTTLE_RATE", default="6000/min")
API_MAX_BODY_BYTES = env.int("API_MAX_BODY_BYTES", default=256 * 1024)
API_PAGE_SIZE = env.int("API_PAGE_SIZE", default=50)
API_MAX_PAGE_SIZE = env.int("API_MAX_PAGE_SIZE", default=200)
# Proxies in front that append the caller's address to X-Forwarded-For (0: use REMOTE_ADDR only).
API_NUM_PROXIES = env.int("API_NUM_PROXIES", default=0)

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": ["points.auth.ApiKeyAuthentication"],
    "DEFAULT_PERMISSION_CLASSES": ["points.auth.HasScope"],
    "DEFAULT_PARSER_CLASSES": ["config.api.jsonbody.StrictJSONParser"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_THROTTLE_CLASSES": ["config.api.throttling.ServiceClientRateThrottle"],
    "DEFAULT_THROTTLE_RATES": {"service_client": API_THROTTLE_RATE},
    "NUM_PROXIES": API_NUM_PROXIES,
    "EXCEPTION_HANDLER": "config.api.errors.api_exception_handler",
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "UNAUTHENTICATED_USER": None,
}

SPECTACULAR_SETTINGS = {
    "TITLE": "Rewards platform API",
    "DESCRIPTION": "Connect (event inbox, reward actions) and Points (ledger) services.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    # Swagger UI from this project's static files (drf-spectacular-sidecar), not from a CDN.
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "SERVE_AUTHENTICATION": [],
    "SERVE_PERMISSIONS": ["rest_framework.permissions.AllowAny"],
    "COMPONENT_SPLIT_REQUEST": True,
    # Exact response bodies, error bodies per code, common headers, links (config/api/schema.py).
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "config.api.schema.finalize_schema",
    ],
}

# --- Celery: without a broker, tasks run eagerly in-process (the embedded default).
CELERY_BROKER_URL = env.str("CELERY_BROKER_URL", default="")
CELERY_TASK_ALWAYS_EAGER = not CELERY_BROKER_URL
CELERY_TASK_EAGER_PROPAGATES = False
CELERY_RESULT_BACKEND = None
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_TIME_LIMIT = env.int("CELERY_TASK_TIME_LIMIT", default=120)
CELERY_TASK_SOFT_TIME_LIMIT = env.int("CELERY_TASK_SOFT_TIME_LIMIT", default=90)
# Celery's Django fixup closes the database connection around every task unless this is set, so
# each dispatch would open a new PostgreSQL connection. With it, a worker keeps its connection and
# config/celery.py drops it only when unusable or older than DB_CONN_MAX_AGE, as a web request does.
CELERY_DB_REUSE_MAX = env.int("CELERY_DB_REUSE_MAX", default=1000)

# --- Dispatch timings (SPEC §8)
DISPATCH_MAX_ATTEMPTS = env.int("DISPATCH_MAX_ATTEMPTS", default=8)
DISPATCH_RETRY_BASE_SECONDS = env.float("DISPATCH_RETRY_BASE_SECONDS", default=5)
DISPATCH_RETRY_MAX_SECONDS = env.float("DISPATCH_RETRY_MAX_SECONDS", default=600)
SWEEPER_INTERVAL_SECONDS = env.float("SWEEPER_INTERVAL_SECONDS", default=30)
SWEEPER_STALE_SECONDS = env.float("SWEEPER_STALE_SECONDS", default=60)
# A drain claims this many due actions at a time and sends at most CHANNEL_CONCURRENCY HTTP requests
# at once. It takes no new batch after DISPATCH_DRAIN_SECONDS (a new run continues), and a process
# rings at most one doorbell at once per DISPATCH_DOORBELL_SECONDS, one more at its end covering the rest.
DISPATCH_BATCH_SIZE = env.int("DISPATCH_BATCH_SIZE", default=200)
CHANNEL_CONCURRENCY = env.int("CHANNEL_CONCURRENCY", default=8)
DISPATCH_DRAIN_SECONDS = env.float("DISPATCH_DRAIN_SECONDS", default=20)
DISPATCH_DOORBELL_SECONDS = env.float("DISPATCH_DOORBELL_SECONDS", default=0.1)
HOLD_EXPIRY_INTERVAL_SECONDS = env.float("HOLD_EXPIRY_INTERVAL_SECONDS", default=30)
POINTS_EXPIRY_INTERVAL_SECONDS = env.float("POINTS_EXPIRY_INTERVAL_SECONDS", default=300)
# Redis redelivers an unacked message after this long; it must exceed the longest retry delay.
CELERY_BROKER_TRANSPORT_OPTIONS = {
    "visibility_timeout": env.int("CELERY_VISIBILITY_TIMEOUT", default=int(max(3600, DISPATCH_RETRY_MAX_SECONDS * 2))),
}

CELERY_BEAT_SCHEDULE = {
    "sweep-reward-actions": {
        "task": "connect.tasks.sweep_reward_actions",
        "schedule": SWEEPER_INTERVAL_SECONDS,
    },
    "expire-holds": {
        "task": "points.tasks.expire_holds",
        "schedule": HOLD_EXPIRY_INTERVAL_SECONDS,
    },
    "expire-points": {
        "task": "points.tasks.expire_points",
        "schedule": POINTS_EXPIRY_INTERVAL_SECONDS,
    },
    "notify-points-expiring": {
        "task": "connect.tasks.notify_points_expiring",
        "schedule": POINTS_EXPIRY_INTERVAL_SECONDS,
    },
}

# --- Outbound channels (SPEC §8)
NFT_SERVICE_URL = env.str("NFT_SERVICE_URL", default="")
NFT_SERVICE_TOKEN = env.str("NFT_SERVICE_TOKEN", default="")
G2A_GATEWAY_URL = env.str("G2A_GATEWAY_URL", default="")
G2A_GATEWAY_TOKEN = env.str("G2A_GATEWAY_TOKEN", default="")
CHANNEL_CONNECT_TIMEOUT_SECONDS = env.float("CHANNEL_CONNECT_TIMEOUT_SECONDS", default=3)
CHANNEL_READ_TIMEOUT_SECONDS = env.float("CHANNEL_READ_TIMEOUT_SECONDS", default=10)

# --- Connect: which event types update the profiles rules read (SPEC §7)
PROFILE_SPONSOR_EVENT_TYPES = env.list(
    "PROFILE_SPONSOR_EVENT_TYPES", default=["referral.joined", "referral.joined_level1"]
)
PROFILE_VIP_EVENT_TYPES = env.list(
    "PROFILE_VIP_EVENT_TYPES", default=["referral.user_upgraded_to_vip", "user.upgraded_to_vip"]
)
PROFILE_PRO_EVENT_TYPES = env.list(
    "PROFILE_PRO_EVENT_TYPES", default=["user.upgraded_to_pro", "referral.user_upgraded_to_pro"]
)
# Where `manage.py demo` finds the running server: `make run` serves on PORT (default 8000).
DEMO_BASE_URL = env.str("DEMO_BASE_URL", default=f"http://127.0.0.1:{env.int('PORT', default=8000)}")
# The ledger's idempotency namespace for credits Connect makes in-process.
CONNECT_LEDGER_SOURCE = env.str("CONNECT_LEDGER_SOURCE", default="connect")
# Each process reuses the active rules of an event type this long (0: off): saves two queries per event.
RULES_CACHE_SECONDS = env.float("RULES_CACHE_SECONDS", default=2.0)
# Calendar days, weeks (from Monday 00:00) and months of budgets and periodic caps are this zone's.
PROGRAM_TIME_ZONE = env.str("PROGRAM_TIME_ZONE", default="UTC")
# On: a rule draft is published only after a rule editor other than its author approves it.
RULES_REQUIRE_APPROVAL = env.bool("RULES_REQUIRE_APPROVAL", default=False)
# How many backtest reports the admin keeps (older ones are deleted when a new one starts).
BACKTEST_KEEP_REPORTS = env.int("BACKTEST_KEEP_REPORTS", default=20)

# --- Events from RabbitMQ (SPEC §16): `manage.py consume_events`
EVENTS_BROKER_URL = env.str("EVENTS_BROKER_URL", default="amqp://guest:guest@127.0.0.1:5672//")
EVENTS_QUEUE = env.str("EVENTS_QUEUE", default="connect.events")
# Messages the broker hands the consumer before it has acknowledged earlier ones.
EVENTS_PREFETCH = env.int("EVENTS_PREFETCH", default=20)
# While the database is unreachable a message goes back to the queue and the consumer waits this long,
# doubling up to the maximum, before it takes the next one.
EVENTS_RETRY_BASE_SECONDS = env.float("EVENTS_RETRY_BASE_SECONDS", default=1)
EVENTS_RETRY_MAX_SECONDS = env.float("EVENTS_RETRY_MAX_SECONDS", default=30)

# --- Webhooks out (SPEC §16)
WEBHOOKS_ALLOW_PRIVATE = env.bool("WEBHOOKS_ALLOW_PRIVATE", default=False)
WEBHOOK_BATCH_SIZE = env.int("WEBHOOK_BATCH_SIZE", default=100)
WEBHOOK_CONCURRENCY = env.int("WEBHOOK_CONCURRENCY", default=8)
WEBHOOK_MAX_ATTEMPTS = env.int("WEBHOOK_MAX_ATTEMPTS", default=10)
WEBHOOK_RETRY_BASE_SECONDS = env.float("WEBHOOK_RETRY_BASE_SECONDS", default=10)
WEBHOOK_RETRY_MAX_SECONDS = env.float("WEBHOOK_RETRY_MAX_SECONDS", default=3600)
WEBHOOK_CONNECT_TIMEOUT_SECONDS = env.float("WEBHOOK_CONNECT_TIMEOUT_SECONDS", default=3)
WEBHOOK_READ_TIMEOUT_SECONDS = env.float("WEBHOOK_READ_TIMEOUT_SECONDS", default=10)
# A claimed delivery whose worker died is claimable again after this long.
WEBHOOK_LEASE_SECONDS = env.float("WEBHOOK_LEASE_SECONDS", default=120)
WEBHOOK_SWEEP_INTERVAL_SECONDS = env.float("WEBHOOK_SWEEP_INTERVAL_SECONDS", default=30)
# After a secret is rotated, the old one still signs (a second v1) for this long.
WEBHOOK_SECRET_GRACE_SECONDS = env.int("WEBHOOK_SECRET_GRACE_SECONDS", default=24 * 3600)
# Lost doorbells: beat drains whatever deliveries are due.
CELERY_BEAT_SCHEDULE["sweep-webhook-deliveries"] = {
    "task": "connect.webhooks.tasks.webhooks_deliver_due",
    "schedule": WEBHOOK_SWEEP_INTERVAL_SECONDS,
}

# --- Ledger
POINTS_DEFAULT_HOLD_SECONDS = env.int("POINTS_DEFAULT_HOLD_SECONDS", default=15 * 60)
# Points expiry (SPEC §13): a lot without its own expires_at expires this many days after posting (0: never).
POINTS_EXPIRE_AFTER_DAYS = env.int("POINTS_EXPIRE_AFTER_DAYS", default=0)
# Points whose lots expire within this many days are reported as expiring_soon.
POINTS_EXPIRY_NOTICE_DAYS = env.int("POINTS_EXPIRY_NOTICE_DAYS", default=30)

# --- Admin login protection (django-axes)
AXES_FAILURE_LIMIT = env.int("AXES_FAILURE_LIMIT", default=5)
AXES_COOLOFF_TIME = env.float("AXES_COOLOFF_HOURS", default=0.25)
AXES_LOCKOUT_PARAMETERS = ["username", "ip_address"]
AXES_RESET_ON_SUCCESS = True

LOG_LEVEL = env.str("LOG_LEVEL", default="INFO")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"json": {"()": "config.logging.JsonFormatter"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "json"}},
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
    "loggers": {
        "django.server": {"level": "WARNING"},
        "axes": {"level": "WARNING"},
    },
}
