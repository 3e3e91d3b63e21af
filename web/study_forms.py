"""The study upload form and the delete button's form (Flask-WTF: CSRF and validation).

The form checks what a person can fix on the page (no file chosen, both kinds chosen);
everything about the files themselves is the study service's to judge.
"""

from flask_wtf import FlaskForm
from flask_wtf.file import FileField, MultipleFileField
from wtforms import BooleanField, RadioField, SelectField

from inference.registry import MODALITIES

from .forms import MODEL_CHOICES

IMAGE_ACCEPT = ".png,.jpg,.jpeg,.bmp,.tif,.tiff,.dcm,image/*,application/dicom"
ARCHIVE_ACCEPT = ".zip,application/zip"


class StudyForm(FlaskForm):
    modality = RadioField("Image type", choices=[(m.key, m.label) for m in MODALITIES.values()],
                          default="ct")
    model = SelectField("Model", choices=MODEL_CHOICES, default="all")
    images = MultipleFileField("Images")
    archive = FileField("Or one .zip archive")
    # Rendered with value="1": the study service reads this field as a strict yes/no.
    explain = BooleanField("Heatmaps", default=False,
                           description="Grad-CAM for every image and model: where each model "
                                       "found evidence for COVID. Roughly doubles the time.")

    def validate(self, extra_validators=None) -> bool:
        if not super().validate(extra_validators):
            return False
        if not self.images.data and not self.archive.data:
            self.images.errors.append("Choose the images, or one .zip archive, to analyse.")
            return False
        if self.images.data and self.archive.data:
            self.archive.errors.append("Choose either images or one .zip archive, not both.")
            return False
        return True


class ButtonForm(FlaskForm):
    """No fields: its CSRF token is what proves a study page's button (delete, retry the
    write-back) was pressed on that page."""
