"""Python client for lpt-serve: many Late-Prompt-Tuning task adapters on one frozen model.

Depends on httpx and pydantic only (never on torch or the server).

Example:
    >>> from lpt_client import Client
    >>> with Client("http://127.0.0.1:8080") as client:  # doctest: +SKIP
    ...     for text, answers in zip(texts, client.classify(texts, tasks=["sentiment", "topic"])):
    ...         print(text, [(a.task, a.label) for a in answers])
"""

from ._retry import RetryPolicy
from ._version import __version__
from .async_client import AsyncClient
from .errors import (
    AuthError,
    BadRequest,
    Conflict,
    ConnectionFailed,
    Forbidden,
    LptError,
    NotFound,
    Overloaded,
    PayloadTooLarge,
    ServerError,
    Timeout,
    Unauthorized,
    Unavailable,
)
from .models import (
    AdapterInfo,
    ClassifyResult,
    Probe,
    Results,
    ServerInfo,
    TrainedAdapter,
    TrainingJob,
    TrainingPoint,
    TrainingProgress,
    UploadResult,
)
from .sync_client import Client

__all__ = [
    "AdapterInfo",
    "AsyncClient",
    "AuthError",
    "BadRequest",
    "ClassifyResult",
    "Client",
    "Conflict",
    "ConnectionFailed",
    "Forbidden",
    "LptError",
    "NotFound",
    "Overloaded",
    "PayloadTooLarge",
    "Probe",
    "Results",
    "RetryPolicy",
    "ServerError",
    "ServerInfo",
    "Timeout",
    "TrainedAdapter",
    "TrainingJob",
    "TrainingPoint",
    "TrainingProgress",
    "Unauthorized",
    "Unavailable",
    "UploadResult",
    "__version__",
]
