"""The upload form (Flask-WTF: CSRF token and server-side validation)."""

from flask_wtf import FlaskForm
from flask_wtf.file import FileField, FileRequired
from wtforms import BooleanField, RadioField, SelectField

from inference.registry import ARCHITECTURES, MODALITIES

MODEL_CHOICES = [("all", "All models")] + [(a.key, a.name) for a in ARCHITECTURES.values()]


class UploadForm(FlaskForm):
    modality = RadioField("Image type", choices=[(m.key, m.label) for m in MODALITIES.values()],
                          default="ct")
    model = SelectField("Model", choices=MODEL_CHOICES, default="all")
    image = FileField("Image", validators=[FileRequired("Choose an image file to analyse.")])
    explain = BooleanField("Show heatmap", default=False,
                           description="Grad-CAM: where each model found evidence for "
                                       "COVID. Costs about one more prediction per model.")
