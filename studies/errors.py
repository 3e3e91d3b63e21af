"""What can go wrong with a study, said for the person who sent it (no HTTP here)."""

from inference.errors import InvalidRequest, ServiceError, UnusableImage


class StudyTooLarge(ServiceError):
    """More images, bytes or archive entries than this server takes in one study."""

    code = "study_too_large"


class UnsafeArchive(InvalidRequest):
    """An archive that could harm the server: nested archives, paths that climb out
    (``..``) or start at the root, or entries that inflate far beyond their size."""


class EmptyStudy(UnusableImage):
    """Nothing in the upload is an image the app can read."""


class StudyNotFound(ServiceError):
    """No study has this id: it never existed, expired, or was deleted."""
