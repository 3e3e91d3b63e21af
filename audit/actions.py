"""The actions the trail records (the ``action`` column)."""

LOGIN, LOGOUT, LOGIN_FAILED = "login", "logout", "login-failed"
PACS_QUERY, PACS_STUDY_OPENED = "pacs-query", "pacs-study-opened"
ANALYSIS_STARTED, STUDY_VIEWED, EXPORTED, DELETED = (
    "analysis-started", "study-viewed", "exported", "deleted")
WRITE_BACK_DONE, WRITE_BACK_FAILED = "write-back-done", "write-back-failed"
ACCOUNT_CHANGED, TOKEN_CHANGED = "account-changed", "token-changed"
MODEL_INSTALLED, MODEL_REMOVED = "model-installed", "model-removed"
APP_STARTED, APP_STOPPED = "app-started", "app-stopped"
DICOM_RECEIVED = "dicom-received"  # instances a modality or router sent to the node

ALL = (LOGIN, LOGOUT, LOGIN_FAILED, PACS_QUERY, PACS_STUDY_OPENED, ANALYSIS_STARTED,
       STUDY_VIEWED, EXPORTED, DELETED, WRITE_BACK_DONE, WRITE_BACK_FAILED,
       ACCOUNT_CHANGED, TOKEN_CHANGED, MODEL_INSTALLED, MODEL_REMOVED, APP_STARTED,
       APP_STOPPED, DICOM_RECEIVED)
