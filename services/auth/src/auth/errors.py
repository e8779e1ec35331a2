"""Auth's errors. Most roll the request's transaction back; a few must keep their bookkeeping."""

from __future__ import annotations

from servicekit.errors import ServiceError, Unauthorized


class CommitsChanges:
    """Marker: the unit of work commits before this error is answered.

    For refusals whose security bookkeeping must persist: a reused refresh token revokes its family,
    a wrong reset code counts an attempt. Rolling those back would undo the defence.
    """


class RefreshTokenReused(Unauthorized, CommitsChanges):
    def __init__(self) -> None:
        super().__init__("refresh token already used: the session has been revoked")


class InvalidResetCode(ServiceError, CommitsChanges):
    status_code = 400
    code = "invalid_reset_code"

    def __init__(self) -> None:
        super().__init__("invalid or expired reset code")


class InvalidLoginCode(ServiceError):
    status_code = 400
    code = "invalid_login_code"

    def __init__(self) -> None:
        super().__init__("invalid or expired login code")
