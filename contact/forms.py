"""The contact form: every field validated and length-limited on the server."""

from flask_wtf import FlaskForm
from wtforms import EmailField, SelectField, StringField, TelField, TextAreaField
from wtforms.validators import DataRequired, Email, Length, Optional, Regexp, ValidationError

from .models import CATEGORIES

LINE_BREAKS = "\r\n\t"


def printable(allowed: str = ""):
    """Refuse control characters (NUL, escapes, and line breaks unless ``allowed``):
    a database may refuse them, and a mail header may not hold a line break."""
    def check(form, field) -> None:
        if any((ord(ch) < 32 or ord(ch) == 127) and ch not in allowed
               for ch in field.data or ""):
            raise ValidationError("Use letters, digits and punctuation only"
                                  + (" (line breaks are fine)." if allowed else "."))
    return check


class ContactForm(FlaskForm):
    name = StringField("Name", validators=[DataRequired("Tell us your name."), Length(max=100),
                                           printable()])
    email = EmailField("Email", validators=[
        DataRequired("We need an address to answer you."),
        Email("This does not look like an email address.", check_deliverability=False),
        Length(max=254), printable()])
    phone = TelField("Phone (optional)", validators=[
        Optional(), Length(max=40),
        Regexp(r"^\+?[0-9 ()./-]{5,40}$", message="Use digits, spaces and + ( ) - only.")])
    category = SelectField("Type", choices=list(CATEGORIES.items()), default="other")
    subject = StringField("Subject", validators=[DataRequired("Add a subject."),
                                                 Length(max=150), printable()])
    message = TextAreaField("Message", validators=[
        DataRequired("Write your message."),
        Length(min=10, max=5000, message="Between 10 and 5000 characters, please."),
        printable(LINE_BREAKS)])
