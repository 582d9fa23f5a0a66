"""The one exception tree of vlmserve.

Every error a client can see is a ``VlmserveError``; ``api/errors.py`` alone renders it as
``{"error": {"message", "type", "code", "param"}}`` with ``status``. ``retryable`` says whether the
same request may succeed later (so clients can back off instead of giving up).

    VlmserveError
    ├── InvalidRequestError          400 invalid_request_error / request_params_invalid
    │   ├── ModelNotFoundError       400 model_not_found            (param: model)
    │   ├── UnsupportedContentError  400 unsupported_content_type
    │   ├── ContextLengthError       400 context_length_exceeded    (param: messages)
    │   ├── MediaError               400 invalid_media / invalid_image / image_too_large / ...
    │   │   ├── TooManyImagesError   400 too_many_images            (param: messages)
    │   │   └── MediaFetchError      400 media_fetch_failed         (retryable when upstream failed)
    │   └── NotSupportedYetError     400 unsupported_parameter
    ├── AuthenticationError          401 invalid_api_key
    ├── PermissionDeniedError        403 permission_denied           (an admin key is needed)
    ├── NotFoundError                404 not_found
    ├── PayloadTooLargeError         413 payload_too_large
    ├── RateLimitError               429 rate_limit_exceeded        (retryable)
    │   └── QuotaExceededError       429 quota_exceeded             (the key's tokens are spent)
    ├── InternalError                500 internal_error             (a bug)
    ├── UpstreamError                502 upstream_error             (retryable)
    ├── OverloadedError              503 overloaded / model_loading (retryable)
    │   └── ModelUnavailableError    503 model_unavailable          (cannot be loaded: start-up)
    │   └── UpstreamOverloadedError  503 overloaded, with the replicas' Retry-After hint
    └── TimeoutError_                504 timeout                    (retryable)
"""

from __future__ import annotations


class VlmserveError(Exception):
    status: int = 500
    type: str = "server_error"
    code: str = "internal_error"
    retryable: bool = False
    retry_after_s: float | None = None  # a hint for the Retry-After header, when known

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code


class InvalidRequestError(VlmserveError):
    status = 400
    type = "invalid_request_error"
    code = "request_params_invalid"


class ModelNotFoundError(InvalidRequestError):
    code = "model_not_found"


class UnsupportedContentError(InvalidRequestError):
    code = "unsupported_content_type"


class ContextLengthError(InvalidRequestError):
    code = "context_length_exceeded"


class MediaError(InvalidRequestError):
    code = "invalid_media"


class TooManyImagesError(MediaError):
    code = "too_many_images"


class NotSupportedYetError(InvalidRequestError):
    code = "unsupported_parameter"


class AuthenticationError(VlmserveError):
    status = 401
    type = "authentication_error"
    code = "invalid_api_key"


class PermissionDeniedError(VlmserveError):
    status = 403
    type = "permission_error"
    code = "permission_denied"


class NotFoundError(VlmserveError):
    status = 404
    type = "invalid_request_error"
    code = "not_found"


class PayloadTooLargeError(VlmserveError):
    status = 413
    type = "invalid_request_error"
    code = "payload_too_large"


class RateLimitError(VlmserveError):
    """A key's concurrency, RPM or TPM limit; ``retry_after_s`` says when the request fits."""

    status = 429
    type = "rate_limit_error"
    code = "rate_limit_exceeded"
    retryable = True

    def __init__(
        self,
        message: str,
        *,
        retry_after_s: float | None = None,
        limit: str = "",  # which: "concurrency", "rpm", "tpm"
        param: str | None = None,
    ) -> None:
        super().__init__(message, param=param)
        self.retry_after_s = retry_after_s
        self.limit = limit


class QuotaExceededError(RateLimitError):
    """The key's token quota is spent: waiting does not help, so not retryable."""

    type = "insufficient_quota"
    code = "quota_exceeded"
    retryable = False


class InternalError(VlmserveError):
    status = 500
    type = "server_error"
    code = "internal_error"


class UpstreamError(VlmserveError):
    status = 502
    type = "server_error"
    code = "upstream_error"
    retryable = True


class OverloadedError(VlmserveError):
    status = 503
    type = "server_error"
    code = "overloaded"
    retryable = True


class ModelUnavailableError(OverloadedError):
    """The model can be neither read from disk nor fetched from the hub; the message is the one
    paragraph ``vlmserve serve`` prints before it exits."""

    code = "model_unavailable"
    retryable = False


class TimeoutError_(VlmserveError):  # noqa: N801, N818 - the builtin name is taken
    status = 504
    type = "server_error"
    code = "timeout"
    retryable = True


class UpstreamOverloadedError(OverloadedError):
    """The remote replicas answered 429/503; ``retry_after_s`` is their ``Retry-After`` hint."""

    def __init__(
        self,
        message: str,
        *,
        retry_after_s: float | None = None,
        param: str | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message, param=param, code=code)
        self.retry_after_s = retry_after_s


class MediaFetchError(MediaError):
    """A remote image could not be fetched; ``retryable`` when the upstream timed out or failed
    (5xx), so the same request may succeed later. Still a 400: the client chose the URL."""

    code = "media_fetch_failed"

    def __init__(self, message: str, *, param: str | None = None, retryable: bool = False) -> None:
        super().__init__(message, param=param)
        self.retryable = retryable
