"""Third-party Flask extensions, created unbound and initialised in ``create_app``.

A leaf module: it imports nothing of the app, so every module may import it.
"""

from authlib.integrations.flask_client import OAuth
from flask_limiter import Limiter
from flask_limiter.util import get_remote_address
from flask_sqlalchemy import SQLAlchemy
from flask_wtf.csrf import CSRFProtect
from sqlalchemy.orm import DeclarativeBase


class Base(DeclarativeBase):
    pass


db = SQLAlchemy(model_class=Base)
csrf = CSRFProtect()
limiter = Limiter(key_func=get_remote_address)
oauth = OAuth()  # the identity provider's client, registered when OIDC is on
