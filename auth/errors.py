"""What can go wrong with who is asking, said for the person who asked.

The web edge maps these to 401 (with ``WWW-Authenticate``) and 403; the command line
prints them.
"""

from inference.errors import ServiceError


class NotSignedIn(ServiceError):
    """No identity, or one that no longer holds (an expired, revoked or forged token)."""


class Forbidden(ServiceError):
    """Signed in, but the role does not allow this."""


class SignInFailed(ServiceError):
    """A sign-in did not succeed. One message for every reason, so that a guesser learns
    nothing about which names exist, which are disabled and which are slowed down."""

    MESSAGE = ("Sign-in failed: the name or password is wrong, or the account cannot "
               "sign in just now. Check them and try again in a moment.")

    def __init__(self, message: str = MESSAGE):
        super().__init__(message)


class AccountError(ServiceError):
    """An account or token command cannot be done (unknown name, bad role...)."""


class AuthNotConfigured(RuntimeError):
    """The settings ask for something that needs sign-in, and none is set up: the app
    refuses to start, saying what to set."""


class ProviderUnavailable(ServiceError):
    """The identity provider did not answer, so a token or a sign-in cannot be checked."""
