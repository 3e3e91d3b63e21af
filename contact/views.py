"""``/contact``: show the form, store a valid message, then wake the forwarder.

The request never talks SMTP: the background forwarder sends the stored row.
"""

from flask import Blueprint, current_app, flash, redirect, render_template, url_for

from extensions import db, limiter

from .forms import ContactForm
from .forwarder import forwarder_for
from .mailer import smtp_configured
from .models import ContactMessage

bp = Blueprint("contact", __name__)


def contact_limit() -> str:
    return current_app.config["CONTACT_RATE_LIMIT"]


@bp.before_app_request
def forward_backlog() -> None:
    """On a process's first request, send what an earlier run left unsent (rows stored
    before a restart), without waiting for the next post; later requests skip it."""
    app = current_app._get_current_object()
    if not app.extensions.get("contact_backlog_checked"):
        app.extensions["contact_backlog_checked"] = True
        if smtp_configured():
            forwarder_for(app).notify()


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
    db.session.add(row)
    db.session.commit()
    if smtp_configured():
        forwarder_for(current_app._get_current_object()).notify()
    flash("Thank you: your message was received.", "success")
    return redirect(url_for("contact.contact_form"))
