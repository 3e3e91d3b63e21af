"""``/contact``: show the form, store a valid message, then queue its mail.

The request never talks SMTP: a worker's ``forward_contact`` job sends the stored row.
"""

from flask import Blueprint, current_app, flash, redirect, render_template, url_for

from extensions import db, limiter
from settings import settings_of

from .forms import ContactForm
from .mailer import reserve, smtp_configured
from .models import ContactMessage

bp = Blueprint("contact", __name__)


def contact_limit() -> str:
    return settings_of(current_app).mail.rate_limit


@bp.get("/contact")
def contact_form():
    return render_template("contact.html", form=ContactForm())


@bp.post("/contact")
@limiter.limit(contact_limit)
def contact_submit():
    form = ContactForm()
    if not form.validate_on_submit():
        return render_template("contact.html", form=form), 400
    row = ContactMessage()
    form.populate_obj(row)
    row.phone = row.phone or None
    ticket = reserve(row) if smtp_configured() else None
    db.session.add(row)
    db.session.flush()
    row_id = row.id  # read now: after the commit, reading it would query the database
    db.session.commit()
    # From here on nothing touches the database: the message is stored, so an outage
    # now must not answer "nothing was saved".
    if ticket is not None:
        current_app.extensions["tasks"].queue_contact(row_id, ticket)
    flash("Thank you: your message was received.", "success")
    return redirect(url_for("contact.contact_form"))
