"""The contact form: every field validated and length-limited on the server."""

from flask_wtf import FlaskForm
from wtforms import EmailField, SelectField, StringField, TelField, TextAreaField
from wtforms.validators import DataRequired, Email, Length, Optional, Regexp, ValidationError

from .models import CATEGORIES



def single_line(form, field) -> None:
    """No control character in a one-line field: a mail header may not hold a line
    break, and PostgreSQL refuses a NUL byte."""
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in field.data or ""):
        raise ValidationError("Use letters, digits and punctuation only.")


def no_nul(form, field) -> None:
    """A message may hold any text (it is escaped where shown) but a NUL byte, which
    PostgreSQL refuses."""
    if "\x00" in (field.data or ""):
        raise ValidationError("The message holds a NUL byte: remove it.")


class ContactForm(FlaskForm):
    name = StringField("Name", validators=[DataRequired("Tell us your name."), Length(max=100),
                                           single_line])
    email = EmailField("Email", validators=[
        DataRequired("We need an address to answer you."),
        Email("This does not look like an email address.", check_deliverability=False),
        Length(max=254), single_line])
    phone = TelField("Phone (optional)", validators=[
        Optional(), Length(max=40),
        Regexp(r"^\+?[0-9 ()./-]{5,40}$", message="Use digits, spaces and + ( ) - only.")])
    category = SelectField("Type", choices=list(CATEGORIES.items()), default="other")
    subject = StringField("Subject", validators=[DataRequired("Add a subject."),
                                                 Length(max=150), single_line])
    message = TextAreaField("Message", validators=[
        DataRequired("Write your message."),
        Length(min=10, max=5000, message="Between 10 and 5000 characters, please."),
        no_nul])
